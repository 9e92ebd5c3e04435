"""What each normalization does to the CNN features and to learning (``scripts/compare_norms.py``).

Two parts, both written to one report directory:

1. **Drift probe** (no training, seconds): a NatureCNN per norm is applied to real camera stacks (frames the
   PID baseline sees along the reference route) with its conv kernels scaled by 1, 10 and 100 — the weight
   growth that made the original project's features "explode". Reported: per-sample feature L2 (mean and max
   over the batch), std and dead fraction. LayerNorm bounds the L2 (about sqrt(512) whatever the scale);
   without normalization it grows with the product of the scales.
2. **Training**: one run per norm with the same seed and budget (``scripts/train.py`` in this process), then
   their TensorBoard scalars side by side: per-sample feature L2 of the actor and critic encoders, critic
   loss, Q values, episode reward and the evaluation (route completion, success rate).

Outputs: ``report.md`` (tables), ``drift.json``, ``summary.json``, ``features.png`` and ``learning.png``.
"""

from __future__ import annotations

import json
import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jtd3.agent.diagnostics import feature_stats
from jtd3.agent.networks import NatureCNN
from jtd3.baselines.policy import PurePursuitPolicy
from jtd3.choices import NORMS
from jtd3.envs import EnvConfig, make_env
from jtd3.logging import read_scalars

__all__ = [
    "collect_camera_batch",
    "drift_probe",
    "plot_runs",
    "read_eval_csv",
    "save_figure",
    "summarise_runs",
    "write_report",
]

DRIFT_FACTORS = (1.0, 10.0, 100.0)


def collect_camera_batch(n: int = 64, seed: int = 0, every: int = 10) -> np.ndarray:
    """``n`` camera stacks (uint8 ``(n, 4, 84, 84)``) the PID baseline sees on the reference route, one every
    ``every`` steps (episodes restart with the next seed when they end)."""
    env = make_env(EnvConfig(), seed=seed)
    policy = PurePursuitPolicy(env)
    out: list[np.ndarray] = []
    episode = 0
    obs, _ = env.reset(seed=seed)
    step = 0
    while len(out) < n:
        if step % every == 0:
            out.append(obs["camera"])
        obs, _, terminated, truncated, _ = env.step(policy(obs))
        step += 1
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    env.close()
    return np.stack(out)


def drift_probe(
    camera: np.ndarray,
    norms: Sequence[str] = NORMS,
    factors: Sequence[float] = DRIFT_FACTORS,
    activation: str = "leaky_relu",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per-sample feature L2 and other statistics of a fresh NatureCNN per norm with its kernels x factor.

    Two scopes: ``conv`` scales the three conv kernels, ``all`` also the dense kernel (what unchecked weight
    growth does). BatchNorm layers use the batch's statistics (as inside the training loss). Returns one row
    per (norm, scope, factor): ``{"norm", "scope", "factor", "l2_norm", "l2_norm_max", "std", "dead_fraction"}``.
    """
    rows = []
    x = jax.numpy.asarray(camera)
    for norm in norms:
        cnn = NatureCNN(norm=norm, activation=activation, conv_impl="xla")
        variables = cnn.init(jax.random.PRNGKey(seed), x[:2], train=False)
        for scope in ("conv", "all"):
            for factor in factors:
                params = jax.tree_util.tree_map_with_path(
                    lambda path, leaf: leaf * factor if _scaled(path, scope) else leaf, variables["params"]
                )
                feats, _ = cnn.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
                stats = {k: float(v) for k, v in feature_stats(feats).items()}
                rows.append({"norm": norm, "scope": scope, "factor": float(factor), **{
                    k: stats[k] for k in ("l2_norm", "l2_norm_max", "std", "dead_fraction")}})
    return rows


def _scaled(path: tuple, scope: str) -> bool:
    name = jax.tree_util.keystr(path)
    is_kernel = any(getattr(k, "key", None) == "kernel" for k in path)
    return is_kernel and ("conv" in name or (scope == "all" and "dense" in name))


# ----------------------------------------------------------------------------------------------------------
# Runs

CURVES = {
    "critic features L2": "debug/critic_cnn_features_l2_norm",
    "actor features L2": "debug/actor_cnn_features_l2_norm",
    "critic loss": "losses/critic_loss",
    "Q1 mean": "losses/q1_mean",
    "episode reward": "train/episode_reward",
    "eval route completion": "eval/route_completion",
}


def summarise_runs(runs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """For each ``{label: run_dir}``: the scalars of :data:`CURVES` and the final/best evaluation."""
    out = {}
    for label, run_dir in runs.items():
        scalars = read_scalars(run_dir)
        curves = {name: scalars.get(tag, []) for name, tag in CURVES.items()}
        evals = read_eval_csv(run_dir / "eval.csv")
        final = evals[-1] if evals else {}
        best = max(evals, key=lambda r: (r["success_rate"], r["route_completion"])) if evals else {}
        l2 = [v for _, v in curves["critic features L2"]]
        out[label] = {
            "run_dir": str(run_dir),
            "curves": curves,
            "final_eval": final,
            "best_eval": best,
            "critic_l2_first": l2[0] if l2 else math.nan,
            "critic_l2_last": l2[-1] if l2 else math.nan,
            "critic_l2_max": max(l2) if l2 else math.nan,
            "alarm": any(t.startswith("alerts/") for t in scalars),
        }
    return out


def read_eval_csv(path: Path) -> list[dict[str, float]]:
    """The rows of a run's ``eval.csv`` as floats (empty when there is none)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def plot_runs(summary: dict[str, dict[str, Any]], drift: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``features.png`` (drift probe + feature L2 during training) and ``learning.png`` (losses, returns)."""
    import matplotlib  # imported where plots are drawn: the file backend must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # A panel for the actor's encoder only when a run has one (encoder: separate); with a shared encoder the
    # actor reads the critic's features and an empty panel would only confuse.
    encoders = [("critic features L2", "Critic encoder features")]
    if any(s["curves"]["actor features L2"] for s in summary.values()):
        encoders.append(("actor features L2", "Actor encoder features"))
    fig, axes = plt.subplots(1, 1 + len(encoders), figsize=(5.5 * (1 + len(encoders)), 4.5))
    norms = list(dict.fromkeys(r["norm"] for r in drift))
    for i, norm in enumerate(norms):  # shrinking markers and varied dashes keep coinciding curves visible
        rows = [r for r in drift if r["norm"] == norm and r["scope"] == "all"]
        axes[0].plot([r["factor"] for r in rows], [r["l2_norm"] for r in rows], marker="osD^v"[i % 5],
                     markersize=10 - 2 * (i % 4), linestyle=("-", "--", "-.", ":")[i % 4], label=norm)
    axes[0].set(xscale="log", yscale="log", xlabel="conv + dense kernels x factor (simulated drift)",
                ylabel="per-sample feature L2 (mean over batch)", title="Drift probe (fresh encoders)")
    for ax, (name, title) in zip(axes[1:], encoders):
        for label, s in summary.items():
            pts = s["curves"][name]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label)
        ax.set(xlabel="env steps", ylabel="per-sample L2 (mean)", title=title, yscale="log")
    paths.append(save_figure(fig, axes, out_dir / "features.png"))

    names = ("critic loss", "Q1 mean", "episode reward", "eval route completion")
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.5))
    for ax, name in zip(axes, names):
        for label, s in summary.items():
            pts = s["curves"][name]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if name.startswith("eval") else None,
                        label=label)
        ax.set(xlabel="env steps", title=name)
        if name == "critic loss":
            ax.set_yscale("log")
    paths.append(save_figure(fig, axes, out_dir / "learning.png"))
    return paths


