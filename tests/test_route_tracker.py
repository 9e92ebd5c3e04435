"""Route bookkeeping: one arc length over one route representation (the original project's bug is a test)."""

import math

import numpy as np
import pytest

from jtd3.envs import route_tracker as rt
from jtd3.roads.routes import densify, load_reference_route


@pytest.fixture(scope="module")
def ref():
    return load_reference_route()


def test_driving_the_route_passes_every_waypoint_once_and_sums_progress(ref):
    # Teleport along the dense polyline in 0.4 m steps with a 0.3 m lateral wobble.
    s_grid = np.arange(0.0, ref.length, 0.4)
    xs, ys, yaws = ref.point_at(s_grid)
    wobble = 0.3 * np.sin(s_grid / 7.0)
    r = np.radians(yaws)
    xs, ys = xs - np.sin(r) * wobble, ys + np.cos(r) * wobble  # + right of the route
    step = rt.start(ref, xs[0], ys[0])
    assert step.next_waypoint == 1 and step.state.s == pytest.approx(0.0, abs=1e-6)
    passed, progress, next_wps = 0, 0.0, []
    for x, y, s_true, w in zip(xs[1:], ys[1:], s_grid[1:], wobble[1:]):
        step = rt.advance(ref, step.state, x, y, window_m=30.0)
        assert step.waypoints_passed in (0, 1)  # 0.4 m steps, waypoints ~3 m apart
        assert step.state.s == pytest.approx(s_true, abs=0.05)
        assert step.location.lateral_offset == pytest.approx(w, abs=0.05)
        # the next waypoint is strictly ahead and is the first one ahead
        j = step.next_waypoint
        assert ref.waypoint_s[j - 1] <= step.state.s < ref.waypoint_s[j]
        passed += step.waypoints_passed
        progress += step.progress_m
        next_wps.append(j)
    assert passed == next_wps[-1] - 1  # every waypoint behind the car was paid, each once
    assert next_wps == sorted(next_wps)
    assert progress == pytest.approx(step.state.s, abs=1e-9)
    assert passed >= 84


def test_backing_up_does_not_pay_waypoints_twice_and_progress_is_net(ref):
    step = rt.start(ref, *ref.points[0])
    path = list(np.arange(0.5, 20.0, 0.5)) + list(np.arange(19.5, 5.0, -0.5)) + list(np.arange(5.5, 25.0, 0.5))
    passed, progress = 0, 0.0
    for s in path:
        x, y, _ = ref.point_at(s)
        step = rt.advance(ref, step.state, float(x), float(y), window_m=30.0)
        passed += step.waypoints_passed
        progress += step.progress_m
    assert passed == ref.next_waypoint(24.5) - 1  # waypoints up to 24.5 m, each once
    assert progress == pytest.approx(24.5, abs=1e-6)
    assert step.state.s_max == pytest.approx(24.5, abs=1e-6)


def test_search_window_keeps_progress_on_the_right_branch():
    # A hairpin: out along y = 0, back along y = 4 (4 m apart, like two lanes of a U-turn).
    wps = np.array([[0.0, 0.0], [30.0, 0.0], [32.0, 2.0], [30.0, 4.0], [0.0, 4.0]])
    route = densify(wps, spacing=1.0)
    step = rt.start(route, 0.0, 0.0)
    for x in np.arange(0.5, 20.0, 0.5):
        step = rt.advance(route, step.state, x, 1.9, window_m=10.0)  # nearer the outward leg (y = 0)
    assert step.state.s < 25.0  # still on the outward leg
    step2 = rt.advance(route, step.state, 19.5, 2.1, window_m=10.0)  # nearer the return leg, but out of the window
    assert step2.state.s < 25.0 and abs(step2.progress_m) < 1.0
    whole = route.locate(19.5, 2.1)  # without the window the return leg wins
    assert whole.s > 40.0


def test_upcoming_waypoints_pad_with_the_goal(ref):
    m = len(ref.waypoints)
    wps = rt.upcoming_waypoints(ref, m - 3, 5)
    assert wps.shape == (5, 2)
    np.testing.assert_array_equal(wps[:3], ref.waypoints[m - 3:])
    np.testing.assert_array_equal(wps[3:], ref.waypoints[[m - 1, m - 1]])
    np.testing.assert_array_equal(rt.upcoming_waypoints(ref, 1, 25), ref.waypoints[1:26])


def test_lateral_offset_sign_is_positive_right(ref):
    # Reference route starts heading west (yaw 180); its right is north (negative y in CARLA's frame).
    x0, y0 = ref.points[5]
    assert ref.yaw[5] == pytest.approx(180.0, abs=0.1)
    step = rt.start(ref, x0, y0 - 1.0)
    assert step.location.lateral_offset == pytest.approx(1.0, abs=1e-6)
    assert math.isclose(step.location.distance, 1.0, abs_tol=1e-6)
