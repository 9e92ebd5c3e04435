"""The reward: ``sum(weight_i * component_i)`` over the components below (pure functions).

Every weight and constant comes from :class:`jtd3.envs.config.RewardConfig`; docs/env.md gives the design
and measured returns. Units: metres, seconds, m/s inside (the config speaks km/h), degrees.

==============  ===============================================================  ==============  ============
component       raw value on one step                                            unit / range    default w
==============  ===============================================================  ==============  ============
progress        route arc length gained, s_new - s_old                           m (~0.42 @30)   1.0
waypoint        route waypoints passed for the first time                       count (0 or 1)  0.5
goal            1 on the step the route is completed                            {0, 1}          50
efficiency      clip(1 - |v_route - v_target(s)| / v_target(s), -1, 1)          [-1, 1]         1.0
lane_keeping    -(min(|d| / lateral_scale, 1) + min(|psi| / heading_scale, 1))  [-2, 0]         0.2
comfort         -min(|jerk| / jerk_scale, 1)                                     [-1, 0]         0.02
collision       -(1 + v_impact / collision_speed_scale) on a collision step      <= -1           20
off_road        -1 while the vehicle centre is outside every driving lane       {-1, 0}         1.0
off_route       -1 on the step that ends the episode off the route              {-1, 0}         20
lane_invasion   -(lane-invasion events this step)                               count           1.0
proximity       -max(clip(1 - ttc / ttc_threshold), clip(1 - gap / gap_safe))   [-1, 0]         0.5
standstill      -1 when slower than standstill_speed and no vehicle close ahead  {-1, 0}         0.02
stalled         -1 on the step that ends the episode stalled (a failure)         {-1, 0}         50
==============  ===============================================================  ==============  ============

``v_target(s)`` is the route's target speed profile (:func:`target_speed_profile`): ``target_speed_kmh`` on
straight road, ``sqrt(curve_lateral_accel / curvature)`` in curves, falling towards a curve at
``curve_decel`` over arc length. ``v_route`` is the velocity along the route tangent, ``d`` and ``psi`` the signed lateral offset and heading
error relative to the route at the vehicle's foot point, ``jerk`` the change of the acceleration vector per
second, ``v_impact`` the larger of the speeds before and after the collision step, ``ttc`` = gap / closing
speed to the nearest vehicle ahead (inside the ego's lane corridor, see :func:`vehicle_ahead`), ``gap_safe`` =
``min_gap_m + headway_s * v_forward`` (the IDM's desired gap: a standing car may wait ``min_gap_m`` behind
another one, a moving car keeps ``headway_s`` seconds).
"""

from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np

from jtd3.backends.base import ActorState, ObstacleReading, Vehicles
from jtd3.envs.config import RewardConfig

__all__ = [
    "Ahead", "RewardInputs", "components", "is_standing", "route_curvature", "target_speed_profile", "total",
    "vehicle_ahead",
    "COMPONENTS",
]

KMH = 1.0 / 3.6  # m/s per km/h

COMPONENTS = (
    "progress", "waypoint", "goal", "efficiency", "lane_keeping", "comfort",
    "collision", "off_road", "off_route", "lane_invasion", "proximity", "standstill", "stalled",
)


@dataclasses.dataclass(frozen=True)
class Ahead:
    """The nearest vehicle in the ego's corridor ahead."""

    gap_m: float  # bumper-to-bumper distance along the ego heading (negative when the boxes overlap)
    closing_speed: float  # ego forward speed - the other's speed along the ego heading (m/s, > 0 approaching)
    ego_speed: float = 0.0  # ego forward speed (m/s), for the time-headway gap

    @property
    def ttc_s(self) -> float:
        """Time to collision (s); inf when not closing."""
        if self.closing_speed <= 0.0:
            return math.inf
        return max(self.gap_m, 0.0) / self.closing_speed


@dataclasses.dataclass(frozen=True)
class RewardInputs:
    """Everything one reward evaluation needs (plain numbers; SI units)."""

    progress_m: float
    waypoints_passed: int
    goal_reached: bool
    speed_along_route: float  # m/s, velocity . route tangent
    speed: float  # m/s, |velocity|
    route_lateral_m: float  # signed, positive right of the route
    route_heading_deg: float  # vehicle yaw - route yaw, wrapped to [-180, 180)
    jerk: float  # m/s^3, |a_t - a_{t-1}| / dt
    collided: bool
    impact_speed: float  # m/s
    off_road: bool
    off_route: bool  # this step ends the episode off the route
    lane_invasions: int  # markings crossed this step
    ahead: Ahead | None
    target_speed: float | None = None  # m/s, the route's target speed here; None: target_speed_kmh
    stalled: bool = False  # this step ends the episode stalled, as a failure


