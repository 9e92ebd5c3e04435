"""Collision, lane invasion and off-road fire exactly when they should (constructed situations)."""

import math

import cv2
import numpy as np
import pytest

from jtd3.backends.base import Pose, VehicleControl
from jtd3.backends.sim import SimConfig, SimWorld
from jtd3.backends.sim.dynamics import EgoState
from jtd3.backends.sim.events import box_corners, obb_overlap


@pytest.fixture(scope="module")
def world():
    return SimWorld(SimConfig())


def test_obb_overlap_agrees_with_polygon_intersection():
    rng = np.random.default_rng(0)
    for _ in range(400):
        a = (rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-180, 180), rng.uniform(0.5, 2.5), rng.uniform(0.3, 1.2))
        b = (rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-180, 180), rng.uniform(0.5, 2.5), rng.uniform(0.3, 1.2))
        area, _ = cv2.intersectConvexConvex(box_corners(*a).astype(np.float32), box_corners(*b).astype(np.float32))
        got = obb_overlap(*a, np.array([b[0]]), np.array([b[1]]), np.array([b[2]]), np.array([b[3]]), np.array([b[4]]))[0]
        if area > 1e-3:
            assert got
        elif area == 0.0:
            assert not got
    # touching within a millimetre: separated / overlapping
    assert not obb_overlap(0, 0, 0, 2, 1, np.array([4.001]), np.array([0.0]), np.array([0.0]), np.array([2.0]), np.array([1.0]))[0]
    assert obb_overlap(0, 0, 0, 2, 1, np.array([3.999]), np.array([0.0]), np.array([0.0]), np.array([2.0]), np.array([1.0]))[0]


def _lane1_centre_y(world, x):
    p = world.network.project(x, 129.5)
    assert (p.road_id, p.lane_id) == (4, 1)
    return p.y


def test_lane_invasion_fires_when_a_corner_crosses_the_centre_line(world):
    world.reset(Pose(250.0, 129.5, 180.0), 0, seed=0)
    world.ego = EgoState(250.0, _lane1_centre_y(world, 250.0), 180.0, speed=5.0, vx=-5.0)
    centre_line = _lane1_centre_y(world, 250.0) + 2.0  # lane 1 is 4 m wide; +y is south, lane -1's side
    fired = []
    for _ in range(60):
        before = box_corners(world.ego.x, world.ego.y, world.ego.yaw, 2.4, 1.05)[:, 1]
        snap = world.step(VehicleControl(throttle=0.3, steer=-0.15))  # steer left: towards +y when heading west
        after = box_corners(world.ego.x, world.ego.y, world.ego.yaw, 2.4, 1.05)[:, 1]
        # CARLA's rule: each corner of the box is checked; a tick reports the markings any corner crossed
        crossed_now = bool(np.any((before < centre_line) != (after < centre_line)))
        if snap.lane_invasions:
            assert snap.lane_invasions[0].crossed_markings == ("Broken",)
            assert snap.lane_invasions[0].frame == snap.frame
        assert bool(snap.lane_invasions) == crossed_now, (before, after, centre_line)
        fired.append(bool(snap.lane_invasions))
    assert 1 <= sum(fired) <= 4  # the four corners cross the line over a few ticks, each reported once


def test_offroad_when_the_centre_leaves_the_driving_lanes(world):
    world.reset(Pose(250.0, 129.5, 180.0), 0, seed=0)
    y0 = _lane1_centre_y(world, 250.0)
    world.ego = EgoState(250.0, y0, 180.0, speed=3.0, vx=-3.0)
    for _ in range(80):
        world.step(VehicleControl(throttle=0.2, steer=0.2))  # right, towards the northern sidewalk (-y)
        p = world.network.project(world.ego.x, world.ego.y)
        assert world.offroad == (p.distance >= 0.5 * p.lane_width)
        if world.offroad:
            break
    assert world.offroad and world.ego.y < y0 - 1.9


def test_static_collision_with_the_building_stops_the_ego(world):
    world.reset(Pose(250.0, 122.0, -90.0), 0, seed=0)  # on the northern sidewalk, facing north (-y)
    world.ego = EgoState(250.0, 124.0, -90.0, speed=2.0, vy=-2.0)
    building_edge = None
    for _ in range(200):
        prev = world.ego
        snap = world.step(VehicleControl(throttle=0.3))
        if snap.collisions:
            ev = snap.collisions[0]
            assert (ev.other_id, ev.other_type) == (-1, "static.building")
            assert ev.intensity == pytest.approx(world.config.vehicle.mass * prev.speed, rel=0.2)
            assert world.ego.speed == 0.0 and (world.ego.x, world.ego.y) == (prev.x, prev.y)
            building_edge = prev.y - 2.4
            break
    assert building_edge is not None
    # the building starts verge_width beyond the sidewalk; the reverted front bumper is just short of it
    probe = world.raster.class_at(np.array([250.0]), np.array([building_edge - 0.3]))
    assert probe[0] == 0


def test_collision_with_an_npc_names_it(world):
    net = world.network
    world.reset(Pose(297.0, 129.5, 180.0), 0, seed=0)
    p = net.project(290.0, 129.5)
    world.traffic.place([p.lane_index], [net.lanes[p.lane_index].s1 - p.s], np.random.default_rng(0), first_id=5000)
    world.ego = EgoState(297.0, p.y, 180.0, speed=6.0, vx=-6.0)
    hit = None
    for _ in range(100):
        prev_gap = (world.ego.x - 2.4) - (world.traffic.x[0] + world.traffic.extent[0, 0])
        snap = world.step(VehicleControl(throttle=1.0))
        if snap.collisions:
            hit = snap.collisions[0]
            break
    assert hit is not None and hit.other_id == 5000 and hit.other_type == world.config.npc.blueprints[0]
    assert hit.intensity > 0.0 and world.ego.speed == 0.0
    assert prev_gap < 1.0  # it fired when the boxes met, not earlier
