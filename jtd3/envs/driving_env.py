"""``DrivingEnv``: one gymnasium environment over two backends (embedded simulator, CARLA server).

Observation ``Dict``: ``camera`` uint8 ``(frame_stack, H, W)`` grayscale, oldest frame first (at reset the first
frame repeated); ``kinematics`` float32 ``(5 + 2 * n_waypoints,)`` (layout: :mod:`jtd3.envs.observation`).
Action ``Box(-1, 1, (2,))`` float32 = ``[steer, longitudinal]``: with ``longitudinal_action: target_speed`` (the
default) a speed set-point, 0 .. ``speed_control.max_speed_kmh`` for -1 .. 1, that a PI controller tracks at
every simulator tick (:mod:`jtd3.envs.speed_control`); with ``pedals``, throttle (> 0) / brake (< 0).
Reward: :mod:`jtd3.envs.reward`. Termination (``terminated``): collision, off route (centre farther than
``off_route_distance_m`` from the route), route completed (within ``goal_tolerance_m`` of its end along the
route), stalled (standing still with the road ahead free for ``stall_timeout_s``) when ``stall_termination``
is ``failure``. Truncation (``truncated``): ``max_episode_steps``; stalled when ``stall_termination`` is
``truncation``. ``info`` holds plain Python values only (see
:meth:`DrivingEnv.step`).

Route bookkeeping is :mod:`jtd3.envs.route_tracker` (one arc length over one :class:`RoutePolyline`). Lane
features (lateral offset, heading error, off-road) come from :class:`jtd3.roads.network.RoadNetwork`, built from the
backend's OpenDRIVE text, so both backends use the same code. Frames: CARLA's (metres, x east, y south, yaw in
degrees clockwise seen from above; vehicle frame x forward, y right).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Any

import gymnasium as gym
import numpy as np

from jtd3.backends.base import ActorState, Backend, Pose, Snapshot, VehicleControl, Vehicles
from jtd3.backends.sim.world import SimWorld
from jtd3.envs import observation as obs_lib
from jtd3.envs import speed_control
from jtd3.envs import reward as reward_lib
from jtd3.envs import route_tracker
from jtd3.envs.config import EnvConfig
from jtd3.envs.viewer import LaneDrawing, birdeye_rgb, compose
from jtd3.roads.network import RoadNetwork
from jtd3.roads.routes import RouteLocation, RoutePolyline, load_reference_route, reference_spawn, route_from_plan

__all__ = ["DrivingEnv", "GroundTruth", "TERMINATION_REASONS", "make_backend", "make_env"]

TERMINATION_REASONS = ("collision", "off_route", "route_completed", "time_limit", "stalled")
"""``info["termination_reason"]`` values (``None`` while the episode runs); ``time_limit`` is a truncation (the TD
target bootstraps), ``stalled`` too with ``stall_termination: truncation``; the others are terminations."""

REFERENCE_ROUTE_MAX_OFFSET_M = 1.0
"""The reference route's waypoints must lie this close to a driving-lane centre of the loaded town (they sit
0.06 m away on average on Town01); otherwise the town is not Town01 and ``route: reference`` is refused."""


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """The world state behind the last observation (``DrivingEnv.ground_truth()``), for baselines and tests.

    Plain NumPy/Python; do not feed it to a learning agent (it is privileged information).
    """

    episode: int  # counts resets of this env (1 after the first)
    step: int  # steps since the reset
    dt: float  # seconds per step
    ego: ActorState
    vehicles: Vehicles
    route: RoutePolyline  # the episode's route (coarse waypoints + dense polyline)
    route_s: float  # arc length of the ego's foot point on the route (m)
    route_location: RouteLocation  # foot point, signed lateral offset (positive right), distance
    next_waypoint: int  # index into route.waypoints of the first waypoint ahead
    lane_offset_m: float  # signed offset from the lane centre, positive right
    lane_heading_deg: float  # ego yaw - lane yaw, wrapped to [-180, 180)
    off_road: bool  # ego centre outside every driving lane
    ahead: reward_lib.Ahead | None  # the nearest vehicle in the ego's corridor ahead (reward.ahead_* settings)
    lead: reward_lib.Ahead | None  # the vehicle ahead as the front obstacle sensor measures it (legal input)

    @property
    def forward_speed(self) -> float:
        """Velocity along the ego heading (m/s, negative in reverse)."""
        return _forward_speed(self.ego)


def make_backend(config: EnvConfig) -> Backend:
    """The backend named by ``config.backend``: ``SimWorld(config.sim)`` or ``CarlaSession(config.carla)``."""
    if config.backend == "sim":
        return SimWorld(config.sim)
    if config.backend == "carla":
        from jtd3.backends.carla.session import CarlaSession

        return CarlaSession(config.carla)
    raise ValueError(f"unknown backend {config.backend!r}; choices: 'sim', 'carla'")


def make_env(config: EnvConfig | None = None, seed: int | None = None, render_mode: str | None = None) -> "DrivingEnv":
    """A :class:`DrivingEnv` for ``config``; ``seed`` seeds the first ``reset()`` that is given no seed."""
    return DrivingEnv(EnvConfig() if config is None else config, seed=seed, render_mode=render_mode)


@functools.lru_cache(maxsize=4)
def _network_from_text(digest: str, text: str) -> RoadNetwork:
    return RoadNetwork.from_opendrive(text)


def network_of(backend: Backend) -> RoadNetwork:
    """The backend's road network: the simulator's own object, else parsed from ``backend.opendrive`` (cached)."""
    if isinstance(backend, SimWorld):
        return backend.network
    text = backend.opendrive
    return _network_from_text(hashlib.sha1(text.encode()).hexdigest(), text)


class DrivingEnv(gym.Env):
    """Gymnasium driving environment (see the module docstring). Build with :func:`make_env`.

    ``backend`` replaces the one ``config.backend`` names (tests pass a double); the env owns it and closes it.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        config: EnvConfig | None = None,
        *,
        seed: int | None = None,
        render_mode: str | None = None,
        backend: Backend | None = None,
    ) -> None:
        super().__init__()
        cfg = EnvConfig() if config is None else config
        if not isinstance(cfg, EnvConfig):
            raise TypeError(f"config must be an EnvConfig, got {type(cfg).__name__}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not supported; choices: None, 'rgb_array'")
        self.config = cfg
        self.render_mode = render_mode
        self._initial_seed = seed
        if cfg.backend == "sim":
            self.tick_dt = float(cfg.sim.dt)
            frame_shape = (cfg.sim.camera.height, cfg.sim.camera.width)
        else:
            self.tick_dt = float(cfg.carla.fixed_delta_seconds)
            frame_shape = (cfg.carla.output_height, cfg.carla.output_width)
        self.dt = self.tick_dt * cfg.action_repeat  # seconds per env step
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.num_vehicles = cfg.num_vehicles
        o = cfg.observation
        self.observation_space = gym.spaces.Dict(
            {
                "camera": gym.spaces.Box(0, 255, (o.frame_stack, *self.frame_shape), np.uint8),
                "kinematics": gym.spaces.Box(-o.clip, o.clip, (obs_lib.kinematics_size(o),), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

        self.backend: Backend = make_backend(cfg) if backend is None else backend
        if not isinstance(self.backend, Backend):
            raise TypeError(f"backend {type(self.backend).__name__} does not implement jtd3.backends.base.Backend")
        try:
            self.network = network_of(self.backend)
            self._reference = self._load_reference_route() if cfg.route == "reference" else None
        except BaseException:
            self.backend.close()
            raise
        self._lanes: LaneDrawing | None = None
        self._profile_route: RoutePolyline | None = None
        self._episode = 0
        self._done = True
        self._snapshot: Snapshot | None = None

    # -- gymnasium API -----------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode: a route (fixed, or drawn from the episode seed), the ego at its start, the
        scenario's NPCs. Reproducible: the same ``seed`` gives the same episode."""
        if options:
            raise ValueError(f"reset options are not supported, got {sorted(options)}")
        if seed is None and self._initial_seed is not None:
            seed = self._initial_seed
        self._initial_seed = None
        super().reset(seed=seed)
        world_seed, route_seed = (int(v) for v in self.np_random.integers(0, 2**31 - 1, size=2))
        cfg = self.config
        self.route = self._reference if self._reference is not None else self._random_route(route_seed)
        spawn = reference_spawn(self.route)
        if cfg.route_start == "random":
            s0 = self.np_random.uniform(0.0, max(self.route.length - cfg.route_start_margin_m, 0.0))
            x, y, yaw = self.route.point_at(s0)
            spawn = Pose(float(x), float(y), float(yaw))
        if isinstance(self.backend, SimWorld):
            self.backend.set_route(self.route.points)  # drawn in the bird's-eye camera
        snap = self.backend.reset(spawn, self.num_vehicles, world_seed)
        self._check_frame(snap)
        self._episode += 1
        self._steps = 0
        self._pid = speed_control.PidState()
        self._standing_s = 0.0
        self._done = False
        self._collisions = 0
        self._invasions = 0
        self._distance = 0.0
        self._waypoints_passed = 0
        self._return = 0.0
        if self.route is not self._profile_route:  # the target speed along this route, every 0.5 m
            grid = np.arange(0.0, self.route.length + 0.5, 0.5)
            self._profile_s = grid
            yaw = self.route.point_at(grid)[2]
            self._profile_v = reward_lib.target_speed_profile(grid, yaw, cfg.reward)
            sc = cfg.speed_control
            self._curve_cap_v = reward_lib.curve_speed_profile(
                grid, yaw, sc.max_speed_kmh / 3.6, sc.curve_lateral_accel, sc.curve_decel)
            self._profile_route = self.route
        track = route_tracker.start(self.route, float(snap.ego.location[0]), float(snap.ego.location[1]))
        self._track = track
        self._start_s = min(float(track.state.s), self.route.length - 1e-6)
        self._prev_accel = np.asarray(snap.ego.acceleration[:2], dtype=np.float64)
        self._prev_speed = snap.ego.speed
        self._stack = obs_lib.repeat_frame(snap.camera, cfg.observation.frame_stack)
        self._update_state(snap, track)
        self._last_components = {k: 0.0 for k in reward_lib.COMPONENTS}
        info = self._info(None, self._last_components)
        return self._observation(), info

    def step(self, action):
        """Apply ``action`` for one step (``action_repeat`` simulator ticks). ``info``: termination_reason (None or
        one of :data:`TERMINATION_REASONS`), success, speed_kmh, collisions, lane_invasions (episode counts),
        distance_m (travelled), route_completion (0..1), reward_components (weighted, summed over the step's
        ticks; they sum to the reward), episode_return, plus route_s, route_length_m, route_lateral_m,
        lane_offset_m, heading_error_deg, off_road, next_waypoint, waypoints_passed, step."""
        if self._done:
            raise RuntimeError("the episode has ended (terminated or truncated): call reset() before step()")
        cfg = self.config
        control = VehicleControl.from_action(action)
        self._steps += 1
        weighted = dict.fromkeys(reward_lib.COMPONENTS, 0.0)
        reason = None
        for i in range(cfg.action_repeat):
            if cfg.longitudinal_action == "target_speed":
                control = self._speed_control(control)
            # only the step's last frame enters the observation: earlier ticks need not render one
            reason, tick = self._tick(control, camera=i == cfg.action_repeat - 1)
            for k, v in tick.items():
                weighted[k] += v
            if reason is not None:
                break
        if reason is None and self._steps >= cfg.max_episode_steps:
            reason = "time_limit"
        stall_fails = cfg.stall_termination == "failure"
        terminated = reason in ("collision", "off_route", "route_completed") or (reason == "stalled" and stall_fails)
        truncated = reason == "time_limit" or (reason == "stalled" and not stall_fails)
        if self._snapshot.camera is None:  # the episode ended before the step's last tick
            self._snapshot = dataclasses.replace(self._snapshot, camera=self.backend.camera())
            self._check_frame(self._snapshot)
        self._stack = obs_lib.push_frame(self._stack, self._snapshot.camera)
        reward = reward_lib.total(weighted)
        self._return += reward
        self._last_components = weighted
        self._done = terminated or truncated
        return self._observation(), reward, terminated, truncated, self._info(reason, weighted)

    def _speed_control(self, action_control: VehicleControl) -> VehicleControl:
        """Pedals that track the target speed the action sets (``longitudinal_action: target_speed``):
        action[1] in [-1, 1] (here as throttle - brake) -> 0 .. ``speed_control.max_speed_kmh``; with
        ``speed_control.follow`` at most the speed that can still stop behind the vehicle ahead; with
        ``speed_control.curve_lateral_accel`` at most the route's curve speed here."""
        sc = self.config.speed_control
        action = action_control.throttle - action_control.brake
        v_target = 0.5 * (action + 1.0) * sc.max_speed_kmh / 3.6
        if sc.curve_lateral_accel > 0:
            v_target = min(v_target, float(np.interp(self._track.state.s, self._profile_s, self._curve_cap_v)))
        if sc.follow:
            ahead = self._state.lead
            law = {"min_gap_m": sc.follow_min_gap_m, "headway_s": sc.follow_headway_s, "decel": sc.follow_decel}
            if ahead is not None:
                lead_speed = ahead.ego_speed - ahead.closing_speed
                v_target = min(v_target, speed_control.following_speed(ahead.gap_m, lead_speed, **law))
        throttle, brake, self._pid = speed_control.pedals_for_speed(
            v_target, self._state.forward_speed, self._pid, self.tick_dt, kp=sc.kp, ki=sc.ki,
            brake_gain=sc.brake_gain, brake_deadband=sc.brake_deadband_kmh / 3.6,
        )
        return VehicleControl(throttle=throttle, steer=action_control.steer, brake=brake)

    def _tick(self, control: VehicleControl, camera: bool) -> tuple[str | None, dict[str, float]]:
        """One simulator tick: advance the backend, the route tracking and the counters; returns the
        termination reason (None, ``collision``, ``off_route``, ``route_completed``) and the weighted reward.
        ``camera``: whether this tick's frame is needed (the backend may skip it otherwise)."""
        cfg = self.config
        prev_loc = np.asarray(self._snapshot.ego.location[:2], dtype=np.float64)
        snap = self.backend.step(control, camera=camera)
        if snap.camera is not None:
            self._check_frame(snap)
        ego = snap.ego
        x, y = float(ego.location[0]), float(ego.location[1])
        track = route_tracker.advance(self.route, self._track.state, x, y, cfg.route_search_window_m)
        self._track = track
        self._update_state(snap, track)
        self._distance += float(np.hypot(x - prev_loc[0], y - prev_loc[1]))
        collided = len(snap.collisions) > 0
        self._collisions += len(snap.collisions)
        self._invasions += len(snap.lane_invasions)
        self._waypoints_passed += track.waypoints_passed

        off_route = track.location.distance > cfg.off_route_distance_m
        completed = track.remaining_m <= cfg.goal_tolerance_m
        if collided:
            reason = "collision"
        elif off_route:
            reason = "off_route"
        elif completed:
            reason = "route_completed"
        else:
            reason = None

        accel = np.asarray(ego.acceleration[:2], dtype=np.float64)
        jerk = float(np.hypot(*(accel - self._prev_accel))) / self.tick_dt
        self._prev_accel = accel
        route_yaw = track.location.yaw
        inputs = reward_lib.RewardInputs(
            progress_m=track.progress_m,
            waypoints_passed=track.waypoints_passed,
            goal_reached=reason == "route_completed",
            speed_along_route=float(ego.velocity[0] * math.cos(math.radians(route_yaw))
                                    + ego.velocity[1] * math.sin(math.radians(route_yaw))),
            speed=ego.speed,
            route_lateral_m=track.location.lateral_offset,
            route_heading_deg=obs_lib.wrap_deg(ego.yaw - route_yaw),
            jerk=jerk,
            collided=collided,
            impact_speed=max(ego.speed, self._prev_speed),
            off_road=self._state.off_road,
            off_route=reason == "off_route",
            lane_invasions=len(snap.lane_invasions),
            ahead=self._state.ahead,
            target_speed=float(np.interp(track.state.s, self._profile_s, self._profile_v)),
        )
        self._prev_speed = ego.speed
        self._standing_s = self._standing_s + self.tick_dt if reward_lib.is_standing(inputs, cfg.reward) else 0.0
        if reason is None and cfg.stall_timeout_s > 0 and self._standing_s >= cfg.stall_timeout_s - 1e-9:
            reason = "stalled"
            inputs = dataclasses.replace(inputs, stalled=cfg.stall_termination == "failure")
        return reason, reward_lib.components(inputs, cfg.reward)

    def render(self):
        """``rgb_array``: the newest camera frame beside a bird's-eye view, with a status line (uint8 RGB)."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None: make the env with render_mode='rgb_array'")
            return None
        if self._snapshot is None:
            raise RuntimeError("call reset() before render()")
        if self._lanes is None:
            self._lanes = LaneDrawing(self.network)
        st = self._state
        wps = route_tracker.upcoming_waypoints(self.route, st.next_waypoint, self.config.observation.n_waypoints)
        bev = birdeye_rgb(self._lanes, st.ego, st.vehicles, self.route.points, wps)
        c = self._last_components
        lines = [
            f"step {st.step}  {st.ego.speed * 3.6:5.1f} km/h  s {st.route_s:6.1f}/{self.route.length:.0f} m  "
            f"wp {st.next_waypoint}",
            f"r {reward_lib.total(c):+.3f}  return {self._return:+.1f}  lat {st.route_location.lateral_offset:+.2f} m",
        ]
        return compose(self._snapshot.camera, bev, lines)

    def close(self) -> None:
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()
        super().close()

    # -- accessors -------------------------------------------------------------------------------------

    def ground_truth(self) -> GroundTruth:
        """The world state behind the last observation (privileged: for baselines, evaluation and tests)."""
        if self._snapshot is None:
            raise RuntimeError("call reset() before ground_truth()")
        return self._state

    # -- internals -------------------------------------------------------------------------------------

    def _load_reference_route(self) -> RoutePolyline:
        route = load_reference_route()
        b = self.network.project_many(route.waypoints)
        worst = float(np.max(b.distance))
        if worst > REFERENCE_ROUTE_MAX_OFFSET_M:
            raise ValueError(
                f"route 'reference' is the Town01 route of the original experiment, but its waypoints lie up to "
                f"{worst:.1f} m from the loaded town's driving lanes (town {self.network.name!r}); use a Town01 "
                f"backend (sim.town: town01 / carla.town: Town01) or route: random"
            )
        return route

    def _random_route(self, seed: int) -> RoutePolyline:
        cfg = self.config
        planned = self.network.random_route(
            np.random.default_rng(seed), cfg.route_min_length_m, cfg.route_max_length_m,
            spacing=cfg.route_waypoint_spacing_m,
        )
        return route_from_plan(planned)

    def _check_frame(self, snap: Snapshot) -> None:
        cam = np.asarray(snap.camera)
        if cam.dtype != np.uint8 or cam.shape != self.frame_shape:
            raise ValueError(
                f"backend camera frame is {cam.dtype} {cam.shape}, the observation space expects uint8 "
                f"{self.frame_shape} (sim.camera.height/width or carla.output_height/width)"
            )

    def _update_state(self, snap: Snapshot, track: route_tracker.RouteStep) -> None:
        ego = snap.ego
        x, y = float(ego.location[0]), float(ego.location[1])
        lane = self.network.project_many(np.array([[x, y]]), np.array([ego.yaw]))
        # Inside the lane of its own direction is on the road; otherwise ask the nearest lane (a second query).
        off_road = not (bool(lane.inside[0]) or bool(self.network.on_lane_many(np.array([[x, y]]))[0]))
        self._snapshot = snap
        self._state = GroundTruth(
            episode=self._episode,
            step=self._steps,
            dt=self.dt,
            ego=ego,
            vehicles=snap.vehicles,
            route=self.route,
            route_s=track.state.s,
            route_location=track.location,
            next_waypoint=track.next_waypoint,
            lane_offset_m=float(lane.lateral_offset[0]),
            lane_heading_deg=obs_lib.wrap_deg(ego.yaw - float(lane.yaw[0])),
            off_road=off_road,
            ahead=reward_lib.vehicle_ahead(ego, snap.vehicles, self.config.reward),
            lead=reward_lib.sensed_ahead(ego, snap.obstacle),
        )

    def _observation(self) -> dict[str, np.ndarray]:
        st = self._state
        o = self.config.observation
        ahead = st.lead if o.lead_vehicle else None
        kin = obs_lib.kinematics_vector(
            o,
            x=float(st.ego.location[0]),
            y=float(st.ego.location[1]),
            yaw_deg=st.ego.yaw,
            forward_speed=st.forward_speed,
            waypoints=route_tracker.upcoming_waypoints(self.route, st.next_waypoint, o.n_waypoints),
            lane_offset_m=st.lane_offset_m,
            lane_heading_deg=st.lane_heading_deg,
            lead_gap_m=None if ahead is None else ahead.gap_m,
            lead_closing_speed=0.0 if ahead is None else ahead.closing_speed,
        )
        return {"camera": self._stack.copy(), "kinematics": kin}

    def _info(self, reason: str | None, weighted: dict[str, float]) -> dict[str, Any]:
        st = self._state
        success = reason == "route_completed"
        s0 = self._start_s  # the share of the route ahead of the start that was driven
        completion = 1.0 if success else min(max((self._track.state.s_max - s0) / (self.route.length - s0), 0.0), 1.0)
        return {
            "termination_reason": reason,
            "success": success,
            "speed_kmh": float(st.ego.speed * 3.6),
            "collisions": int(self._collisions),
            "lane_invasions": int(self._invasions),
            "distance_m": float(self._distance),
            "route_completion": float(completion),
            "reward_components": dict(weighted),
            "episode_return": float(self._return),
            "route_s": float(st.route_s),
            "route_length_m": float(self.route.length),
            "route_lateral_m": float(st.route_location.lateral_offset),
            "lane_offset_m": float(st.lane_offset_m),
            "heading_error_deg": float(st.lane_heading_deg),
            "off_road": bool(st.off_road),
            "next_waypoint": int(st.next_waypoint),
            "waypoints_passed": int(self._waypoints_passed),
            "step": int(self._steps),
        }


def _forward_speed(ego: ActorState) -> float:
    r = math.radians(ego.yaw)
    return float(ego.velocity[0] * math.cos(r) + ego.velocity[1] * math.sin(r))
