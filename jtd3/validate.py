"""The seed's validation plan as one command (``scripts/validate.py --stage smoke|5k|50k``).

The seed blamed the original's feature explosion on the missing normalization and planned a validation in three
stages with explicit success criteria. This module runs that plan for both wirings (``original``: the PyTorch
original's, where the actor loss scores Q1 on the actor encoder's features; and jtd3's fixed one, ``shared`` by
default) x the four norms x seeds, all with the original's hyperparameters (``configs/original.yaml``), then
checks the seed's criteria, quoted, on every run (:mod:`jtd3.validate_criteria`), and writes:

- ``report.md``: the verdict table (criterion, the seed's threshold, the measured value per configuration,
  pass/fail), the informative maxima (what exploded), the notes on ill-posed criteria, the command and machine;
- ``q.png`` (actor-side Q and critic-side Q over training) and ``features.png`` (per-sample feature L2, mean
  and batch max, of the critic and actor encoders);
- ``results.json`` (plan, machine, measured values, verdicts).

Measured quantities come from the runs' TensorBoard scalars (:func:`jtd3.logging.read_scalars`, logged every
``train.log_freq`` env steps as means over the window, ``*_max`` as maxima) and ``eval.csv``. "Actor-side Q" is
the Q the actor loss maximises (``losses/actor_q``): in ``original`` Q1 on actor-encoder features, in jtd3's
wirings Q1 on critic-encoder features. "Critic-side Q" is the critic's own Q1 on the replayed actions
(``losses/q1_mean``, the original's ``train/q1_value``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

from jtd3 import agent
from jtd3.cli import train_main
from jtd3.compare import NORMS, read_eval_csv, save_figure
from jtd3.config import from_dict, load_yaml
from jtd3.logging import read_scalars
from jtd3.machine import cpu_model
from jtd3.validate_criteria import CRITERIA, GRAD_PREFIX, INFO, Criterion, evaluate_criteria, fmt

__all__ = [
    "CRITERIA",
    "NORMS",
    "PRESET",
    "STAGES",
    "WIRINGS",
    "Criterion",
    "Stage",
    "evaluate_criteria",
    "machine",
    "measure",
    "estimate_seconds",
    "plan_runs",
    "plan_text",
    "plot",
    "run_stage",
    "summarise",
    "write_report",
]

PRESET = Path(__file__).resolve().parent.parent / "configs" / "original.yaml"
WIRINGS = ("original", "shared")
"""The original's wiring and jtd3's default one (``separate``, jtd3's fixed wiring with two encoders, may be
added with ``--wirings``)."""
ALARM_OFF = 1e30
RUN_INFO = "validate_run.json"  # per run: exit code and wall-clock seconds of its training
"""``train.explosion_l2_threshold`` of every run: the feature L2 alarm would stop the explosion we want to
measure; NaN/Inf still stop a run (exit code 3), and the report says so."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the plan. ``batch_size`` is the preset's (GPU plan); ``cpu_batch_size`` the CPU plan's."""

    name: str
    max_timesteps: int
    learning_starts: int
    batch_size: int
    cpu_batch_size: int
    seeds: tuple[int, ...]
    eval_freq: int
    num_eval_episodes: int
    log_freq: int
    extra: tuple[str, ...] = ()
    """Further ``train.py`` flags of the stage."""
    note: str = ""


STAGES = {
    "smoke": Stage(
        "smoke", max_timesteps=400, learning_starts=200, batch_size=32, cpu_batch_size=32, seeds=(0,),
        eval_freq=400, num_eval_episodes=1, log_freq=50,
        extra=("--set", "env.max_episode_steps=200", "--set", "train.replay.capacity=400"),
        note="a few hundred steps: the networks run, nothing is NaN, the features have the seed's magnitudes",
    ),
    "5k": Stage(
        "5k", max_timesteps=5_000, learning_starts=1_000, batch_size=256, cpu_batch_size=64, seeds=(0,),
        eval_freq=2_500, num_eval_episodes=3, log_freq=100,
        extra=("--set", "train.replay.capacity=5000"),
        note="5,000 env steps, 4,000 gradient steps (learning_starts 1,000 instead of the preset's 10,000, or "
             "nothing would be learnt); the replay holds every step (capacity 5,000: it never fills, as with 100k)",
    ),
    "50k": Stage(
        "50k", max_timesteps=50_000, learning_starts=10_000, batch_size=256, cpu_batch_size=256, seeds=(0, 1, 2),
        eval_freq=5_000, num_eval_episodes=5, log_freq=250,
        extra=("--set", "train.replay.capacity=100000"),
        note="the GPU plan: the preset unchanged (batch 256, 10k warm-up), 3 seeds",
    ),
}


