"""The seed's validation criteria, quoted, as checks on one run's measurement (:func:`jtd3.validate.measure`).

Each :class:`Criterion` holds the seed's words and threshold, how jtd3 measures it, and, where the criterion
cannot decide what it is meant to decide, why (``ill_posed``); :data:`INFO` are the informative values the report
shows beside the verdicts (what exploded). :func:`evaluate_criteria` applies the criteria of one stage.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["ALL", "CRITERIA", "GRAD_PREFIX", "INFO", "LONG", "Criterion", "evaluate_criteria", "fmt"]

GRAD_PREFIX = "grad_norm/"
"""The TensorBoard tags of the pre-clipping gradient norms (one per optimiser and part)."""


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _window_mean(values: Sequence[float], first: bool, frac: float = 0.25) -> float:
    """Mean of the first (or last) ``frac`` of ``values`` (at least one value); NaN when empty."""
    if not values:
        return math.nan
    k = max(1, int(round(len(values) * frac)))
    part = values[:k] if first else values[-k:]
    return float(np.mean(part))


@dataclasses.dataclass(frozen=True)
class Criterion:
    """One of the seed's criteria: ``check(measurement) -> (measured text, passed or None = not measurable)``."""

    key: str
    stages: tuple[str, ...]
    text: str
    """The seed's words."""
    threshold: str
    """The seed's threshold, and how we measure it."""
    check: Callable[[dict[str, Any]], tuple[str, bool | None]]
    ill_posed: str = ""
    """Why the criterion cannot decide what it is meant to decide (empty when it can)."""


def _vals(m: dict[str, Any], name: str) -> list[float]:
    return [v for _, v in m["series"][name]]


def fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if abs(x) < 1e5 else f"{x:.2e}"


def _encoders(m: dict[str, Any]) -> list[str]:
    return ["critic"] + (["actor"] if m["series"]["actor_l2"] else [])


def _max_over_encoders(m: dict[str, Any], stat: str, absolute: bool = False) -> tuple[str, float]:
    """``("critic x, actor y", worst)``: the max over the run per encoder (inf if a value was not finite;
    NaN when nothing was logged)."""
    parts, per_encoder = [], []
    for enc in _encoders(m):
        vals = _vals(m, f"{enc}_{stat}")
        if any(not math.isfinite(x) for x in vals):
            v = math.inf
        else:
            v = max((abs(x) if absolute else x for x in vals), default=math.nan)
        parts.append(f"{enc} {fmt(v)}")
        per_encoder.append(v)
    worst = math.nan if any(math.isnan(v) for v in per_encoder) else max(per_encoder)
    return ", ".join(parts), worst


def _bounded(stat: str, bound: float, absolute: bool = False, prefix: str = ""):
    def check(m: dict[str, Any]) -> tuple[str, bool | None]:
        text, worst = _max_over_encoders(m, stat, absolute)
        return prefix + text, (None if math.isnan(worst) else bool(worst < bound))

    return check


def _no_nan(m: dict[str, Any]) -> tuple[str, bool | None]:
    bad = sorted(set(m["nonfinite_tags"]) | set(m["alarms"]))
    return ("none" if not bad else ", ".join(bad)), not bad


def _below_and_decreasing(name: str, bound: float) -> Callable[[dict[str, Any]], tuple[str, bool | None]]:
    def check(m: dict[str, Any]) -> tuple[str, bool | None]:
        vals = _vals(m, name)
        if len(vals) < 2:
            return "n/a (too few points)", None
        first, last = _window_mean(vals, True), _window_mean(vals, False)
        return f"{fmt(first)} -> {fmt(last)}", bool(last < bound and last < first)

    return check


def _actor_loss_range(m: dict[str, Any]) -> tuple[str, bool | None]:
    vals = _vals(m, "actor_loss")
    if not vals:
        return "n/a", None
    last, low = _window_mean(vals, False), min(vals)
    return f"end {fmt(last)} (min {fmt(low)})", bool(-1e4 <= last <= -1e3 and low >= -1e4)