def save_figure(fig: Any, axes: Sequence[Any], path: Path) -> Path:
    """Grid and legend on every axis, then write ``fig`` to ``path`` and close it."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: Path, drift: list[dict[str, Any]], summary: dict[str, dict[str, Any]], command: str) -> Path:
    """``report.md`` with the drift table and the per-run table."""
    lines = ["# What each normalization does", "", f"Command: `{command}`", "",
             "## Drift probe: fresh encoders with scaled kernels (per-sample feature L2, mean over 64 stacks)", "",
             "Kernels scaled: `conv` = the three conv kernels, `all` = conv and dense kernels.", "",
             "| norm | scaled | x1 | x10 | x100 | growth x1 -> x100 | dead fraction x1 |",
             "|---|---|---|---|---|---|---|"]
    for norm in dict.fromkeys(r["norm"] for r in drift):
        for scope in ("conv", "all"):
            rows = {r["factor"]: r for r in drift if r["norm"] == norm and r["scope"] == scope}
            f = sorted(rows)
            growth = rows[f[-1]]["l2_norm"] / rows[f[0]]["l2_norm"]
            lines.append(f"| {norm} | {scope} | " + " | ".join(f"{rows[k]['l2_norm']:.3g}" for k in f)
                         + f" | {growth:.3g}x | {rows[f[0]]['dead_fraction']:.2f} |")
    if summary:
        lines += ["", "## Training runs (same seed and budget)", "",
                  "| norm | critic L2 first -> last (max) | final eval: success | route completion | return | "
                  "best eval: success | route completion | alarm |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, s in summary.items():
            fe, be = s["final_eval"], s["best_eval"]
            lines.append(
                f"| {label} | {s['critic_l2_first']:.3g} -> {s['critic_l2_last']:.3g} ({s['critic_l2_max']:.3g}) | "
                f"{fe.get('success_rate', math.nan):.2f} | {fe.get('route_completion', math.nan):.3f} | "
                f"{fe.get('return_mean', math.nan):.1f} | {be.get('success_rate', math.nan):.2f} | "
                f"{be.get('route_completion', math.nan):.3f} | {'yes' if s['alarm'] else 'no'} |"
            )
        lines += ["", "Run directories: " + ", ".join(f"`{s['run_dir']}`" for s in summary.values())]
    lines += ["", "![features](features.png)", "", "![learning](learning.png)", ""]
    p = out_dir / "report.md"
    p.write_text("\n".join(lines))
    (out_dir / "drift.json").write_text(json.dumps(drift, indent=2))
    (out_dir / "summary.json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in v.items() if kk != "curves"} for k, v in summary.items()}, indent=2))
    return p
