"""The GPU checks of the speed work in one command, sized for a short lease of a GPU machine (about 3.5 minutes on
an H200; 6.5 with `--main-job`).

    python benchmarks/gpu_checks.py --out DIR          # on the GPU machine (jax with CUDA, torch, SB3)
    python benchmarks/gpu_checks.py --out DIR --smoke  # anywhere: tiny sizes, checks that the pipeline runs

1. ``meta.json``: JAX's backend and devices and the CPU (``jtd3.validate.machine``), torch's CUDA device,
   ``nvidia-smi -L``.
2. ``bench_agent.jsonl``: ``benchmarks/bench_agent.py`` on the GPU, layernorm, B = 64 and 256, separate and
   shared, float32 and bfloat16 (``agent.compute_dtype``), ``conv_impl=auto`` (XLA's convolutions, i.e.
   cuDNN, on a GPU), interleaved with SB3 TD3 on CUDA (``--sb3-device cuda``); each row has its compile time.
3. ``train.json``: one short ``scripts/train.py`` run (the main job's defaults, fewer steps): env steps/s after
   the warm-up, the wall time, and the GPU memory JAX's allocator held at its peak
   (``charts/device_memory_peak_mb``) inside the pool ``train.jax_memory_fraction`` reserves.
4. With ``--main-job``, ``main_job.json``: the README's main job as it is (``scripts/train.py --norm layernorm``,
   20k env steps, about 3 minutes on an H200): wall time, env steps/s after the warm-up, peak GPU memory and
   every evaluation's success rate.
5. ``table.md``: the tables for the README and docs/agent.md, built from 2, 3 and 4.

Training runs write their TensorBoard logs and checkpoints under ``--runs-dir`` (default ``OUT/runs``); keep it
outside a folder whose files are copied back one by one (a lent machine's ``$OUT`` returns at most 8 files).

Each step runs in its own process with a time limit; a step that fails is recorded (its exit code and the end
of its output) and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FULL_BENCH = ["--batch-sizes", "64,256", "--encoders", "separate,shared", "--norms", "layernorm",
              "--compute-dtypes", "float32,bfloat16", "--repeats", "3", "--seconds", "1", "--k", "8",
              "--sb3-device", "cuda"]
SMOKE_BENCH = ["--batch-sizes", "4", "--encoders", "shared", "--norms", "layernorm", "--compute-dtypes", "float32",
               "--repeats", "1", "--seconds", "0.1", "--k", "2", "--no-sb3"]
FULL_TRAIN = {"max_timesteps": 4000, "learning_starts": 1000, "log_freq": 250}
SMOKE_TRAIN = {"max_timesteps": 320, "learning_starts": 200, "log_freq": 40}
SMOKE_MAIN_JOB = {"max_timesteps": 400, "learning_starts": 200, "log_freq": 40, "eval_freq": 200}
"""--smoke --main-job: the main job's pipeline with evaluations, at a size any machine runs in about a minute"""


def _run(cmd: list[str], timeout_s: float, stdout_path: Path | None = None) -> dict:
    """Run ``cmd`` from the repository root; ``{"exit_code", "wall_s", "tail"}`` (stdout to a file if given)."""
    t0 = time.perf_counter()
    # the children import jtd3 from this checkout, installed or not (as on a bare GPU machine)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
    try:
        if stdout_path is None:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        else:
            with open(stdout_path, "w") as fh:
                proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.PIPE, text=True,
                                      timeout=timeout_s)
        code, text = proc.returncode, (proc.stdout or "") + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, text = "timeout", e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    return {"exit_code": code, "wall_s": round(time.perf_counter() - t0, 1), "tail": text[-2000:]}