def _actor_q_on_critic_scale(m: dict[str, Any]) -> tuple[str, bool | None]:
    aq, cq = _vals(m, "actor_q"), _vals(m, "critic_q")
    if not aq or not cq:
        return "n/a", None
    a = max(abs(v) for v in aq)
    c = max(max(abs(v) for v in cq), 1.0)
    return f"max abs actor-side {fmt(a)} vs critic-side {fmt(c)}", bool(a <= 10.0 * c)


def _rewards_improving(frac: float) -> Callable[[dict[str, Any]], tuple[str, bool | None]]:
    def check(m: dict[str, Any]) -> tuple[str, bool | None]:
        r = m["learned_episode_rewards"]
        if len(r) < 4:
            return f"n/a ({len(r)} episodes after learning starts)", None
        first, last = _window_mean(r, True, frac), _window_mean(r, False, frac)
        return f"{fmt(first)} -> {fmt(last)} ({len(r)} episodes)", bool(last > first)

    return check


def _no_grad_explosion(m: dict[str, Any]) -> tuple[str, bool | None]:
    parts, ok = [], True
    for tag, vals in sorted(m["grad_norms"].items()):
        if not vals:
            continue
        fin = _finite(vals)
        first = next((v for v in vals if v > 0), math.nan)
        peak = max(vals) if len(fin) == len(vals) else math.inf
        growth = peak / first if first > 0 else math.nan
        ok = ok and math.isfinite(peak) and (not math.isfinite(growth) or growth < 100.0)
        parts.append(f"{tag.removeprefix(GRAD_PREFIX)} x{fmt(growth)}")
    return ("; ".join(parts) or "n/a"), (ok if parts else None)


