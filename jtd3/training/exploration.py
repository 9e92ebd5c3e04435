"""Exploration for the actor loop: the warm-up policy and the Gaussian noise schedule (linear or exponential).

The original project warmed up with uniform random ``throttle_brake`` in [-1, 1]: half of the time it brakes,
and the car barely moved (its replay held almost no driving). :class:`RandomDrivingPolicy` instead drives:
throttle most of the time, occasional braking, and a slowly varying steering angle (an Ornstein-Uhlenbeck
process) so that the car sweeps across its lane and leaves it sometimes, which is the data TD3 needs to learn
what the lane edges cost. The training loop measures and logs the mean speed reached during warm-up
(``charts/warmup_mean_speed_kmh``).

All randomness comes from a NumPy ``Generator`` owned by the loop (its state is checkpointed).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jtd3.config import ConfigNode, check, choice, param

__all__ = ["ExplorationConfig", "RandomDrivingPolicy", "noise_scale"]


@dataclasses.dataclass(frozen=True)
class ExplorationConfig(ConfigNode):
    """Warm-up policy and exploration noise (YAML section ``train.exploration``)."""

    warmup_policy: str = choice(
        "random",
        ("random", "uniform"),
        "policy for the first learning_starts steps: 'random' drives (throttle-biased, smooth random steering); "
        "'uniform' is the original's U(-1, 1)^2 (kept to measure how little it moves the car)",
    )
    warmup_throttle: tuple[float, float] = param(
        (0.2, 1.0), "range of the uniform throttle (throttle_brake > 0) the 'random' warm-up draws"
    )
    warmup_brake_probability: float = param(0.1, "probability that a 'random' warm-up step brakes instead")
    warmup_steer_sigma: float = param(0.3, "stationary std of the warm-up steering OU process ([-1, 1] units)")
    warmup_steer_theta: float = param(0.15, "mean-reversion rate per step of the warm-up steering OU process")
    noise_start: float = param(0.1, "std of the Gaussian action noise when learning starts ([-1, 1] units)")
    noise_end: float = param(
        0.1, "std of the Gaussian action noise after the decay (linear) or its limit (exponential)"
    )
    noise_schedule: str = choice(
        "linear",
        ("linear", "exponential"),
        "linear: noise_start -> noise_end over noise_decay_steps; exponential: noise_end + (noise_start - noise_end) "
        "* exp(-t / noise_decay_steps), t = env steps since learning_starts (the original's "
        "0.1 + 0.2 exp(-(step - 10000) / 4000))",
    )
    noise_decay_steps: int = param(
        0, "env steps after learning_starts over which the std decays (linear) or its time constant "
        "(exponential); 0: constant noise_start"
    )

    def __post_init__(self):
        lo, hi = self.warmup_throttle
        check(0.0 <= lo <= hi <= 1.0, "train.exploration.warmup_throttle", self.warmup_throttle, "0 <= low <= high <= 1")
        check(0.0 <= self.warmup_brake_probability <= 1.0, "train.exploration.warmup_brake_probability",
              self.warmup_brake_probability, "in [0, 1]")
        check(self.warmup_steer_sigma >= 0.0, "train.exploration.warmup_steer_sigma", self.warmup_steer_sigma, ">= 0")
        check(0.0 < self.warmup_steer_theta <= 1.0, "train.exploration.warmup_steer_theta", self.warmup_steer_theta,
              "in (0, 1]")
        check(self.noise_start >= 0.0, "train.exploration.noise_start", self.noise_start, ">= 0")
        check(self.noise_end >= 0.0, "train.exploration.noise_end", self.noise_end, ">= 0")
        check(self.noise_schedule in ("linear", "exponential"), "train.exploration.noise_schedule",
              self.noise_schedule, "one of 'linear', 'exponential'")
        check(self.noise_decay_steps >= 0, "train.exploration.noise_decay_steps", self.noise_decay_steps, ">= 0")


def noise_scale(config: ExplorationConfig, steps_since_learning_starts: int) -> float:
    """Std of the Gaussian exploration noise ``t = steps_since_learning_starts`` env steps after learning starts.

    ``linear``: ``noise_start`` -> ``noise_end`` over ``noise_decay_steps``, then ``noise_end``;
    ``exponential``: ``noise_end + (noise_start - noise_end) * exp(-t / noise_decay_steps)``.
    ``noise_decay_steps = 0``: always ``noise_start``.
    """
    schedule, decay = config.noise_schedule, config.noise_decay_steps
    start, end = config.noise_start, config.noise_end
    if decay == 0:
        return start
    t = max(steps_since_learning_starts, 0)
    if schedule == "exponential":
        return end + (start - end) * math.exp(-t / decay)
    frac = min(t / decay, 1.0)
    return start + frac * (end - start)


class RandomDrivingPolicy:
    """Warm-up policy producing ``[steer, throttle_brake]`` actions that move the car.

    The steering is an Ornstein-Uhlenbeck process ``s <- s - theta * s + sigma * sqrt(2 theta - theta^2) * N(0, 1)``
    (stationary std ``sigma``), reset to 0 at each episode start. ``throttle_brake`` is uniform in
    ``warmup_throttle`` or, with probability ``warmup_brake_probability``, uniform in [-1, 0).
    With ``warmup_policy = 'uniform'`` both components are U(-1, 1), the original project's warm-up.
    """

    def __init__(self, config: ExplorationConfig):
        self.config = config
        self.steer = 0.0

    def reset(self) -> None:
        self.steer = 0.0

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        if cfg.warmup_policy == "uniform":
            return rng.uniform(-1.0, 1.0, size=2).astype(np.float32)
        theta, sigma = cfg.warmup_steer_theta, cfg.warmup_steer_sigma
        self.steer += -theta * self.steer + sigma * np.sqrt(2.0 * theta - theta * theta) * rng.standard_normal()
        self.steer = float(np.clip(self.steer, -1.0, 1.0))
        if rng.random() < cfg.warmup_brake_probability:
            tb = -rng.random()
        else:
            lo, hi = cfg.warmup_throttle
            tb = rng.uniform(lo, hi)
        return np.array([self.steer, tb], dtype=np.float32)

    def state_dict(self) -> dict:
        return {"steer": self.steer}

    def load_state_dict(self, state: dict) -> None:
        self.steer = float(state["steer"])