def route_curvature(s: np.ndarray, yaw_deg: np.ndarray, window_m: float = 8.0) -> np.ndarray:
    """Unsigned curvature (1/m) at each arc length ``s`` (ascending, metres) of a route whose heading there is
    ``yaw_deg``: the heading change over ``window_m`` of arc length centred on each point (shorter at the ends).
    The window smooths the corners of a polyline through waypoints a few metres apart."""
    s = np.asarray(s, dtype=np.float64)
    heading = np.unwrap(np.radians(np.asarray(yaw_deg, dtype=np.float64)))
    lo = np.interp(s - window_m / 2, s, heading)
    hi = np.interp(s + window_m / 2, s, heading)
    span = np.minimum(s + window_m / 2, s[-1]) - np.maximum(s - window_m / 2, s[0])
    return np.abs(hi - lo) / np.maximum(span, 1e-6)


def target_speed_profile(s: np.ndarray, yaw_deg: np.ndarray, cfg: RewardConfig) -> np.ndarray:
    """The reward's target speed (m/s) at each arc length ``s`` of a route whose heading there is ``yaw_deg``:
    :func:`curve_speed_profile` with ``target_speed``, ``curve_lateral_accel`` and ``curve_decel``."""
    return curve_speed_profile(s, yaw_deg, cfg.target_speed_kmh * KMH, cfg.curve_lateral_accel, cfg.curve_decel)


def curve_speed_profile(s: np.ndarray, yaw_deg: np.ndarray, v_max: float, lateral_accel: float,
                        decel: float) -> np.ndarray:
    """Speed (m/s) at each arc length ``s`` (ascending, metres) of a route whose heading there is ``yaw_deg``:
    ``min(v_max, sqrt(lateral_accel / curvature))`` (:func:`route_curvature`), then limited from the end
    backwards so that it never falls faster than ``decel`` over arc length (v^2 <= v_next^2 + 2 a ds): the
    speed drops before a curve, not in it. ``lateral_accel`` 0: ``v_max`` everywhere."""
    s = np.asarray(s, dtype=np.float64)
    v = np.full(s.shape, v_max)
    if lateral_accel <= 0.0 or len(s) < 2:
        return v
    curvature = route_curvature(s, yaw_deg)
    v = np.minimum(v, np.sqrt(lateral_accel / np.maximum(curvature, 1e-9)))
    for i in range(len(s) - 2, -1, -1):  # anticipate: brake into the curve at decel
        v[i] = min(v[i], math.sqrt(v[i + 1] ** 2 + 2.0 * decel * (s[i + 1] - s[i])))
    return v


def vehicle_ahead(ego: ActorState, vehicles: Vehicles, cfg: RewardConfig) -> Ahead | None:
    """The nearest vehicle whose centre is ahead of the ego (0 < x <= ``ahead_range_m``, vehicle frame) and
    laterally within the two half widths plus ``ahead_lateral_margin_m``; ``None`` when there is none.

    The corridor is straight along the ego heading (curves are approximated); the gap subtracts both
    half lengths (the other's taken along its larger half size, so a crossing vehicle is not under-estimated).
    """
    range_m, margin_m = cfg.ahead_range_m, cfg.ahead_lateral_margin_m
    if len(vehicles) == 0:
        return None
    r = math.radians(ego.yaw)
    c, s = math.cos(r), math.sin(r)
    i, lx = _nearest_ahead(np.ascontiguousarray(vehicles.location, dtype=np.float64),
                           np.ascontiguousarray(vehicles.extent, dtype=np.float64), float(ego.location[0]),
                           float(ego.location[1]), c, s, float(ego.extent[1]), float(range_m), float(margin_m))
    if i < 0:
        return None
    gap = float(lx - ego.extent[0] - max(vehicles.extent[i, 0], vehicles.extent[i, 1]))
    ego_fwd = c * ego.velocity[0] + s * ego.velocity[1]
    other_fwd = c * vehicles.velocity[i, 0] + s * vehicles.velocity[i, 1]
    return Ahead(gap, float(ego_fwd - other_fwd), float(ego_fwd))