def _critic_loss_converging(m: dict[str, Any]) -> tuple[str, bool | None]:
    vals = _vals(m, "critic_loss")
    if len(vals) < 8:
        return "n/a (too few points)", None
    q = max(1, len(vals) // 4)
    prev, last = float(np.mean(vals[-2 * q:-q])), float(np.mean(vals[-q:]))
    change = abs(last - prev) / max(abs(prev), 1e-12)
    return f"last quarter {fmt(last)} vs previous {fmt(prev)} ({change:.0%})", bool(change < 0.25)


def _td_error_end(m: dict[str, Any]) -> tuple[str, bool | None]:
    vals = _vals(m, "td_error")
    if not vals:
        return "n/a", None
    last = _window_mean(vals, False, 0.1)
    return fmt(last), bool(last < 1.0)


def _eval_success(m: dict[str, Any]) -> tuple[str, bool | None]:
    if not m["evals"]:
        return "n/a (no evaluation)", None
    final = m["evals"][-1]
    best = max(e["success_rate"] for e in m["evals"])
    return f"final {final['success_rate']:.2f} (best {best:.2f})", bool(final["success_rate"] > 0.5)


ALL = ("smoke", "5k", "50k")
LONG = ("5k", "50k")
CRITERIA: tuple[Criterion, ...] = (
    Criterion("cnn_l2", ("smoke",), "CNN L2 < 100", "< 100 (per-sample L2, batch max, both encoders, whole run)",
              _bounded("l2_max", 100.0)),
    Criterion("feature_mean", ("smoke",), "mean within +-10", "abs(feature mean) <= 10 (both encoders, whole run)",
              _bounded("mean", 10.0 + 1e-9, absolute=True, prefix="abs(mean) ")),
    Criterion("feature_std", ("smoke",), "std < 50", "< 50 (both encoders, whole run)", _bounded("std", 50.0)),
    Criterion("no_nan", ALL, "no NaN", "no NaN/Inf in any logged scalar, no NaN alarm", _no_nan),
    Criterion("feature_l2", LONG, "feature L2 < 100 throughout",
              "< 100 (per-sample L2, batch max, both encoders, every logged window)", _bounded("l2_max", 100.0)),
    Criterion("critic_loss", LONG, "critic loss < 100 and decreasing",
              "last quarter < 100 and below the first quarter", _below_and_decreasing("critic_loss", 100.0),
              ill_posed="a TD critic's loss does not have to decrease: at the first updates Q ~ 0 and the targets "
                        "are small, then the loss grows with the Q values it learns (its scale is the reward's); a "
                        "falling loss can also mean a collapsing critic"),
    Criterion("actor_loss", LONG, "actor loss within -1e3..-1e4 rather than -5.9e12",
              "-1e4 <= actor loss <= -1e3 at the end, never below -1e4", _actor_loss_range,
              ill_posed="the actor loss is -Q, and Q's scale is the discounted return's: with jtd3's reward (order "
                        "1 per step, up to ~1/(1-gamma) = 100 per step of discounted horizon, negative on "
                        "collisions) a healthy agent's loss lies far inside -1e3; the range says nothing about "
                        "health. The well-posed question is the next row: does the Q the actor maximises stay on "
                        "the scale of the Q the critic fits?"),
    Criterion("actor_q_scale", LONG, "(well-posed replacement) actor-side Q on the critic-side Q's scale",
              "max abs(actor-side Q) <= 10 x max(max abs(critic-side Q), 1) over the run", _actor_q_on_critic_scale),
    Criterion("td_error", LONG, "TD error < 5 and decreasing", "last quarter < 5 and below the first quarter",
              _below_and_decreasing("td_error", 5.0),
              ill_posed="like the critic loss, the TD error scales with the reward and grows while Q grows from 0"),
    Criterion("rewards_improving", ("5k",), "episode rewards improving",
              "mean return of the last half of the episodes after learning starts > first half",
              _rewards_improving(0.5),
              ill_posed="with random route starts the episodes differ in length and difficulty; 4,000 updates are "
                        "few: a noisy signal"),
    Criterion("grad_explosion", LONG, "no gradient explosion",
              "every pre-clipping gradient norm finite, its max < 100 x its first logged value (our threshold: "
              "the seed gave none)", _no_grad_explosion),
    Criterion("rewards_increasing", ("50k",), "rewards increasing",
              "mean return of the last third of the episodes after learning starts > first third",
              _rewards_improving(1 / 3)),
    Criterion("critic_loss_converging", ("50k",), "critic loss converging",
              "relative change between the last two quarters < 25 % (our threshold)", _critic_loss_converging,
              ill_posed="the seed gave no threshold; while the policy improves the targets move and the loss need "
                        "not settle"),
    Criterion("td_error_end", ("50k",), "TD error < 1 at the end", "mean of the last 10 % of windows < 1",
              _td_error_end, ill_posed="scale-dependent like the critic loss"),
    Criterion("eval_success", ("50k",), "evaluation success > 50 %", "final evaluation success rate > 0.5",
              _eval_success),
)

INFO = {
    "max abs actor-side Q": lambda m: max((abs(v) for v in _vals(m, "actor_q")), default=math.nan),
    "max abs critic-side Q": lambda m: max((abs(v) for v in _vals(m, "critic_q")), default=math.nan),
    "max abs Q1 of the policy's actions on critic features":
        lambda m: max((abs(v) for v in _vals(m, "actor_q_on_critic_features")), default=math.nan),
    "max critic-encoder L2 (batch max)": lambda m: max(_vals(m, "critic_l2_max"), default=math.nan),
    "max actor-encoder L2 (batch max)": lambda m: max(_vals(m, "actor_l2_max"), default=math.nan),
    "actor CNN parameter norm first -> last":
        lambda m: (_vals(m, "actor_cnn_param_norm")[0], _vals(m, "actor_cnn_param_norm")[-1])
        if _vals(m, "actor_cnn_param_norm") else math.nan,
    "final eval route completion": lambda m: m["evals"][-1]["route_completion"] if m["evals"] else math.nan,
}


def evaluate_criteria(stage: str, measurement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{criterion key: {"measured": text, "passed": bool | None}}`` for the criteria of ``stage``."""
    out = {}
    for c in CRITERIA:
        if stage in c.stages:
            text, passed = c.check(measurement)
            out[c.key] = {"measured": text, "passed": passed}
    return out
