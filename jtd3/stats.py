"""Statistics for reporting learning results honestly (pure NumPy/SciPy functions).

- :func:`wilson_interval`: the 95 % Wilson score interval of a success count k/n (sensible at k = 0 or k = n,
  unlike the normal approximation).
- :func:`iqm`: the interquartile mean (mean of the middle 50 %, SciPy's ``trim_mean(x, 0.25)``), the aggregate
  recommended by Agarwal et al. 2021 ("Deep RL at the edge of the statistical precipice", rliable) over runs.
- :func:`bootstrap_iqm_interval`: a percentile bootstrap interval of the IQM across training seeds, resampling
  seeds and, within each resampled seed, its evaluation episodes (a two-level stratified bootstrap), so both
  the seed-to-seed and the finite-episode uncertainty are in the interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["bootstrap_iqm_interval", "iqm", "wilson_interval"]


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n``."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    lo = 0.0 if k == 0 else max(centre - half, 0.0)  # exact bounds where rounding would leave 1e-17
    hi = 1.0 if k == n else min(centre + half, 1.0)
    return lo, hi


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50 % of ``values`` (the plain mean for fewer than 4 values,
    where a quarter of them is less than one)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("iqm of no values")
    return float(stats.trim_mean(x, 0.25))


def bootstrap_iqm_interval(
    per_seed_outcomes: Sequence[Sequence[float]], reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the IQM over seeds of the per-seed mean outcome (e.g. 0/1 successes).

    Each replicate draws the seeds with replacement and, for each drawn seed, its episodes with replacement.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in per_seed_outcomes]
    if not groups or any(g.size == 0 for g in groups):
        raise ValueError("need at least one seed, each with at least one outcome")
    rng = np.random.default_rng(seed)
    out = np.empty(reps)
    for r in range(reps):
        picks = rng.integers(0, len(groups), size=len(groups))
        means = [groups[i][rng.integers(0, groups[i].size, size=groups[i].size)].mean() for i in picks]
        out[r] = iqm(means)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(out, alpha)), float(np.quantile(out, 1.0 - alpha))
