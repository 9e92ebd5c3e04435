"""Feature statistics and explosion checks.

The statistics functions are pure ``jnp`` and work inside ``jax.jit``. The "L2 norm" of features is always
the **per-sample** L2 norm (one number per batch row), summarised by its mean and max over the batch. The
original project logged the whole-batch Frobenius norm, which grows with ``sqrt(batch)`` and was misread as
an explosion (80 * sqrt(256) = 1280); :func:`per_sample_l2` never does that.

The host-side checks (:func:`check_explosion`, :func:`nonfinite_leaves`) take concrete values and are for the
training loop's alarm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "FEATURE_STATS",
    "check_explosion",
    "feature_stats",
    "nonfinite_leaves",
    "per_sample_l2",
    "tree_all_finite",
]

FEATURE_STATS = ("l2_norm", "l2_norm_max", "mean", "std", "min", "max", "dead_fraction")
"""Names (suffixes) returned by :func:`feature_stats`, in order."""


def per_sample_l2(x: jax.Array) -> jax.Array:
    """L2 norm of each batch row of ``x`` (B, ...) over all its other axes, shape ``(B,)``, float32."""
    x = x.astype(jnp.float32).reshape(x.shape[0], -1)
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=-1))


def feature_stats(x: jax.Array, prefix: str = "") -> dict[str, jax.Array]:
    """Statistics of activations ``x`` (B, ...) as scalars named ``prefix + name``.

    - ``l2_norm``: mean over the batch of the per-sample L2 norm; ``l2_norm_max``: its max over the batch;
    - ``mean``, ``std`` (population, ddof 0), ``min``, ``max``: over every element;
    - ``dead_fraction``: fraction of elements <= 0 (for ReLU: units that output nothing; for leaky ReLU:
      units in the negative regime).
    """
    x = x.astype(jnp.float32)
    l2 = per_sample_l2(x)
    values = (
        jnp.mean(l2),
        jnp.max(l2),
        jnp.mean(x),
        jnp.std(x),
        jnp.min(x),
        jnp.max(x),
        jnp.mean((x <= 0).astype(jnp.float32)),
    )
    return {prefix + name: v for name, v in zip(FEATURE_STATS, values)}


def tree_all_finite(tree: Any) -> jax.Array:
    """Boolean scalar: every element of every floating-point leaf of ``tree`` is finite (jit-safe)."""
    checks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    if not checks:
        return jnp.array(True)
    return jnp.all(jnp.stack(checks))


def nonfinite_leaves(tree: Any) -> list[str]:
    """Host side: the key paths (``jax.tree_util.keystr``) of floating-point leaves holding NaN or Inf."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(leaf))):
            bad.append(jax.tree_util.keystr(path))
    return bad


def check_explosion(metrics: Mapping[str, Any], l2_threshold: float) -> list[tuple[str, float]]:
    """Host side: the metrics that signal an explosion, as ``(name, value)``; empty when healthy.

    A metric is reported when its value is NaN or +-Inf (any metric: losses, Q values, statistics, norms),
    or when its name ends in ``l2_norm`` or ``l2_norm_max`` (per-sample feature L2, see
    :func:`feature_stats`) and its value exceeds ``l2_threshold``. Values may be Python/NumPy/JAX scalars.
    """
    if not (l2_threshold > 0 and math.isfinite(l2_threshold)):
        raise ValueError(f"l2_threshold must be a finite number > 0, got {l2_threshold!r}")
    alarms = []
    for name, value in metrics.items():
        v = float(value)
        if not math.isfinite(v):
            alarms.append((name, v))
        elif (name.endswith("l2_norm") or name.endswith("l2_norm_max")) and v > l2_threshold:
            alarms.append((name, v))
    return alarms
