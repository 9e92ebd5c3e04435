"""Settings of the driving environment: ``EnvConfig`` (with nested ``ObservationConfig``, ``RewardConfig``,
``SimConfig`` and ``CarlaConfig``).

Units are in the field names (``_m`` metres, ``_kmh`` km/h, ``_deg`` degrees, ``_s`` seconds); frames are
CARLA's (x east, y south, z up; yaw in degrees clockwise seen from above; vehicle frame x forward, y right).

Where a setting is consumed by a backend it lives in that backend's section only, never twice:

=========================  ====================================  =========================================
what                       sim backend                           carla backend
=========================  ====================================  =========================================
town                       ``sim.town`` (+ ``sim.town_seed``)    ``carla.town``
camera kind                ``sim.camera.kind``                   ``carla.camera_kind``
camera frame size (84x84)  ``sim.camera.width/height``           ``carla.output_width/height``
time step (0.05 s)         ``sim.dt``                            ``carla.fixed_delta_seconds``
=========================  ====================================  =========================================

The scenario table (``scenario_vehicles``: scenario 0/1/2 -> 20/50/100 NPC vehicles) belongs to the
environment and applies to both backends. Every field is read by ``jtd3.envs`` (tests/test_env_config.py
proves it with ``jtd3.config.track_reads``).
"""

from __future__ import annotations

import dataclasses
import math

from jtd3.backends.carla.config import CarlaConfig
from jtd3.backends.sim.config import SimConfig
from jtd3.choices import BACKENDS
from jtd3.config import ConfigNode, check, choice, nested, param

__all__ = [
    "EnvConfig", "ObservationConfig", "RewardConfig", "RewardWeights", "SpeedControlConfig", "ROUTES", "ROUTE_STARTS",
    "BACKENDS",
]

ROUTES = ("reference", "random")
ROUTE_STARTS = ("beginning", "random")


@dataclasses.dataclass(frozen=True)
class ObservationConfig(ConfigNode):
    """The observation: a stack of camera frames and a kinematic vector scaled to roughly [-1, 1].

    Kinematic layout (length ``5 + 2 * n_waypoints`` [+ 2]; see :func:`jtd3.envs.observation.kinematics_layout`):
    forward speed / ``speed_scale_kmh``; distance to the next route waypoint / ``distance_scale_m``; angle to
    it (vehicle frame, positive right) / ``angle_scale_deg``; signed lateral offset from the lane centre
    (positive right) / ``lateral_scale_m``; heading error to the lane (vehicle yaw - lane yaw, positive =
    turned right of the lane) / ``heading_scale_deg``; then the next ``n_waypoints`` route waypoints (x forward,
    y right, vehicle frame) / ``waypoint_scale_m``; with ``lead_vehicle`` the gap to the vehicle ahead and the
    closing speed. Every entry is clipped to [-clip, clip].
    """

    frame_stack: int = param(4, "camera frames per observation, oldest first")
    n_waypoints: int = param(25, "route waypoints ahead in the kinematic vector, (x, y) each")
    speed_scale_kmh: float = param(50.0, "forward speed divided by this (km/h)")
    distance_scale_m: float = param(10.0, "distance to the next waypoint divided by this (m)")
    angle_scale_deg: float = param(180.0, "angle to the next waypoint divided by this (degrees)")
    lateral_scale_m: float = param(2.0, "lateral offset from the lane centre divided by this (m; half a lane)")
    heading_scale_deg: float = param(90.0, "heading error to the lane divided by this (degrees)")
    waypoint_scale_m: float = param(50.0, "waypoint coordinates in the vehicle frame divided by this (m)")
    clip: float = param(5.0, "every kinematic entry is clipped to [-clip, clip] (the Box bounds)")
    lead_vehicle: bool = param(
        False, "append the vehicle ahead (nearest in the reward's ahead corridor), as a front radar gives it: "
        "bumper gap / lead_range_m (1: none) and closing speed / speed_scale_kmh (0: none)",
    )
    lead_range_m: float = param(40.0, "lead_vehicle: the gap is divided by this and capped at 1 (m)")

    def __post_init__(self) -> None:
        check(self.frame_stack >= 1, "observation.frame_stack", self.frame_stack, ">= 1")
        check(self.n_waypoints >= 1, "observation.n_waypoints", self.n_waypoints, ">= 1")
        for name in ("speed_scale_kmh", "distance_scale_m", "angle_scale_deg", "lateral_scale_m",
                     "heading_scale_deg", "waypoint_scale_m", "clip", "lead_range_m"):
            v = getattr(self, name)
            check(math.isfinite(v) and v > 0, f"observation.{name}", v, "> 0")


