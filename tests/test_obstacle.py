"""The front obstacle sensor: the disc sweep both backends compute (jtd3.backends.obstacle), the embedded
simulator's reading of it, and the configuration rule that ties it to the features that read it."""

import math

import numpy as np
import pytest

from jtd3.backends.base import VehicleControl
from jtd3.backends.obstacle import sweep
from jtd3.backends.sim import SimConfig, SimWorld
from jtd3.config import ConfigError, from_dict
from jtd3.envs.config import EnvConfig
from jtd3.roads.routes import reference_spawn


def one(x, y, yaw=0.0, hl=2.0, hw=1.0):
    return tuple(np.array([v], dtype=np.float64) for v in (x, y, yaw, hl, hw))


def brute_force(origin, yaw_deg, distance, radius, x, y, yaw, hl, hw, step=1e-3):
    """The first sampled travel at which the disc centre is within ``radius`` of the rectangle."""
    h = math.radians(yaw_deg)
    for t in np.arange(0.0, distance + step, step):
        cx, cy = origin[0] + t * math.cos(h) - x, origin[1] + t * math.sin(h) - y
        a = math.radians(yaw)
        lx, ly = math.cos(a) * cx + math.sin(a) * cy, -math.sin(a) * cx + math.cos(a) * cy
        if math.hypot(max(abs(lx) - hl, 0.0), max(abs(ly) - hw, 0.0)) <= radius:
            return t
    return None


def test_sweep_distance_to_a_rear_face_an_offset_corner_and_a_crossing_car():
    assert sweep((0, 0), 0.0, 40.0, 1.0, *one(10.0, 0.0)) == (0, pytest.approx(7.0))  # 10 - 2 - 1
    # 1.9 m to the side: the disc meets the rear corner (8, 0.9): 8 - sqrt(1 - 0.9^2)
    assert sweep((0, 0), 0.0, 40.0, 1.0, *one(10.0, 1.9))[1] == pytest.approx(8.0 - math.sqrt(1 - 0.81))
    assert sweep((0, 0), 0.0, 40.0, 1.0, *one(10.0, 2.5)) is None  # the next lane
    assert sweep((0, 0), 0.0, 40.0, 1.0, *one(10.0, 0.0, yaw=90.0)) == (0, pytest.approx(8.0))  # crossing: 10 - 1 - 1
    assert sweep((0, 0), 0.0, 40.0, 1.0, *one(-10.0, 0.0)) is None  # behind
    assert sweep((0, 0), 0.0, 5.0, 1.0, *one(10.0, 0.0)) is None  # beyond the range
    assert sweep((0, 0), 0.0, 40.0, 1.0, *one(2.5, 0.0)) == (0, 0.0)  # already touching
    assert sweep((0, 0), 90.0, 40.0, 1.0, *one(0.0, 20.0)) == (0, pytest.approx(18.0))  # heading +y (south)
    empty = tuple(np.zeros(0) for _ in range(5))
    assert sweep((0, 0), 0.0, 40.0, 1.0, *empty) is None


def test_sweep_returns_the_nearest_and_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = 6
        x, y = rng.uniform(-5, 30, n), rng.uniform(-4, 4, n)
        yaw, hl, hw = rng.uniform(-180, 180, n), rng.uniform(1.5, 2.5, n), rng.uniform(0.8, 1.1, n)
        heading = float(rng.uniform(-20, 20))
        got = sweep((0.0, 0.0), heading, 25.0, 0.8, x, y, yaw, hl, hw)
        ts = [brute_force((0.0, 0.0), heading, 25.0, 0.8, *v) for v in zip(x, y, yaw, hl, hw)]
        hits = [(t, i) for i, t in enumerate(ts) if t is not None]
        if not hits:
            assert got is None
        else:
            t, i = min(hits)
            assert got is not None and got[0] == i and got[1] == pytest.approx(t, abs=2e-3)


def test_embedded_simulator_reports_the_vehicle_its_bumper_sweep_meets():
    world = SimWorld(SimConfig())
    spawn = reference_spawn()  # facing west (yaw 180)
    world.reset(spawn, 0, seed=0)
    assert world.step(VehicleControl()).obstacle is None  # nobody there
    ego_hl, radius = 0.5 * world.config.vehicle.length, world.config.obstacle.hit_radius
    hits = 0
    for seed in range(6):
        world.reset(spawn, 100, seed=seed)
        for _ in range(3):
            snap = world.step(VehicleControl(throttle=0.3))
            e, v = snap.ego, snap.vehicles
            bumper = (e.location[0] + ego_hl * math.cos(math.radians(e.yaw)),
                      e.location[1] + ego_hl * math.sin(math.radians(e.yaw)))
            close = np.hypot(v.location[:, 0] - bumper[0], v.location[:, 1] - bumper[1]) < 40.0 + 3.0 + radius
            ts = [brute_force(bumper, e.yaw, 40.0, radius, *row) if c else None for c, row in
                  zip(close, zip(v.location[:, 0], v.location[:, 1], v.yaw, v.extent[:, 0], v.extent[:, 1]))]
            near = [(t, i) for i, t in enumerate(ts) if t is not None]
            if not near:
                assert snap.obstacle is None
                continue
            hits += 1
            t, i = min(near)
            r = snap.obstacle
            assert r is not None and r.frame == snap.frame and r.other_id == int(v.ids[i])
            assert r.distance == pytest.approx(t, abs=2e-3)
            np.testing.assert_allclose(r.other_velocity, v.velocity[i])
    assert hits > 0
    off = SimWorld(from_dict(SimConfig, {"obstacle": {"enabled": False}}))
    off.reset(spawn, 100, seed=0)
    assert off.step(VehicleControl()).obstacle is None


def test_features_that_read_the_sensor_refuse_a_backend_without_it():
    with pytest.raises(ConfigError, match=r"sim\.obstacle\.enabled.*speed_control\.follow"):
        from_dict(EnvConfig, {"sim": {"obstacle": {"enabled": False}}})  # follow is on by default
    with pytest.raises(ConfigError, match=r"carla\.obstacle\.enabled"):
        from_dict(EnvConfig, {"backend": "carla", "carla": {"obstacle": {"enabled": False}},
                              "speed_control": {"follow": False}, "observation": {"lead_vehicle": True}})
    cfg = from_dict(EnvConfig, {"sim": {"obstacle": {"enabled": False}}, "speed_control": {"follow": False}})
    assert not cfg.sim.obstacle.enabled
    with pytest.raises(ValueError, match="mount_z"):
        SimWorld(from_dict(SimConfig, {"obstacle": {"mount_z": 3.0}}))
