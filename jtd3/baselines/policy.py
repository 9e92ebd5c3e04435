"""Policies on :class:`jtd3.envs.DrivingEnv`: ``policy(obs) -> action`` callables (action ``[steer,
throttle_brake]`` float32 in [-1, 1]).

- :class:`PurePursuitPolicy`: PID speed control + pure-pursuit steering (``jtd3.baselines.pure_pursuit``) on the
  episode's route. It reads the env's privileged state through ``env.ground_truth()`` (ego pose and speed, the
  route, the step length) and rebuilds its controller when a new episode starts (``GroundTruth.episode``).
- :class:`RandomPolicy`: uniform actions (seeded), :class:`ConstantPolicy`: one fixed action (e.g. standing
  still with the brake held, or driving off the road with a constant steer).

These are the reference points of the reward design (docs/env.md, "Measured returns").
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jtd3.baselines.pure_pursuit import PurePursuit, PurePursuitParams
from jtd3.config import ConfigNode, check, param

__all__ = ["ConstantPolicy", "PRESET_ACTIONS", "PurePursuitConfig", "PurePursuitPolicy", "RandomPolicy"]

PRESET_ACTIONS = {
    "still": (0.0, -1.0),  # brake held: the car stands at its spawn
    "offroad": (0.35, 0.6),  # constant right steer with throttle: leaves the road within a few seconds
}


@dataclasses.dataclass(frozen=True)
class PurePursuitConfig(ConfigNode):
    """The classical baseline's settings. The original project used lookahead 6 m + 0.8 s * speed; on Town01 that
    cuts the reference route's right turn by 1.3-1.6 m and leaves the road (docs/env.md), so 4 m + 0.6 s is the default."""

    target_speed_kmh: float = param(30.0, "cruise speed (km/h); the controller slows for curves and the route end")
    lookahead_min_m: float = param(4.0, "minimum lookahead distance (m)")
    lookahead_gain_s: float = param(0.6, "lookahead = lookahead_min_m + lookahead_gain_s * speed (s)")
    follow_standstill_m: float = param(
        7.0, "stop this far (arc length from the ego centre) before the first route point another vehicle's centre "
        "is within 2.2 m of; the controller's own 4 m rear-ends slow vehicles (docs/env.md)"
    )
    wheelbase_m: float | None = param(
        None, "wheelbase of the bicycle model (m); None: sim.vehicle.wheelbase (sim backend; required for carla)"
    )
    max_steer_deg: float | None = param(
        None, "front wheel angle at steer = 1 (degrees); None: sim.vehicle.max_steer (sim backend; required for carla)"
    )

    def __post_init__(self) -> None:
        check(self.target_speed_kmh > 0, "target_speed_kmh", self.target_speed_kmh, "> 0")
        check(self.lookahead_min_m > 0, "lookahead_min_m", self.lookahead_min_m, "> 0")
        check(self.lookahead_gain_s >= 0, "lookahead_gain_s", self.lookahead_gain_s, ">= 0")
        check(self.follow_standstill_m >= 0, "follow_standstill_m", self.follow_standstill_m, ">= 0")
        check(self.wheelbase_m is None or self.wheelbase_m > 0, "wheelbase_m", self.wheelbase_m, "> 0 or null")
        check(self.max_steer_deg is None or 0 < self.max_steer_deg < 90, "max_steer_deg", self.max_steer_deg,
              "in (0, 90) or null")


class PurePursuitPolicy:
    """PID + pure pursuit on ``env``'s route, as a policy ``obs -> action`` (ignores ``obs``; reads
    ``env.ground_truth()``: ego pose and forward speed, route waypoints, step length, and the other vehicles'
    positions, for which the controller stops on the route ahead). Works with a ``DrivingEnv`` or a gymnasium
    wrapper around one."""

    def __init__(self, env, config: PurePursuitConfig | None = None) -> None:
        self.env = env.unwrapped
        cfg = PurePursuitConfig() if config is None else config
        env_cfg = self.env.config
        if env_cfg.backend == "sim":
            wheelbase = env_cfg.sim.vehicle.wheelbase if cfg.wheelbase_m is None else cfg.wheelbase_m
            max_steer = env_cfg.sim.vehicle.max_steer if cfg.max_steer_deg is None else cfg.max_steer_deg
        else:
            if cfg.wheelbase_m is None or cfg.max_steer_deg is None:
                raise ValueError(
                    f"PurePursuitConfig.wheelbase_m and max_steer_deg must be set on the {env_cfg.backend!r} "
                    f"backend (got {cfg.wheelbase_m!r}, {cfg.max_steer_deg!r}): they come from sim.vehicle only "
                    f"on the 'sim' backend"
                )
            wheelbase, max_steer = cfg.wheelbase_m, cfg.max_steer_deg
        self.params = PurePursuitParams(
            wheelbase=float(wheelbase),
            max_steer=float(max_steer),
            lookahead_min=cfg.lookahead_min_m,
            lookahead_gain=cfg.lookahead_gain_s,
            target_speed=cfg.target_speed_kmh / 3.6,
            follow_standstill=cfg.follow_standstill_m,
        )
        self._controller: PurePursuit | None = None
        self._episode = -1

    def __call__(self, obs) -> np.ndarray:
        gt = self.env.ground_truth()
        if gt.episode != self._episode:
            self._controller = PurePursuit(gt.route.waypoints, self.params)
            self._episode = gt.episode
        ego = gt.ego
        action = self._controller.action(float(ego.location[0]), float(ego.location[1]), ego.yaw, gt.forward_speed,
                                         gt.dt, gt.vehicles.location[:, :2])
        env_cfg = self.env.config
        if env_cfg.longitudinal_action == "target_speed":  # the env tracks the speed itself: send the set-point
            v_max = env_cfg.speed_control.max_speed_kmh / 3.6
            action[1] = np.clip(2.0 * self._controller.last_speed_target / v_max - 1.0, -1.0, 1.0)
        return action


class RandomPolicy:
    """Uniform random actions in [-1, 1]^2 from its own seeded generator."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=2).astype(np.float32)


class ConstantPolicy:
    """Always the same action ``[steer, throttle_brake]`` (see :data:`PRESET_ACTIONS`)."""

    def __init__(self, action: tuple[float, float]) -> None:
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (2,) or not np.all(np.isfinite(a)) or np.any(np.abs(a) > 1.0):
            raise ValueError(f"action must be [steer, throttle_brake] in [-1, 1], got {action!r}")
        self.action = a

    def __call__(self, obs) -> np.ndarray:
        return self.action.copy()
