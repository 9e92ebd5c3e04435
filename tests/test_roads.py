"""Road network, towns and routes without CARLA (the CARLA comparison is in test_roads_carla_oracle.py)."""

import numpy as np
import pytest

from jtd3.roads.network import RoadNetwork
from jtd3.roads.routes import densify, load_reference_route, reference_spawn
from jtd3.roads.towns import available_towns, load_town, procedural_town_xodr


@pytest.fixture(scope="module")
def town01():
    return load_town("town01")


def test_reference_route_lies_on_town01_lane_1(town01):
    route = load_reference_route()
    assert len(route.waypoints) == 86 and route.length == pytest.approx(264.4, abs=0.1)
    b = town01.project_many(route.waypoints)
    assert np.mean(np.abs(b.lateral_offset)) < 0.1 and np.max(np.abs(b.lateral_offset)) < 1.0
    assert set(zip(b.road_id.tolist(), b.lane_id.tolist())) == {(4, 1), (22, 1), (312, 1), (330, 1)}
    spawn = reference_spawn(route)
    assert (spawn.x, spawn.y, spawn.yaw) == (317.74, 129.49, 180.0)


def test_dense_route_keeps_coarse_waypoints_separate():
    wp = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 5.0]])
    r = densify(wp, spacing=0.3)
    assert np.allclose(r.points[r.waypoint_index], wp)
    assert np.allclose(r.waypoint_s, [0.0, 10.0, 15.0]) and r.length == pytest.approx(15.0)
    assert np.all(np.diff(r.s) <= 0.3 + 1e-9) and np.all(np.diff(r.s) > 0)
    loc = r.locate(5.0, 1.0)  # left of an eastward segment: y is south, so +y is the right side
    assert loc.s == pytest.approx(5.0) and loc.lateral_offset == pytest.approx(1.0)
    loc = r.locate(9.0, 2.0, s_hint=12.0, window=3.0)  # the window restricts the search to s in [9, 15]
    assert loc.s >= 9.0
    assert r.next_waypoint(0.0) == 1 and r.next_waypoint(r.waypoint_s[1]) == 2 and r.next_waypoint(r.length) == 3
    with pytest.raises(ValueError, match="repeat"):
        densify(np.array([[0.0, 0.0], [0.0, 0.0]]))


def test_projection_sign_convention_and_lane_at(town01):
    # Road 4 lane 1 runs west (yaw 180) along y ~= 129.5; its right side (travel direction) is north, y smaller.
    p = town01.project(250.0, 129.5 - 1.0)
    assert (p.road_id, p.lane_id) == (4, 1) and abs(abs(p.yaw) - 180.0) < 1.0
    assert p.lateral_offset == pytest.approx(1.0, abs=0.05)
    p = town01.project(250.0, 129.5 + 0.5)
    assert p.lateral_offset == pytest.approx(-0.5, abs=0.05)
    assert town01.lane_at(250.0, 129.5) is not None
    assert town01.lane_at(250.0, 100.0) is None  # a building block
    inside = town01.on_lane_many(np.array([[250.0, 129.5], [250.0, 100.0]]))
    assert inside.tolist() == [True, False]
    # yaw picks the lane of the vehicle's direction where lanes overlap (and leaves plain queries alone)
    q = town01.project(250.0, 131.5, yaw=0.0)
    assert abs(q.yaw) < 10.0


def test_next_follows_the_lane_graph(town01):
    start = town01.project(317.74, 129.49)
    ahead = town01.next(start, 10.0)
    assert len(ahead) == 1 and ahead[0].x == pytest.approx(307.74, abs=0.05)
    back = town01.previous(ahead[0], 10.0)
    assert back[0].x == pytest.approx(317.74, abs=0.05)
    with pytest.raises(ValueError, match="distance"):
        town01.next(start, 0.0)


def test_plan_route_reproduces_the_reference_route(town01):
    ref = load_reference_route()
    spawn = reference_spawn(ref)
    route = town01.plan_route((spawn.x, spawn.y), tuple(ref.waypoints[-1]), start_yaw=spawn.yaw)
    roads = [town01.lanes[li].road_id for li, _a, _b in route.lanes]
    assert roads == [4, 312, 22]  # straight on road 4, the right turn (junction road 312), then road 22
    assert route.length == pytest.approx(ref.length, abs=3.0)
    assert np.hypot(*(route.points[-1] - ref.waypoints[-1])) < 1.0


@pytest.mark.parametrize("name", ["grid3", "grid4"])
def test_procedural_towns_are_seeded_and_drivable(name):
    assert procedural_town_xodr(name, 3) == procedural_town_xodr(name, 3)
    assert procedural_town_xodr(name, 3) != procedural_town_xodr(name, 4)
    net = load_town(name, seed=3)
    driving = net.driving_lanes()
    assert all(net.successors(i) for i in driving), "a driving lane is a dead end"
    r1 = net.random_route(np.random.default_rng(5), min_length=150.0, max_length=300.0)
    r2 = net.random_route(np.random.default_rng(5), min_length=150.0, max_length=300.0)
    r3 = net.random_route(np.random.default_rng(6), min_length=150.0, max_length=300.0)
    assert np.array_equal(r1.points, r2.points) and not np.array_equal(r1.points, r3.points)
    assert 150.0 - 1e-6 <= r1.length <= 300.0 + 2.0
    assert np.max(np.hypot(*np.diff(r1.points, axis=0).T)) < 1.1  # continuous across lane joints
    b = net.project_many(r1.points[5:-5])
    assert np.max(np.abs(b.lateral_offset)) < 0.05


def test_unknown_town_and_bad_xodr_are_named():
    with pytest.raises(ValueError, match=r"'town99'.*town01"):
        load_town("town99")
    assert "town01" in available_towns() and "grid3" in available_towns()
    with pytest.raises(ValueError, match="not valid XML"):
        RoadNetwork.from_opendrive("<OpenDRIVE><road")
    with pytest.raises(ValueError, match="no <road>"):
        RoadNetwork.from_opendrive("<OpenDRIVE></OpenDRIVE>")