def machine() -> dict[str, Any]:
    """The machine the stage runs on: JAX backend and devices, CPU model and count."""
    return {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu": cpu_model() or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
    }


def plan_runs(
    stage: Stage, wirings: Sequence[str], norms: Sequence[str], seeds: Sequence[int], batch_size: int, out: Path,
    passthrough: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One ``{"label", "wiring", "norm", "seed", "run_dir", "argv"}`` per configuration; ``argv`` is for
    :func:`jtd3.cli.train_main` (``scripts/train.py``), the preset first, the stage's settings after it."""
    runs = []
    for wiring in wirings:
        for norm in norms:
            for seed in seeds:
                name = f"{wiring}_{norm}_seed{seed}"
                argv = [
                    "--config", str(PRESET), "--norm", norm, "--seed", str(seed),
                    "--max-timesteps", str(stage.max_timesteps), "--learning-starts", str(stage.learning_starts),
                    "--batch-size", str(batch_size), "--eval-freq", str(stage.eval_freq),
                    "--checkpoint-freq", str(stage.max_timesteps - stage.max_timesteps % stage.eval_freq),
                    "--num-eval-episodes", str(stage.num_eval_episodes), "--logdir", str(out), "--run-name", name,
                    "--set", f"agent.encoder={wiring}", "--set", f"train.explosion_l2_threshold={ALARM_OFF:g}",
                    "--set", f"train.log_freq={stage.log_freq}", "--set", "train.progress_bar=false",
                    "--set", "train.checkpoint.save_replay=false",
                    *stage.extra, *passthrough,
                ]
                runs.append({"label": f"{wiring}/{norm}", "wiring": wiring, "norm": norm, "seed": seed,
                             "run_dir": str(out / name), "argv": argv})
    return runs


def run_stage(runs: list[dict[str, Any]], log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train every planned run in this process (``scripts/train.py``'s entry point); adds ``exit_code`` and
    ``wall_s``, also written to ``<run_dir>/validate_run.json`` (read back by :func:`load_run_info` when a
    report is rebuilt from the runs). Exit code 3 (the NaN/Inf alarm stopped the run) is a result, not an
    error."""

    for r in runs:
        log(f"\n=== {r['label']} seed {r['seed']}: scripts/train.py {shlex.join(r['argv'])}")
        t0 = time.perf_counter()
        r["exit_code"] = int(train_main(r["argv"]))
        r["wall_s"] = time.perf_counter() - t0
        Path(r["run_dir"], RUN_INFO).write_text(json.dumps({"exit_code": r["exit_code"], "wall_s": r["wall_s"]}))
        if r["exit_code"] not in (0, 3):
            raise RuntimeError(f"the run {r['run_dir']} failed (exit {r['exit_code']})")
        log(f"=== {r['label']} seed {r['seed']}: exit {r['exit_code']} after {r['wall_s']:.0f} s")
    return runs


def load_run_info(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``exit_code`` and ``wall_s`` from each run's ``validate_run.json`` where :func:`run_stage` wrote one."""
    for r in runs:
        info = Path(r["run_dir"], RUN_INFO)
        if info.is_file():
            r.update(json.loads(info.read_text()))
    return runs


# ----------------------------------------------------------------------------------------------------------
# Measurements

SERIES = {
    "actor_q": "losses/actor_q",
    "critic_q": "losses/q1_mean",
    "actor_q_on_critic_features": "debug/actor_q_on_critic_features",
    "actor_loss": "losses/actor_loss",
    "critic_loss": "losses/critic_loss",
    "td_error": "losses/td_error",
    "critic_l2": "debug/critic_cnn_features_l2_norm",
    "critic_l2_max": "debug/critic_cnn_features_l2_norm_max",
    "critic_mean": "debug/critic_cnn_features_mean",
    "critic_std": "debug/critic_cnn_features_std",
    "actor_l2": "debug/actor_cnn_features_l2_norm",
    "actor_l2_max": "debug/actor_cnn_features_l2_norm_max",
    "actor_mean": "debug/actor_cnn_features_mean",
    "actor_std": "debug/actor_cnn_features_std",
    "actor_cnn_param_norm": "param_norm/actor_cnn",
    "critic_cnn_param_norm": "param_norm/critic_cnn",
    "episode_reward": "train/episode_reward",
}


def measure(run_dir: str | Path, learning_starts: int) -> dict[str, Any]:
    """What the criteria need from one run directory: the series of :data:`SERIES` (``[(step, value)]``),
    gradient norms, episode rewards after ``learning_starts``, evaluations, non-finite values and alarms."""

    run_dir = Path(run_dir)
    scalars = read_scalars(run_dir)
    series = {name: [(int(s), float(v)) for s, v in scalars.get(tag, [])] for name, tag in SERIES.items()}
    grads = {tag: [float(v) for _, v in pts] for tag, pts in scalars.items() if tag.startswith(GRAD_PREFIX)}
    nonfinite = sorted(tag for tag, pts in scalars.items() if any(not math.isfinite(v) for _, v in pts))
    alarms = sorted(tag for tag in scalars if tag.startswith("alerts/"))
    rewards = [v for s, v in series["episode_reward"] if s > learning_starts]
    return {
        "series": series,
        "grad_norms": grads,
        "learned_episode_rewards": rewards,
        "evals": read_eval_csv(run_dir / "eval.csv"),
        "nonfinite_tags": nonfinite,
        "alarms": alarms,
    }


# ----------------------------------------------------------------------------------------------------------
# Report


def _info_text(value: Any) -> str:
    if isinstance(value, tuple):
        return " -> ".join(fmt(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return fmt(value) if isinstance(value, float) else str(value)


def _verdict(values: Sequence[bool | None], unit: str) -> str:
    """``pass`` when every value passed, ``**FAIL** (k of n <unit>)`` when any failed, else ``n/a``."""
    failed = sum(v is False for v in values)
    if failed:
        return f"**FAIL** ({failed} of {len(values)} {unit})" if len(values) > 1 else "**FAIL**"
    if all(v is True for v in values):
        return "pass"
    return "n/a"


def write_report(
    out: Path, stage: Stage, runs: list[dict[str, Any]], command: str, plan_text: str, machine_info: dict[str, Any]
) -> Path:
    """``report.md`` and ``results.json`` from runs carrying ``measurement`` and ``criteria``."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    by_label = {lab: [r for r in runs if r["label"] == lab] for lab in labels}
    criteria = [c for c in CRITERIA if stage.name in c.stages]
    head = "| criterion (the seed's words) | threshold | " + " | ".join(labels) + " |"
    lines = [
        f"# Validation, stage {stage.name}: the original's wiring vs jtd3's, four norms", "",
        f"Command: `{command}`", "",
        f"Machine: {machine_info['cpu']} ({machine_info['cpu_count']} CPUs), JAX {machine_info['jax']} on "
        f"{machine_info['backend']} ({', '.join(machine_info['devices'])})", "",
        "Plan: " + plan_text, "",
        "All runs use `configs/original.yaml` (the original's hyperparameters) with `agent.encoder` and "
        "`agent.norm` set per column; the feature-L2 alarm is off (NaN/Inf still stop a run). Each cell: the "
        "measured value(s) (one per seed, separated by `;`) and the verdict. L2 is always the per-sample norm.", "",
        "## Verdicts", "",
        head, "|---|---|" + "---|" * len(labels),
    ]
    for c in criteria:
        cells = []
        for lab in labels:
            results = [r["criteria"][c.key] for r in by_label[lab]]
            cells.append("; ".join(x["measured"] for x in results) + " — "
                         + _verdict([x["passed"] for x in results], "seeds"))
        mark = " (ill-posed, see below)" if c.ill_posed else ""
        lines.append(f"| {c.text}{mark} | {c.threshold} | " + " | ".join(cells) + " |")
    overall = []
    for lab in labels:
        vals = [r["criteria"][c.key]["passed"] for r in by_label[lab] for c in criteria]
        overall.append(_verdict(vals, "checks"))
    lines.append("| **all criteria** | | " + " | ".join(overall) + " |")
    lines += ["", "## What grew (maxima over the run; informative, no threshold)", "",
              "| quantity | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name in INFO:
        cells = ["; ".join(_info_text(r["info"][name]) for r in by_label[lab]) for lab in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| exit code (3: NaN/Inf alarm) | " + " | ".join(
        "; ".join(str(r.get("exit_code", "-")) for r in by_label[lab]) for lab in labels) + " |")
    lines.append("| wall time (s) | " + " | ".join(
        "; ".join(f"{r['wall_s']:.0f}" if "wall_s" in r else "-" for r in by_label[lab]) for lab in labels) + " |")
    ill = [c for c in criteria if c.ill_posed]
    if ill:
        lines += ["", "## Ill-posed criteria", ""]
        lines += [f"- **{c.text}**: {c.ill_posed}." for c in ill]
    lines += ["", "Actor-side Q: the Q the actor loss maximises (`original`: Q1 on the actor encoder's features; "
              "jtd3: Q1 on the critic encoder's). Critic-side Q: the critic's Q1 on replayed actions "
              "(`losses/q1_mean`, the original's `train/q1_value`).", "",
              "![Q](q.png)", "", "![features](features.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    results = {
        "stage": dataclasses.asdict(stage), "command": command, "plan": plan_text, "machine": machine_info,
        "runs": [{k: v for k, v in r.items() if k != "measurement"} | {"learned_episodes": len(
            r["measurement"]["learned_episode_rewards"])} for r in runs],
        "criteria": {c.key: {"text": c.text, "threshold": c.threshold, "ill_posed": c.ill_posed} for c in criteria},
    }
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2))
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def plot(out: Path, runs: list[dict[str, Any]]) -> list[Path]:
    """``q.png`` (actor-side and critic-side Q) and ``features.png`` (both encoders' per-sample L2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {lab: f"C{i}" for i, lab in enumerate(dict.fromkeys(r["label"] for r in runs))}
    styles = {"original": "-", "shared": "--", "separate": ":"}

    def draw(ax, name, r, **kw):
        pts = r["measurement"]["series"][name]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[r["label"]],
                    linestyle=styles.get(r["wiring"], "-"), **kw)

    def label(r):
        return r["label"] if r["seed"] == min(x["seed"] for x in runs if x["label"] == r["label"]) else None

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in runs:
        draw(axes[0], "actor_q", r, label=label(r))
        draw(axes[1], "critic_q", r, label=label(r))
    axes[0].set(title="Actor-side Q (the Q the actor loss maximises)", xlabel="env steps", yscale="symlog")
    axes[1].set(title="Critic-side Q (Q1 on replayed actions)", xlabel="env steps", yscale="symlog")
    paths.append(save_figure(fig, axes, out / "q.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in runs:
        for ax, enc in zip(axes, ("critic", "actor")):
            draw(ax, f"{enc}_l2", r, label=label(r))
            draw(ax, f"{enc}_l2_max", r, alpha=0.35, linewidth=0.8)
    for ax, enc in zip(axes, ("Critic", "Actor")):
        ax.axhline(100.0, color="k", linewidth=0.8, alpha=0.5)  # the seed's threshold
        ax.set(title=f"{enc} encoder: per-sample feature L2 (mean; faint: batch max)", xlabel="env steps",
               yscale="log")
    axes[1].text(0.01, 0.01, "shared: no actor encoder (the actor reads the critic's features)",
                 transform=axes[1].transAxes, fontsize=8, alpha=0.7)
    paths.append(save_figure(fig, axes, out / "features.png"))
    return paths


def summarise(stage: Stage, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``measurement``, ``criteria`` and ``info`` to every run (its directory must hold its logs)."""
    for r in runs:
        m = measure(r["run_dir"], stage.learning_starts)
        r["measurement"] = m
        r["criteria"] = evaluate_criteria(stage.name, m)
        r["info"] = {name: f(m) for name, f in INFO.items()}
    return runs


def estimate_seconds(stage: Stage, wirings: Sequence[str], batch_size: int, updates: int = 6,
                     log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Time ``updates`` gradient steps per wiring (LayerNorm, the slowest norm; K = 1 per call as in the stage;
    after a compile) at ``batch_size`` and extrapolate to the stage's gradient steps.

    Returns ``{wiring: {"wall_s_per_step", "cpu_s_per_step", "share", "run_wall_s"}}``: wall-clock and process CPU
    seconds per step, the share of the machine's cores this process got while timing (on a machine shared with
    other jobs it is well below 1, and the wall-clock estimate is pessimistic by about that factor), and the
    wall-clock seconds of one run's updates at the measured speed. Env steps, acting, evaluations and compiles
    are not timed (about a fifth of a run at batch 64 on a CPU).
    """
    data = load_yaml(str(PRESET))["agent"]
    obs_space = spaces.Dict({"camera": spaces.Box(0, 255, (4, 84, 84), np.uint8),
                             "kinematics": spaces.Box(-np.inf, np.inf, (55,), np.float32)})
    act_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    rng = np.random.default_rng(0)

    def obs():
        return {"camera": jnp.asarray(rng.integers(0, 256, (1, batch_size, 4, 84, 84), dtype=np.uint8)),
                "kinematics": jnp.asarray(rng.standard_normal((1, batch_size, 55)), jnp.float32)}

    batch = {"obs": obs(), "next_obs": obs(), "action": jnp.zeros((1, batch_size, 2)),
             "reward": jnp.zeros((1, batch_size)), "terminated": jnp.zeros((1, batch_size))}
    out = {}
    n_updates = stage.max_timesteps - stage.learning_starts
    cores = os.cpu_count() or 1
    for wiring in wirings:
        cfg = from_dict(agent.AgentConfig, {**data, "encoder": wiring, "norm": "layernorm"})
        state = agent.create(cfg, obs_space, act_space, 0)
        state, m = agent.update_many(state, batch)  # compile, and a critic-only step
        jax.block_until_ready(m)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(updates):
            state, m = agent.update_many(state, batch)
        jax.block_until_ready(m)
        wall, cpu = (time.perf_counter() - t0) / updates, (time.process_time() - c0) / updates
        share = cpu / (wall * cores)
        out[wiring] = {"wall_s_per_step": wall, "cpu_s_per_step": cpu, "share": share, "run_wall_s": wall * n_updates}
        log(f"  {wiring}: {wall * 1e3:.0f} ms per gradient step at batch {batch_size} ({cpu * 1e3:.0f} ms CPU; this "
            f"process had {share:.0%} of the {cores} cores) -> {wall * n_updates / 60:.1f} min of updates per run "
            f"({n_updates} steps)")
    return out


def plan_text(stage: Stage, batch: int, cpu_plan: bool, n_runs: int) -> str:
    """One sentence describing the stage as it will run."""
    reduced = cpu_plan and batch != stage.batch_size
    return (f"{stage.max_timesteps} env steps, learning starts at {stage.learning_starts}, 1 gradient step per env "
            f"step, batch {batch}" + (f" (CPU plan: reduced from the preset's {stage.batch_size})" if reduced else "")
            + f", evaluation every {stage.eval_freq} steps ({stage.num_eval_episodes} episode(s)), {n_runs} runs; "
            + stage.note)
