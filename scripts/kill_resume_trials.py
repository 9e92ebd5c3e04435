#!/usr/bin/env python
"""SIGKILL a short training run at random moments, resume it after each kill, and compare the end with an
uninterrupted run of the same config (the figures of docs/reliability.md).

    python scripts/kill_resume_trials.py --points 20 --out docs/reliability_kill_trials.json

1. An uninterrupted reference run of ``--steps`` env steps (``scripts/train.py`` as a subprocess).
2. The trial run: start it, SIGKILL it after a delay drawn uniformly from [0, ``--max-delay``] seconds after it
   printed its run directory (restore, compilation, training, evaluation and checkpoint writes all get hit),
   then ``--resume`` it and kill again, ``--points`` times; then resume it to the end.
3. After each kill: the committed steps, whether the next resume continued from the latest one (its first new
   checkpoint is the next multiple of checkpoint_freq). At the end: the final checkpoint equals the reference's
   (counters, RNG states, every replay array, every parameter), eval.csv has each evaluation step once, and
   no TensorBoard step appears twice.

Exit code 0 when every check holds; the JSON report lists each kill.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAIN = str(REPO / "scripts" / "train.py")
TINY = [
    "--learning-starts", "60", "--batch-size", "8", "--eval-freq", "40", "--checkpoint-freq", "40",
    "--num-eval-episodes", "1", "--set", "env.max_episode_steps=50", "--set", "train.replay.capacity=2000",
    "--set", "train.log_freq=20", "--set", "agent.actor_hidden=[32, 32]", "--set", "agent.critic_hidden=[32, 32]",
    "--set", "train.progress_bar=false",
]


def launch(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "a", encoding="utf-8") as fh:
        return subprocess.Popen([sys.executable, TRAIN, *args], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))


def restore(run_dir: Path):
    import yaml

    from jtd3 import agent
    from jtd3.checkpoint import CheckpointStore
    from jtd3.evaluate import env_spaces
    from jtd3.replay import ReplayBuffer
    from jtd3.run_config import load_config

    config = load_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    obs_space, act_space = env_spaces(config.env)
    template = agent.create(config.agent, obs_space, act_space, config.train.seed)
    replay = ReplayBuffer.from_config(config.train.replay, obs_space, act_space, seed=0)
    with CheckpointStore(run_dir / "checkpoints", "read") as store:
        return store.restore(template, replay=replay), replay


def differences(a_dir: Path, b_dir: Path) -> list[str]:
    """What differs between the final checkpoints of two runs (empty: identical)."""
    import jax
    import numpy as np

    (a, ra), (b, rb) = restore(a_dir), restore(b_dir)
    out = []
    if a.step != b.step:
        out.append(f"step {a.step} != {b.step}")
    for key in sorted(set(a.loop_state) | set(b.loop_state)):
        if a.loop_state.get(key) != b.loop_state.get(key):
            out.append(f"loop_state[{key!r}]")
    for name in ("frames", "kinematics", "action", "reward", "terminated", "truncated", "valid", "ep_pos"):
        if not np.array_equal(getattr(ra, name), getattr(rb, name)):
            out.append(f"replay.{name}")
    for i, (x, y) in enumerate(zip(jax.tree.leaves(a.train_state), jax.tree.leaves(b.train_state))):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if not np.array_equal(np.asarray(x), np.asarray(y)):
            out.append(f"train_state leaf {i}")
    return out


def log_checks(run_dir: Path, steps: int, eval_freq: int) -> list[str]:
    from jtd3.logging import read_scalars

    out = []
    rows = (run_dir / "eval.csv").read_text().splitlines()[1:]
    evals = [int(float(r.split(",")[0])) for r in rows]
    if evals != list(range(eval_freq, steps + 1, eval_freq)):
        out.append(f"eval.csv steps {evals}")
    for tag, points in read_scalars(run_dir).items():
        s = [p for p, _ in points]
        if s != sorted(set(s)):
            out.append(f"TensorBoard {tag} has a step twice")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=20, help="number of SIGKILLs")
    p.add_argument("--steps", type=int, default=600, help="env steps of the run")
    p.add_argument("--max-delay", type=float, default=40.0,
                   help="kill within this many seconds after a process printed its run directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    p.add_argument("--clock", choices=("run-directory", "first-checkpoint"), default="run-directory",
                   help="when a process's kill delay starts: when it prints its run directory (kills hit restore and "
                   "compilation too), or when it has committed its first new checkpoint (kills hit training, "
                   "evaluations and checkpoint writes)")
    p.add_argument("--reference", type=Path, help="a finished uninterrupted run of the same flags (skips step 1)")
    p.add_argument("--workdir", type=Path, default=Path("runs/kill_trials"))
    p.add_argument("--out", type=Path, help="JSON report")
    args = p.parse_args(argv)

    from jtd3.checkpoint import committed_steps

    work = args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ref_name, trial_name = f"reference_{stamp}", f"trial_{stamp}"
    common = ["--max-timesteps", str(args.steps), "--logdir", str(work), *TINY]
    log = work / f"{trial_name}.log"

    t0 = time.monotonic()
    if args.reference is None:
        ref = launch([*common, "--run-name", ref_name], log)
        assert ref.wait() == 0, f"reference run failed; see {log}"
        reference_dir = work / ref_name
    else:
        reference_dir = args.reference.absolute()
    reference_s = time.monotonic() - t0

    rng = random.Random(args.seed)
    trial_dir = work / trial_name
    kills = []
    finished = False
    for i in range(args.points):
        before = committed_steps(trial_dir / "checkpoints")
        # a run killed before it wrote config.yaml left nothing (the CLI writes nothing before its checks pass)
        started = (trial_dir / "config.yaml").is_file()
        argv_i = ["--resume", str(trial_dir), "--set", "train.progress_bar=false"] if started else [
            *common, "--run-name", trial_name]
        delay = rng.uniform(0.0, args.max_delay)
        lines_before = log.read_text().count("jtd3: run directory") if log.exists() else 0
        proc = launch(argv_i, log)
        # the clock starts when the process prints its run directory (config.yaml written, JAX imported):
        # importing takes 10-30 s on a loaded 2-core machine and writes nothing
        while proc.poll() is None and log.read_text().count("jtd3: run directory") == lines_before:
            time.sleep(0.05)
        if args.clock == "first-checkpoint":
            while proc.poll() is None and committed_steps(trial_dir / "checkpoints") == before:
                time.sleep(0.05)
        start = time.monotonic()
        while proc.poll() is None and time.monotonic() - start < delay:
            time.sleep(0.05)
        if proc.poll() is not None:
            finished = True
            kills.append({"kill": i + 1, "delay_s": round(delay, 2), "exit_code": proc.returncode,
                          "note": "finished before the kill"})
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = committed_steps(trial_dir / "checkpoints")
        leftovers = sorted(q.name for q in (trial_dir / "checkpoints").glob("*.orbax-checkpoint-tmp*")) if (
            trial_dir / "checkpoints").is_dir() else []
        kills.append({"kill": i + 1, "delay_s": round(delay, 2), "resumed": started,
                      "latest_before": before[-1] if before else None,
                      "latest_after": after[-1] if after else None, "new_checkpoints": sorted(set(after) - set(before)),
                      "uncommitted_leftovers": leftovers})
        print(json.dumps(kills[-1]), flush=True)
    # each resume continued from the latest committed step: the steps committed over the trial are exactly the
    # multiples of checkpoint_freq (none skipped, none written twice is guaranteed by save refusing step <= latest)
    if not finished:
        final = launch(["--resume", str(trial_dir), "--set", "train.progress_bar=false"], log)
        assert final.wait() == 0, f"final resume failed; see {log}"
    diffs = differences(reference_dir, trial_dir)
    checks = log_checks(trial_dir, args.steps, 40)
    report = {
        "command": " ".join(["python", "scripts/kill_resume_trials.py", *(argv or sys.argv[1:])]),
        "steps": args.steps, "points": args.points, "max_delay_s": args.max_delay, "seed": args.seed,
        "clock": args.clock,
        "reference_wall_s": round(reference_s, 1),
        "kills": kills,
        "kills_during_startup_or_before_a_new_checkpoint": sum(1 for k in kills if k.get("new_checkpoints") == []),
        "final_checkpoint_differences_from_reference": diffs,
        "log_problems": checks,
        "ok": not diffs and not checks,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