@dataclasses.dataclass(frozen=True)
class RewardWeights(ConfigNode):
    """reward = sum(weight * component); docs/env.md gives each component's formula, units and range."""

    progress: float = param(1.0, "per metre of route arc length gained this step (negative when going back)")
    waypoint: float = param(0.5, "per route waypoint passed for the first time")
    goal: float = param(50.0, "once, on the step the route is completed")
    efficiency: float = param(
        1.0, "per step, speed along the route vs the target speed, component in [-1, 1]; must exceed "
        "progress * dt * target speed (m/s) so that the per-step reward peaks at the target speed (docs/env.md)"
    )
    lane_keeping: float = param(0.2, "per step, lateral and heading deviation from the route, component in [-2, 0]")
    comfort: float = param(0.02, "per step, jerk, component in [-1, 0]")
    collision: float = param(50.0, "on a collision step: component -(1 + speed / collision_speed_scale_kmh)")
    off_road: float = param(1.0, "per step with the vehicle centre outside every driving lane, component -1")
    off_route: float = param(50.0, "on the step the vehicle ends the episode off the route, component -1")
    lane_invasion: float = param(1.0, "per lane-invasion event (a marking crossed), component -count")
    proximity: float = param(0.5, "per step, time-to-collision / gap to the vehicle ahead, component in [-1, 0]")
    standstill: float = param(0.02, "per step standing still with the road ahead free, component -1")
    stalled: float = param(
        50.0, "on the step that ends the episode stalled when env.stall_termination is failure, component -1"
    )