@numba.njit(cache=True, nogil=True)
def _nearest_ahead(location, extent, ex, ey, c, s, ego_half_width, range_m, margin_m):  # pragma: no cover
    """Row and forward distance of the nearest vehicle in :func:`vehicle_ahead`'s corridor ((-1, inf): none).
    Compiled (numba, cached in ``__pycache__``): it runs at every tick over every vehicle."""
    best, best_lx = -1, np.inf
    for i in range(location.shape[0]):
        dx, dy = location[i, 0] - ex, location[i, 1] - ey
        lx = c * dx + s * dy
        ly = -s * dx + c * dy
        half_w = ego_half_width + min(extent[i, 0], extent[i, 1])
        if lx > 0.0 and lx <= range_m and abs(ly) <= half_w + margin_m and lx < best_lx:
            best, best_lx = i, lx
    return best, best_lx


def sensed_ahead(ego: ActorState, reading: ObstacleReading | None) -> Ahead | None:
    """The vehicle ahead as the front obstacle sensor measures it (what the policy and the speed control may
    use): the sweep distance as the gap (the bumper gap minus up to the sensor's hit radius: never more than the
    true gap) and the speeds along the ego heading; None when the sensor saw nothing this tick."""
    if reading is None:
        return None
    r = math.radians(ego.yaw)
    c, s = math.cos(r), math.sin(r)
    ego_fwd = c * ego.velocity[0] + s * ego.velocity[1]
    other_fwd = c * reading.other_velocity[0] + s * reading.other_velocity[1]
    return Ahead(float(reading.distance), float(ego_fwd - other_fwd), float(ego_fwd))


def components(inp: RewardInputs, cfg: RewardConfig) -> dict[str, float]:
    """Weighted components, in :data:`COMPONENTS` order; the reward is their sum (:func:`total`)."""
    w = cfg.weights
    v_target = cfg.target_speed_kmh * KMH if inp.target_speed is None else inp.target_speed
    v_collision = cfg.collision_speed_scale_kmh * KMH
    raw = {
        "progress": inp.progress_m,
        "waypoint": float(inp.waypoints_passed),
        "goal": 1.0 if inp.goal_reached else 0.0,
        "efficiency": float(np.clip(1.0 - abs(inp.speed_along_route - v_target) / v_target, -1.0, 1.0)),
        "lane_keeping": -(min(abs(inp.route_lateral_m) / cfg.lateral_scale_m, 1.0)
                          + min(abs(inp.route_heading_deg) / cfg.heading_scale_deg, 1.0)),
        "comfort": -min(abs(inp.jerk) / cfg.jerk_scale, 1.0),
        "collision": -(1.0 + inp.impact_speed / v_collision) if inp.collided else 0.0,
        "off_road": -1.0 if inp.off_road else 0.0,
        "off_route": -1.0 if inp.off_route else 0.0,
        "lane_invasion": -float(inp.lane_invasions),
        "proximity": -_proximity(inp.ahead, cfg.ttc_threshold_s, cfg.min_gap_m, cfg.headway_s),
        "standstill": -1.0 if is_standing(inp, cfg) else 0.0,
        "stalled": -1.0 if inp.stalled else 0.0,
    }
    weights = {
        "progress": w.progress, "waypoint": w.waypoint, "goal": w.goal, "efficiency": w.efficiency,
        "lane_keeping": w.lane_keeping, "comfort": w.comfort, "collision": w.collision, "off_road": w.off_road,
        "off_route": w.off_route, "lane_invasion": w.lane_invasion, "proximity": w.proximity,
        "standstill": w.standstill, "stalled": w.stalled,
    }
    return {k: float(weights[k] * raw[k]) for k in COMPONENTS}


def total(weighted: dict[str, float]) -> float:
    """The reward: the sum of the weighted components in :data:`COMPONENTS` order (exactly what ``info`` shows)."""
    return float(sum(weighted[k] for k in COMPONENTS))


def _proximity(ahead: Ahead | None, ttc_threshold_s: float, min_gap_m: float, headway_s: float) -> float:
    if ahead is None:
        return 0.0
    ttc_term = 0.0 if math.isinf(ahead.ttc_s) else min(max(1.0 - ahead.ttc_s / ttc_threshold_s, 0.0), 1.0)
    gap_safe = min_gap_m + headway_s * max(ahead.ego_speed, 0.0)
    gap_term = min(max(1.0 - ahead.gap_m / gap_safe, 0.0), 1.0)
    return max(ttc_term, gap_term)


def is_standing(inp: RewardInputs, cfg: RewardConfig) -> bool:
    """Slower than ``standstill_speed_kmh`` with no vehicle closer than ``standstill_free_gap_m`` ahead (not
    waiting behind one): what the standstill component penalises and the env's stall clock counts."""
    speed, free_gap_m = cfg.standstill_speed_kmh * KMH, cfg.standstill_free_gap_m
    if inp.speed >= speed:
        return False
    blocked = inp.ahead is not None and inp.ahead.gap_m < free_gap_m
    return not blocked
