"""The loop's bookkeeping: episode and evaluation seeds, the evaluation summary, means of update metrics."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from jtd3.agent.learn import is_actor_metric, metric_reduction

__all__ = ["MetricWindow", "episode_seed", "eval_seed", "eval_summary", "json_floats", "new_episode_stats"]


def new_episode_stats() -> dict[str, Any]:
    """A training episode's running sums, logged as ``train/*`` and ``rewards/*`` when it ends."""
    return {"return": 0.0, "length": 0, "speed_sum": 0.0, "components": defaultdict(float)}


def episode_seed(seed: int, episode: int) -> int:
    """Reset seed of training episode ``episode`` (independent streams per (seed, episode))."""
    return int(np.random.SeedSequence([seed, 0, episode]).generate_state(1)[0])


def eval_seed(seed: int) -> int:
    """Reset seed of the first evaluation episode (episode i uses it + i): the same at every evaluation."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0] % (2**31 - 1_000_000))


def eval_summary(report: Any) -> dict[str, float]:
    """The scalars of an evaluation report logged as ``eval/*`` (NaN where undefined, e.g. per km after 0 km)."""
    nan = float("nan")
    return {
        "success_rate": report.success_rate,
        "route_completion": report.route_completion_mean,
        "return_mean": report.return_mean,
        "return_std": report.return_std,
        "discounted_return_mean": report.discounted_return_mean,
        "collisions_per_km": nan if report.collisions_per_km is None else report.collisions_per_km,
        "lane_invasions_per_km": nan if report.lane_invasions_per_km is None else report.lane_invasions_per_km,
        "avg_speed_kmh": report.avg_speed_kmh,
        "episode_length": report.episode_length_mean,
        "distance_km": report.distance_km,
    }


def json_floats(d: dict[str, float] | None) -> dict[str, float | None] | None:
    """Standard JSON has no NaN: undefined values become null."""
    return None if d is None else {k: (v if math.isfinite(v) else None) for k, v in d.items()}


class MetricWindow:
    """Update metrics reduced between two TensorBoard writes (``jtd3.agent.learn.metric_reduction``: ``*_max``
    keys keep the max, ``*_min`` the min, the others the mean).

    Actor metrics exist on policy steps only (0.0 on the others): they are averaged over the update calls
    that made actor updates, weighted by ``losses/actor_updates``.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.extremes: dict[str, float] = {}
        self.count = 0
        self.actor_weight = 0.0

    def add(self, metrics: dict[str, float]) -> None:
        self.count += 1
        actor_updates = metrics.get("losses/actor_updates", 1.0)
        self.actor_weight += actor_updates
        for k, v in metrics.items():
            actor = is_actor_metric(k)
            if actor and actor_updates == 0:
                continue
            how = metric_reduction(k)
            if how == "max":
                self.extremes[k] = max(self.extremes.get(k, -math.inf), v)
            elif how == "min":
                self.extremes[k] = min(self.extremes.get(k, math.inf), v)
            else:
                self.sums[k] += v * actor_updates if actor else v

    def means(self) -> dict[str, float]:
        out = {k: v / (self.actor_weight if is_actor_metric(k) else self.count) for k, v in self.sums.items()}
        out.update(self.extremes)
        return out
