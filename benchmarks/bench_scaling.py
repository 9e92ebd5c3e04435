"""Throughput of the whole training loop over N environments: env steps/s and gradient steps/s, one JSON line each.

Each row is a real training run (``scripts/train.py``, default agent and update ratio: ``gradient_steps /
train_freq`` gradient steps per env step) in its own process, with the embedded simulator (a) at full speed and
(b) paced like a synchronous CARLA server (``env.sim.min_step_s``, 20 env steps/s with action repeat 2), for
``--actors`` inline (N = 1), process and ray. The rates are measured from TensorBoard's wall times between the
first ``log_freq`` write after ``learning_starts + --skip`` steps (JIT compilation is over) and the last one;
evaluations are off until the end.

    python benchmarks/bench_scaling.py [--envs 1 2 4] [--actors inline process ray] [--steps 1600] \
        [--out docs/scaling/scaling.jsonl] [--extra train.train_freq=16 --label light_learner]

The meta line records the CPU. Run nothing else meanwhile: the loop, its environments and Ray share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import cpu_info  # benchmarks/, the script's directory

REPO = Path(__file__).resolve().parent.parent


def measure(run_dir: Path, start_step: int) -> dict[str, float]:
    """Env and gradient steps per second between the first ``charts/updates`` write at or after ``start_step``
    and the last one (wall times of the TensorBoard events)."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    events = [e for e in acc.Scalars("charts/updates") if e.step >= start_step]
    if len(events) < 2:
        raise RuntimeError(f"{run_dir}: fewer than two log writes after step {start_step}; use more --steps")
    a, b = events[0], events[-1]
    dt = b.wall_time - a.wall_time
    out = {"env_steps_per_s": (b.step - a.step) / dt, "grad_steps_per_s": (b.value - a.value) / dt,
           "window_env_steps": b.step - a.step, "window_s": dt}
    for tag in ("charts/learner_busy_s", "charts/learner_waiting_s", "charts/policy_lag_updates_max"):
        if tag in acc.Tags()["scalars"]:
            vals = [e.value for e in acc.Scalars(tag) if a.step < e.step <= b.step]
            if vals:
                out[tag.split("/")[1] + ("_sum" if tag.endswith("_s") else "")] = (
                    sum(vals) if tag.endswith("_s") else max(vals))
    return out


def run_one(actors: str, n: int, paced: float, args: argparse.Namespace, root: Path) -> dict:
    name = f"{actors}_n{n}_{'paced' if paced else 'full'}"
    argv = [
        sys.executable, str(REPO / "scripts" / "train.py"), "--actors", actors, "--num-envs", str(n),
        "--max-timesteps", str(args.steps), "--learning-starts", str(args.learning_starts),
        "--eval-freq", str(args.steps), "--checkpoint-freq", str(args.steps), "--num-eval-episodes", "1",
        "--logdir", str(root), "--run-name", name, "--seed", "0",
        "--set", "train.progress_bar=false", "--set", f"train.log_freq={args.log_freq}",
        "--set", "train.replay.capacity=40000", "--set", "train.checkpoint.save_replay=false",
        "--set", f"env.sim.min_step_s={paced}",
    ]
    for kv in args.extra:
        argv += ["--set", kv]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    row = {"label": args.label, "extra": args.extra, "actors": actors, "num_envs": n, "env": "paced" if paced else "full_speed", "min_step_s": paced,
           "run_wall_s": round(wall, 1)}
    row.update(measure(root / name, args.learning_starts + args.skip))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--actors", nargs="+", default=["inline", "process", "ray"])
    p.add_argument("--paced", type=float, nargs="+", default=[0.0, 0.025],
                   help="env.sim.min_step_s values (0: full speed; 0.025: 20 env steps/s with action repeat 2)")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--learning-starts", type=int, default=400)
    p.add_argument("--skip", type=int, default=200, help="env steps after learning_starts left out (compilation)")
    p.add_argument("--log-freq", type=int, default=100)
    p.add_argument("--out", type=str, default=None, help="also append the JSON lines to this file")
    p.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides for every run")
    p.add_argument("--label", type=str, default="default", help="name of this set of rows in the JSON lines")
    args = p.parse_args()
    out = open(args.out, "a", encoding="utf-8") if args.out else None

    def emit(row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    emit({"meta": True, "cpu": cpu_info(), "nproc": os.cpu_count(), "steps": args.steps,
          "learning_starts": args.learning_starts, "skip": args.skip, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    with tempfile.TemporaryDirectory() as tmp:
        for paced in args.paced:
            for actors in args.actors:
                for n in args.envs:
                    if actors == "inline" and n != 1:
                        continue
                    emit(run_one(actors, n, paced, args, Path(tmp)))


if __name__ == "__main__":
    main()
