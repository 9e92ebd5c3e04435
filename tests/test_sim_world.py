"""SimWorld as a jtd3.backends.base.Backend: snapshots, determinism, bad input, cameras."""

import numpy as np
import pytest

from jtd3.backends.base import Backend, Pose, Snapshot, VehicleControl
from jtd3.backends.sim import SimConfig, SimWorld
from jtd3.config import ConfigError, from_dict
from jtd3.roads.routes import load_reference_route, reference_spawn
from jtd3.roads.towns import load_town

SPAWN = reference_spawn()


@pytest.fixture(scope="module")
def world():
    return SimWorld(SimConfig())


def _run(world, seed, steps=40):
    snaps = [world.reset(SPAWN, 20, seed)]
    rng = np.random.default_rng(123)
    for _ in range(steps):
        snaps.append(world.step(VehicleControl(throttle=float(rng.uniform(0.3, 1)), steer=float(rng.uniform(-0.1, 0.1)))))
    return snaps


def test_a_tick_without_camera_renders_nothing_and_camera_renders_the_current_state():
    a, b = SimWorld(SimConfig()), SimWorld(SimConfig())
    a.reset(SPAWN, 20, seed=4)
    b.reset(SPAWN, 20, seed=4)
    for t in range(6):
        control = VehicleControl(throttle=0.6, steer=0.05 * t)
        skipped, full = a.step(control, camera=False), b.step(control)
        assert skipped.camera is None and full.camera is not None
        np.testing.assert_array_equal(skipped.ego.location, full.ego.location)  # the world moved all the same
        np.testing.assert_array_equal(a.camera(), full.camera)
    assert (b.camera() == full.camera).all()


def test_backend_protocol_and_snapshot_contents(world):
    assert isinstance(world, Backend)
    assert world.opendrive == load_town("town01").opendrive_text
    snap = world.reset(SPAWN, 20, seed=0)
    assert isinstance(snap, Snapshot) and snap.frame == 1 and snap.timestamp == pytest.approx(0.05)
    assert snap.camera.shape == (84, 84) and snap.camera.dtype == np.uint8
    assert len(snap.vehicles) == 20 and len(set(snap.vehicles.ids.tolist())) == 20
    d = np.hypot(snap.vehicles.location[:, 0] - SPAWN.x, snap.vehicles.location[:, 1] - SPAWN.y)
    assert d.min() >= 20.0
    # all NPCs spawn on driving lanes, aligned with them
    p = world.network.project_many(snap.vehicles.location[:, :2])
    assert np.all(p.distance < 0.3) and np.all(np.abs((p.yaw - snap.vehicles.yaw + 180) % 360 - 180) < 5)
    e = snap.ego
    assert e.location.tolist() == [SPAWN.x, SPAWN.y, 0.0] and abs(e.yaw) == 180.0 and e.speed == 0.0
    assert e.extent.tolist() == [2.4, 1.05, 0.75] and e.type_id == "vehicle.tesla.model3"
    s2 = world.step(VehicleControl(throttle=1.0))
    assert s2.frame == 2 and s2.ego.speed > 0.0 and s2.ego.velocity[0] < 0.0  # moving west
    assert s2.ego.acceleration[0] < 0.0
    world.close()
    world.close()  # safe twice
    with pytest.raises(RuntimeError, match="reset"):
        world.step(VehicleControl())


def test_same_seed_same_world_different_seed_different_traffic(world):
    a, b, c = _run(world, 7), _run(world, 7), _run(world, 8)
    for sa, sb in zip(a, b):
        assert np.array_equal(sa.camera, sb.camera)
        assert np.array_equal(sa.vehicles.location, sb.vehicles.location)
        assert np.array_equal(sa.ego.location, sb.ego.location)
    assert not np.allclose(a[0].vehicles.location, c[0].vehicles.location)


def test_bad_input_is_rejected_with_the_valid_choices(world):
    with pytest.raises(ConfigError, match=r"'town99'.*'town01'"):
        from_dict(SimConfig, {"town": "town99"})
    with pytest.raises(ValueError, match="finite"):
        VehicleControl(steer=float("nan"))
    with pytest.raises(ValueError, match="num_vehicles"):
        world.reset(SPAWN, -1, 0)
    with pytest.raises(ValueError, match="spawn"):
        world.reset(Pose(float("nan"), 0.0, 0.0), 0, 0)
    world.reset(SPAWN, 0, 0)
    with pytest.raises(TypeError, match="VehicleControl"):
        world.step((0.0, 1.0))
    with pytest.raises(ConfigError, match="camera.fov"):
        from_dict(SimConfig, {"camera": {"fov": 0.0}})


def test_birdeye_camera_and_human_renders():
    cfg = from_dict(SimConfig, {"camera": {"kind": "birdeye", "width": 64, "height": 48, "birdeye_mpp": 0.5}})
    w = SimWorld(cfg)
    snap = w.reset(SPAWN, 20, 1)
    assert snap.camera.shape == (48, 64)
    # the ego box (grey 255) sits at the centre column, below the middle row (heading up)
    ego_px = np.argwhere(snap.camera == cfg.render.ego)
    assert abs(ego_px[:, 1].mean() - 31.5) < 1.5 and ego_px[:, 0].mean() > 24
    route = load_reference_route()
    without = w.render_birdeye(64, 48)
    w.set_route(route.points)
    with_route = w.render_birdeye(64, 48)
    changed = with_route != without
    assert changed.sum() > 20 and np.all(with_route[changed] > without[changed])  # a bright line ...
    assert np.argwhere(changed)[:, 0].min() < 10  # ... running ahead (up) of the ego
    rgb = w.render_birdeye(256, 256, 0.25, rgb=True)
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    big = w.render_front(256, 144)
    assert big.shape == (144, 256) and big.dtype == np.uint8


def test_procedural_town_world_runs():
    w = SimWorld(from_dict(SimConfig, {"town": "grid3", "town_seed": 2}))
    route = w.network.random_route(np.random.default_rng(0), 100.0, 200.0)
    spawn = Pose(float(route.points[0, 0]), float(route.points[0, 1]), float(route.yaw[0]))
    snap = w.reset(spawn, 20, 0)
    for _ in range(20):
        snap = w.step(VehicleControl(throttle=0.5))
    assert not snap.collisions and len(snap.vehicles) == 20 and snap.ego.speed > 1.0


def test_min_step_s_paces_ticks_like_a_server():
    """sim.min_step_s: ticks never return faster than that (a lower bound only: a loaded machine is slower)."""
    import time

    world = SimWorld(SimConfig(min_step_s=0.02))
    snap = world.reset(SPAWN, 0, seed=0)
    t0 = time.monotonic()
    for _ in range(10):
        snap = world.step(VehicleControl(throttle=0.5))
    assert time.monotonic() - t0 >= 10 * 0.02 - 1e-3
    assert snap.frame == 11
