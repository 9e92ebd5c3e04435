"""Every SimConfig key reaches the simulator (jtd3.config.track_reads)."""

import numpy as np

from jtd3.backends.base import Pose, VehicleControl
from jtd3.config import from_dict, leaf_keys, track_reads
from jtd3.backends.sim import SimConfig, SimWorld
from jtd3.roads.routes import load_reference_route, reference_spawn


def test_every_sim_config_key_is_read():
    # Values unlike the defaults so that the raster and lane-graph caches (keyed by config) are rebuilt here.
    front = from_dict(SimConfig, {"render": {"resolution": 0.25}, "npc": {"speed_factor": 0.9}, "camera": {"width": 32, "height": 24}})
    bird = from_dict(SimConfig, {"render": {"resolution": 0.3}, "npc": {"speed_factor": 0.8},
                                 "camera": {"kind": "birdeye", "width": 32, "height": 32}})
    with track_reads() as reads:
        for cfg in (front, bird):
            world = SimWorld(cfg)
            world.set_route(load_reference_route().points)
            world.reset(reference_spawn(), 20, seed=0)
            for _ in range(5):
                world.step(VehicleControl(throttle=1.0))
            for _ in range(3):
                world.step(VehicleControl(throttle=1.0, reverse=True))
        # a collision with an NPC (intensities use both masses)
        p = world.network.project(300.0, 129.5)
        world.reset(Pose(305.5, p.y, 180.0), 0, seed=0)
        world.traffic.place([p.lane_index], [world.network.lanes[p.lane_index].s1 - p.s], np.random.default_rng(0), 9000)
        hit = False
        for _ in range(40):
            hit = hit or bool(world.step(VehicleControl(throttle=1.0)).collisions)
        assert hit
    expected = set(leaf_keys(SimConfig).values())
    missing = sorted(f"{cls}.{name}" for cls, name in expected - reads)
    assert not missing, f"config keys never read: {missing}"