def meta() -> dict:
    """:func:`jtd3.validate.machine` (JAX's backend and devices, the CPU) plus torch's CUDA device and the GPUs
    ``nvidia-smi -L`` lists."""
    from jtd3.validate import machine

    out = machine()
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        out["torch"] = None
    if shutil.which("nvidia-smi"):
        out["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    return out


def train_check(logdir: Path, sizes: dict | None, timeout_s: float, run: str) -> dict:
    """One training run (``sizes``: a short run's overrides; None: the main job as it is); its env steps/s after
    the warm-up, wall time, the allocator's peak and (when it evaluated) every evaluation's success rate."""
    from jtd3.logging import read_scalars

    cmd = [sys.executable, "scripts/train.py", "--norm", "layernorm"]
    if sizes is not None:
        cmd += ["--max-timesteps", str(sizes["max_timesteps"]), "--learning-starts", str(sizes["learning_starts"]),
                "--eval-freq", str(sizes.get("eval_freq", 1000000)), "--checkpoint-freq", "1000000",
                "--num-eval-episodes", "1",
                "--set", f"train.log_freq={sizes['log_freq']}"]
    cmd += ["--set", f"train.logdir={logdir}", "--set", "train.progress_bar=false"]
    before = set(logdir.glob("*")) if logdir.is_dir() else set()
    result = {"run": run, "argv": cmd[1:], **_run(cmd, timeout_s)}
    runs = sorted(set(logdir.glob("*")) - before) if logdir.is_dir() else []
    if not runs:
        return result
    train_cfg = yaml.safe_load((runs[-1] / "config.yaml").read_text())["train"]
    scalars = read_scalars(runs[-1])
    # the first window after the warm-up also holds the update's compilation: skip it
    after = [v for step, v in scalars.get("charts/steps_per_second", [])
             if step > train_cfg["learning_starts"] + train_cfg["log_freq"]]
    peak = [v for _, v in scalars.get("charts/device_memory_peak_mb", [])]
    result.update(
        env_steps_per_s_after_warmup=round(sum(after) / len(after), 1) if after else None,
        device_memory_peak_mb=round(max(peak), 1) if peak else None,
        # the pool JAX reserved: the run's train.jax_memory_fraction, unless the environment set it first
        jax_memory_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") or train_cfg["jax_memory_fraction"],
        eval_success_rates=[[step, round(v, 3)] for step, v in scalars.get("eval/success_rate", [])],
    )
    return result


def table(bench_rows: list[dict], *trains: dict) -> str:
    """Markdown: one row per jtd3 benchmark row (with its SB3 ratio), then one row per training run."""
    lines = ["| B | encoder | dtype | conv | jtd3 steps/s | SB3 steps/s (interleaved) | ratio | compile s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in bench_rows:
        if r.get("impl") != "jtd3":
            continue
        sb3 = r.get("sb3_steps_per_s_interleaved")
        sb3_text = f"{statistics.median(sb3):.2f}" if sb3 else "-"
        lines.append(f"| {r['batch']} | {r['encoder']} | {r['compute_dtype']} | {r['conv_impl']} | "
                     f"{r['steps_per_s']:.2f} | {sb3_text} | {r.get('ratio_vs_sb3', '-')} | {r['compile_s']} |")
    lines += ["", "| training run | env steps/s after warm-up | wall s | peak device memory MiB "
              "| evaluations: success |", "|---|---|---|---|---|"]
    for train in trains:
        evals = ", ".join(f"{v:g}" for _, v in train.get("eval_success_rates", [])) or "-"
        lines.append(f"| {train.get('run') or ' '.join(train.get('argv', [])[1:5])} | "
                     f"{train.get('env_steps_per_s_after_warmup')} | {train.get('wall_s')} | "
                     f"{train.get('device_memory_peak_mb')} | {evals} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the JSON files and the table")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no SB3: check the pipeline on any machine")
    p.add_argument("--bench-timeout", type=float, default=330.0)
    p.add_argument("--train-timeout", type=float, default=200.0)
    p.add_argument("--main-job", action="store_true", help="also run the README's main job as it is (20k env steps)")
    p.add_argument("--main-job-timeout", type=float, default=400.0)
    p.add_argument("--runs-dir", help="where the training runs write (default: OUT/runs)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(args.runs_dir) if args.runs_dir else out / "runs"

    info = meta()
    (out / "meta.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info), flush=True)
    if info["backend"] != "gpu" and not args.smoke:
        print(f"gpu_checks: JAX's backend is {info['backend']!r}, not a GPU; use --smoke to check the pipeline "
              "on this machine", file=sys.stderr)
        return 2

    bench_path = out / "bench_agent.jsonl"
    bench = _run([sys.executable, "benchmarks/bench_agent.py", *(SMOKE_BENCH if args.smoke else FULL_BENCH)],
                 args.bench_timeout, bench_path)
    print(json.dumps({"step": "bench_agent", **bench}), flush=True)
    rows = [json.loads(line) for line in bench_path.read_text().splitlines() if line.startswith("{")]

    def record(step: str, result: dict) -> dict:
        (out / f"{step}.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({"step": step, **{k: v for k, v in result.items() if k != "tail"}}), flush=True)
        return result

    sizes = SMOKE_TRAIN if args.smoke else FULL_TRAIN
    trains = [record("train", train_check(runs_dir, sizes, args.train_timeout,
                                          f"short run ({sizes['max_timesteps']} env steps)"))]
    if args.main_job:
        run = "main job (smoke size)" if args.smoke else "main job (scripts/train.py --norm layernorm)"
        trains.append(record("main_job", train_check(runs_dir, SMOKE_MAIN_JOB if args.smoke else None,
                                                     args.main_job_timeout, run)))

    text = table(rows, *trains)
    (out / "table.md").write_text(text)
    print(text)
    return 0 if bench["exit_code"] == 0 and all(t["exit_code"] == 0 for t in trains) else 1


if __name__ == "__main__":
    raise SystemExit(main())
