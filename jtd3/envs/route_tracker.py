"""Route bookkeeping: where the vehicle is along its route, as ONE number over ONE route representation.

The route is a :class:`jtd3.roads.routes.RoutePolyline` (coarse waypoints + a dense polyline with the explicit
bridge ``waypoint_s``). The whole tracking state is the arc length ``s`` of the vehicle's foot point on the
dense polyline (and its high-water mark ``s_max``). Everything else derives from it:

- the next waypoint is ``route.next_waypoint(s)`` (the first coarse waypoint strictly ahead of ``s``);
- waypoints passed this step are ``next_waypoint(s_max_new) - next_waypoint(s_max_old)``: each is paid once, and
  only when the vehicle's foot point actually passes it (the original project shared one index between the
  coarse route and a 1 cm densified copy, which zeroed every waypoint feature after 1 m and paid the bonus
  every step);
- progress is ``s_new - s_old`` in metres (negative when driving back), so its sum over an episode is the
  net arc length gained whatever the path.

Pure functions over frozen dataclasses. Frame: CARLA's (metres, x east, y south).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jtd3.roads.routes import RouteLocation, RoutePolyline

__all__ = ["RouteState", "RouteStep", "start", "advance", "upcoming_waypoints"]


@dataclasses.dataclass(frozen=True)
class RouteState:
    """Tracking state: arc length of the vehicle's foot point and its maximum so far (m)."""

    s: float
    s_max: float


@dataclasses.dataclass(frozen=True)
class RouteStep:
    """What one step of tracking found."""

    state: RouteState
    location: RouteLocation  # foot point, signed lateral offset (positive right) and distance to the route
    progress_m: float  # s_new - s_old (m)
    waypoints_passed: int  # coarse waypoints whose arc length the high-water mark passed this step (>= 0)
    next_waypoint: int  # index of the first coarse waypoint strictly ahead of s (len(waypoints) when none)
    remaining_m: float  # route length - s (m)


def start(route: RoutePolyline, x: float, y: float) -> RouteStep:
    """Tracking at the start of an episode: the whole route is searched for the foot point."""
    loc = route.locate(x, y)
    state = RouteState(loc.s, loc.s)
    return RouteStep(state, loc, 0.0, 0, route.next_waypoint(loc.s), route.length - loc.s)


def advance(route: RoutePolyline, state: RouteState, x: float, y: float, window_m: float) -> RouteStep:
    """Track the vehicle at (x, y): search ``window_m`` metres of arc length around the previous ``s``."""
    loc = route.locate(x, y, s_hint=state.s, window=window_m)
    s_max = max(state.s_max, loc.s)
    passed = route.next_waypoint(s_max) - route.next_waypoint(state.s_max)
    new = RouteState(loc.s, s_max)
    return RouteStep(new, loc, loc.s - state.s, int(passed), route.next_waypoint(loc.s), route.length - loc.s)


def upcoming_waypoints(route: RoutePolyline, next_waypoint: int, n: int) -> np.ndarray:
    """(n, 2) world x, y of the coarse waypoints ``next_waypoint, next_waypoint + 1, ...``.

    Past the last waypoint the goal (the last waypoint) repeats, so the vector never holds zeros or stale
    points and the goal stays visible until the episode ends.
    """
    m = len(route.waypoints)
    idx = np.minimum(np.arange(next_waypoint, next_waypoint + n), m - 1)
    return route.waypoints[idx]
