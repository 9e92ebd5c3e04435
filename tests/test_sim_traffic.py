"""NPC traffic: no NPC-NPC collisions in dense traffic, no gridlock, NPCs stop behind a stopped ego."""

import numpy as np
import pytest

from jtd3.envs.config import EnvConfig
from jtd3.backends.base import Pose, VehicleControl
from jtd3.backends.sim import SimConfig, SimWorld
from jtd3.backends.sim.events import obb_overlap
from jtd3.backends.sim.render import BUILDING


def _overlapping_pairs(t) -> int:
    d = np.hypot(t.x[:, None] - t.x[None], t.y[:, None] - t.y[None])
    ii, jj = np.nonzero(np.triu(d < 6.0, 1))
    n = 0
    for i, j in zip(ii, jj):
        n += bool(obb_overlap(t.x[i], t.y[i], t.yaw[i], t.extent[i, 0], t.extent[i, 1], t.x[j:j + 1], t.y[j:j + 1],
                              t.yaw[j:j + 1], t.extent[j:j + 1, 0], t.extent[j:j + 1, 1])[0])
    return n


def test_scenario_2_has_no_npc_collisions_and_keeps_moving():
    world = SimWorld(SimConfig())
    park = Pose(250.0, 250.0, 0.0)  # inside a building block: the ego takes no part
    assert world.raster.class_at(park.x, park.y) == BUILDING
    snap = world.reset(park, EnvConfig(scenario=2).num_vehicles, seed=3)
    assert len(snap.vehicles) == 100
    t = world.traffic
    waiting = np.zeros(t.n)
    travelled = np.zeros(t.n)
    for _ in range(2000):  # 100 s
        world.step(VehicleControl(brake=1.0))
        assert _overlapping_pairs(t) == 0
        waiting = np.where(t.v < 0.05, waiting + 1, 0)
        travelled += t.v * world.config.dt
    assert waiting.max() < 1200, "an NPC waited more than 60 s (gridlock)"
    assert np.median(travelled) > 200.0


def test_npcs_stop_behind_a_stopped_ego():
    world = SimWorld(SimConfig())
    net = world.network
    ego = Pose(250.0, 129.5, 180.0)  # road 4, lane 1 (westbound)
    world.reset(ego, 0, seed=0)
    p = net.project(300.0, 129.5)
    info = net.lanes[p.lane_index]
    u = info.s1 - p.s  # arc length along travel of a point 50 m behind the ego
    world.traffic.place([p.lane_index], [u], np.random.default_rng(0), first_id=2000, speeds=[8.0])
    gaps = []
    for _ in range(400):
        snap = world.step(VehicleControl(brake=1.0))
        assert not snap.collisions
        npc = snap.vehicles
        gaps.append(npc.location[0, 0] - npc.extent[0, 0] - (ego.x + 2.4))
    assert world.traffic.v[0] == pytest.approx(0.0, abs=0.05)
    assert 1.0 < gaps[-1] < 6.0  # stopped behind, bumper to bumper
    assert min(gaps) > 0.5