@dataclasses.dataclass(frozen=True)
class RewardConfig(ConfigNode):
    """Weights and constants of the reward (nothing in jtd3/envs/reward.py is a hard-coded number)."""

    weights: RewardWeights = nested(RewardWeights)
    target_speed_kmh: float = param(30.0, "efficiency: speed along the route that scores 1 (km/h) on straight road")
    curve_lateral_accel: float = param(
        3.0, "efficiency: in curves the target speed drops to sqrt(curve_lateral_accel / curvature) (m/s^2; a "
        "careful driver: about 2-3); 0: the target is target_speed_kmh everywhere"
    )
    curve_decel: float = param(
        2.0, "efficiency: the target speed falls towards a curve's speed no faster than this deceleration over arc "
        "length (m/s^2): the target asks to slow down before the curve, not in it"
    )
    lateral_scale_m: float = param(2.0, "lane keeping: lateral deviation from the route scoring -1 (m)")
    heading_scale_deg: float = param(30.0, "lane keeping: heading error to the route scoring -1 (degrees)")
    jerk_scale: float = param(20.0, "comfort: jerk magnitude (m/s^3) scoring -1 (larger values are clipped)")
    collision_speed_scale_kmh: float = param(30.0, "collision: speed at which the penalty doubles (km/h)")
    ttc_threshold_s: float = param(3.0, "proximity: time-to-collision below which the penalty grows (s)")
    min_gap_m: float = param(3.0, "proximity: bumper gap to the vehicle ahead below which a standing car is penalised (m)")
    headway_s: float = param(1.0, "proximity: a moving car is penalised below min_gap_m + headway_s * speed (s)")
    ahead_range_m: float = param(40.0, "proximity/standstill: vehicles this far ahead (centre to centre) count (m)")
    ahead_lateral_margin_m: float = param(
        0.5, "proximity/standstill: a vehicle is ahead when its centre is within the two half widths plus this (m)"
    )
    standstill_speed_kmh: float = param(1.0, "standstill: below this speed the vehicle stands still (km/h)")
    standstill_free_gap_m: float = param(
        10.0, "standstill: no penalty while a vehicle ahead is closer than this bumper gap (waiting in traffic, m)"
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(RewardWeights):
            v = getattr(self.weights, f.name)
            check(math.isfinite(v) and v >= 0, f"reward.weights.{f.name}", v, ">= 0 (a component carries its sign)")
        for name in ("target_speed_kmh", "lateral_scale_m", "heading_scale_deg", "jerk_scale",
                     "collision_speed_scale_kmh", "ttc_threshold_s", "min_gap_m", "ahead_range_m", "curve_decel"):
            v = getattr(self, name)
            check(math.isfinite(v) and v > 0, f"reward.{name}", v, "> 0")
        for name in ("ahead_lateral_margin_m", "standstill_speed_kmh", "standstill_free_gap_m", "headway_s",
                     "curve_lateral_accel"):
            v = getattr(self, name)
            check(math.isfinite(v) and v >= 0, f"reward.{name}", v, ">= 0")


@dataclasses.dataclass(frozen=True)
class SpeedControlConfig(ConfigNode):
    """The speed controller of ``longitudinal_action: target_speed`` (jtd3/envs/speed_control.py), run at every
    simulator tick on either backend."""

    max_speed_kmh: float = param(40.0, "target speed at action +1 (action -1: stop and hold; 0: half of it)")
    kp: float = param(0.5, "throttle per m/s of speed error")
    ki: float = param(0.05, "throttle per (m/s * s) of integrated speed error")
    brake_gain: float = param(0.3, "brake per m/s of overspeed beyond the deadband")
    brake_deadband_kmh: float = param(1.8, "overspeed (km/h) tolerated before braking")
    follow: bool = param(
        True, "cap the target speed so that the car can always stop follow_min_gap_m behind the vehicle ahead "
        "that the front obstacle sensor measures, as adaptive cruise control does: the agent's speed is a wish, "
        "not a command (ablation: docs/learning/follow/)",
    )
    follow_min_gap_m: float = param(3.0, "follow: bumper gap kept to a stopped vehicle ahead (m)")
    follow_headway_s: float = param(0.5, "follow: reaction time before braking (s)")
    follow_decel: float = param(4.0, "follow: braking deceleration assumed for both vehicles (m/s^2)")
    curve_lateral_accel: float = param(
        5.0, "> 0: cap the target speed along the route at sqrt(curve_lateral_accel / curvature), braking into "
        "each curve at curve_decel, as a curve speed assistant does from map data (m/s^2); 0: off"
    )
    curve_decel: float = param(3.0, "curve_lateral_accel: deceleration before a curve the cap allows for (m/s^2)")

    def __post_init__(self) -> None:
        check(math.isfinite(self.max_speed_kmh) and 5.0 <= self.max_speed_kmh <= 200.0, "speed_control.max_speed_kmh",
              self.max_speed_kmh, "in [5, 200] km/h")
        for name in ("kp", "ki", "brake_gain", "brake_deadband_kmh", "follow_min_gap_m", "follow_headway_s"):
            v = getattr(self, name)
            check(math.isfinite(v) and v >= 0, f"speed_control.{name}", v, ">= 0")
        check(self.kp > 0 and self.brake_gain > 0, "speed_control.kp", self.kp, "> 0 (and brake_gain > 0)")
        check(math.isfinite(self.follow_decel) and self.follow_decel > 0, "speed_control.follow_decel",
              self.follow_decel, "> 0")
        check(math.isfinite(self.curve_lateral_accel) and self.curve_lateral_accel >= 0,
              "speed_control.curve_lateral_accel", self.curve_lateral_accel, ">= 0 (0: off)")
        check(math.isfinite(self.curve_decel) and self.curve_decel > 0, "speed_control.curve_decel",
              self.curve_decel, "> 0")


@dataclasses.dataclass(frozen=True)
class EnvConfig(ConfigNode):
    """The gymnasium driving environment (``jtd3.envs.DrivingEnv``)."""

    backend: str = choice("sim", BACKENDS, "sim: embedded simulator (section sim); carla: a CARLA server (section carla)")
    scenario: int = param(0, "row of scenario_vehicles: the number of NPC vehicles")
    scenario_vehicles: tuple[int, ...] = param((20, 50, 100), "NPC vehicles of scenario 0, 1, 2, ...")
    route: str = choice(
        "reference", ROUTES,
        "reference: the Town01 route of the original experiment (Town01 only); random: a new route on the "
        "loaded town's driving lanes every episode, drawn from the episode seed",
    )
    route_start: str = choice(
        "random", ROUTE_STARTS,
        "where the ego starts on the route in training episodes: beginning; random: at an arc length drawn "
        "uniformly from [0, length - route_start_margin_m] (from the episode seed), standing, facing along the "
        "route: a curriculum that shows the whole route, its turn included, from the first episodes (without it "
        "TD3 learned to stop before the Town01 turn). Evaluation always starts at the beginning (the trainer's "
        "and scripts/evaluate.py set it; jtd3.evaluate.evaluate refuses an environment that does not)",
    )
    route_start_margin_m: float = param(
        20.0, "route_start random: the start is at least this far (m) from the goal (on the reference route, starts "
        "then cover its turn at 216-234 m)"
    )
    route_min_length_m: float = param(150.0, "random routes: shortest length (m)")
    route_max_length_m: float = param(300.0, "random routes: longest length (m); ~860 steps at 25 km/h")
    route_waypoint_spacing_m: float = param(3.0, "random routes: spacing of the route waypoints (m; reference: ~3.1)")
    route_search_window_m: float = param(
        30.0, "route tracking searches this arc length (m) around the previous position, so progress cannot jump"
    )
    max_episode_steps: int = param(1000, "steps before truncation (time limit, not termination)")
    stall_timeout_s: float = param(
        10.0, "end the episode (reason 'stalled') after the vehicle has stood still this long with the road ahead "
        "free (reward.standstill_speed_kmh and reward.standstill_free_gap_m decide); 0 disables. Keeps the replay "
        "from filling with parked episodes"
    )
    stall_termination: str = choice(
        "failure", ("failure", "truncation"),
        "failure: a stall terminates the episode as a failed route with the reward.weights.stalled penalty (as "
        "CARLA's leaderboard fails a blocked agent; without it TD3 learned that parking is safe); truncation: like "
        "the time limit, the TD target bootstraps",
    )
    action_repeat: int = param(
        2, "simulator ticks per environment step: the action is held, rewards are summed, the frame stack takes "
        "the last tick's frame (2: control at 10 Hz, as DrQ-v2; 1: 20 Hz, as the original; max_episode_steps "
        "counts env steps)"
    )
    longitudinal_action: str = choice(
        "target_speed", ("target_speed", "pedals"),
        "meaning of action[1]: target_speed: a speed set-point, 0 .. speed_control.max_speed_kmh for -1 .. 1, "
        "tracked by a PI controller at every tick (a fresh policy rolls at half the maximum instead of standing); "
        "pedals: throttle (> 0) / brake (< 0), as the original",
    )
    speed_control: SpeedControlConfig = nested(SpeedControlConfig)
    off_route_distance_m: float = param(2.5, "terminate when the vehicle centre is farther than this from the route (m)")
    goal_tolerance_m: float = param(3.0, "the route is completed within this arc length of its end (m)")
    observation: ObservationConfig = nested(ObservationConfig)
    reward: RewardConfig = nested(RewardConfig)
    sim: SimConfig = nested(SimConfig)
    carla: CarlaConfig = nested(CarlaConfig)

    def __post_init__(self) -> None:
        n = len(self.scenario_vehicles)
        check(n > 0 and min(self.scenario_vehicles) >= 0, "scenario_vehicles", self.scenario_vehicles,
              "a non-empty list of counts >= 0")
        check(not isinstance(self.scenario, bool) and 0 <= self.scenario < n, "scenario", self.scenario,
              f"one of {', '.join(map(str, range(n)))} (rows of scenario_vehicles {list(self.scenario_vehicles)})")
        check(0 < self.route_min_length_m <= self.route_max_length_m, "route_min_length_m",
              self.route_min_length_m, f"in (0, route_max_length_m = {self.route_max_length_m}]")
        check(self.route_start_margin_m >= 0, "route_start_margin_m", self.route_start_margin_m, ">= 0")
        check(self.route_waypoint_spacing_m > 0, "route_waypoint_spacing_m", self.route_waypoint_spacing_m, "> 0")
        check(self.route_search_window_m > 0, "route_search_window_m", self.route_search_window_m, "> 0")
        check(self.max_episode_steps >= 1, "max_episode_steps", self.max_episode_steps, ">= 1")
        check(self.action_repeat >= 1, "action_repeat", self.action_repeat, ">= 1")
        check(math.isfinite(self.stall_timeout_s) and self.stall_timeout_s >= 0, "stall_timeout_s",
              self.stall_timeout_s, ">= 0 (0 disables)")
        check(self.off_route_distance_m > 0, "off_route_distance_m", self.off_route_distance_m, "> 0")
        check(self.goal_tolerance_m >= 0, "goal_tolerance_m", self.goal_tolerance_m, ">= 0")
        sensor = self.sim.obstacle if self.backend == "sim" else self.carla.obstacle
        check(sensor.enabled or not (self.speed_control.follow or self.observation.lead_vehicle),
              f"{self.backend}.obstacle.enabled", sensor.enabled,
              "true while speed_control.follow or observation.lead_vehicle is on (both read the obstacle sensor)")

    @property
    def num_vehicles(self) -> int:
        """NPC vehicles of the configured scenario (the scenario table row)."""
        return int(self.scenario_vehicles[self.scenario])
