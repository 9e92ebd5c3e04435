#!/usr/bin/env python
"""The one-line answers of the CLI to each bad input of issue 10, as a Markdown table (docs/reliability.md).

    python scripts/reliability_error_lines.py RUN_DIR WORK_DIR

RUN_DIR: a finished run with checkpoints (it is copied once per case into WORK_DIR, never modified). The resume
cases with a truncated file run with --max-timesteps 1 (they load a checkpoint and stop). The new-run cases
only resolve and check their arguments (nothing is trained).
"""
import argparse, contextlib, io, shutil, socket, sys, threading, yaml
from pathlib import Path
from jtd3.cli import train_main

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("run_dir", type=Path, help="a finished run with checkpoints (copied, never modified)")
ap.add_argument("work_dir", type=Path, help="scratch directory: DELETED and recreated")
args = ap.parse_args()
src, work = args.run_dir, args.work_dir
if not (src / "config.yaml").is_file():
    sys.exit(f"error: {src} is not a run directory (no config.yaml)")
if work.resolve() == src.resolve() or src.resolve().is_relative_to(work.resolve()):
    sys.exit(f"error: work_dir {work} would delete the run {src}")
shutil.rmtree(work, ignore_errors=True); work.mkdir()
def case(name, argv, prep=None):
    run = work / name
    shutil.copytree(src, run)
    if prep: prep(run)
    argv = [a.replace("RUN", str(run)) for a in argv]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = train_main(argv)
    lines = [l for l in err.getvalue().splitlines() if l.startswith(("error:", "warning:", "note:"))]
    print(f"| {name} | {code} | {' / '.join('`' + l.replace(str(work), '<runs>').replace('|', '/') + '`' for l in lines)} |")

def gamma(run):
    c = yaml.safe_load((run / "config.yaml").read_text()); c["agent"]["gamma"] = 0.5
    (run / "config.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
def trunc(rel):
    def f(run):
        d = run / "checkpoints"; last = max(int(p.name) for p in d.iterdir() if p.name.isdigit())
        t = d / str(last) / rel
        if t.is_dir(): t = max((p for p in t.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        with open(t, "r+b") as fh: fh.truncate(t.stat().st_size // 2)
    return f
P = ["--set", "train.progress_bar=false"]
case("resume --seed 5", ["--resume", "RUN", "--seed", "5"])
case("resume capacity", ["--resume", "RUN", "--set", "train.replay.capacity=3000"])
case("hand-edited gamma", ["--resume", "RUN"], gamma)
case("threshold .inf", ["--resume", "RUN", "--set", "train.explosion_l2_threshold=.inf"])
case("resume-step 7", ["--resume", "RUN", "--resume-step", "7"])
case("truncated train_state", ["--resume", "RUN", "--max-timesteps", "1", *P], trunc("train_state"))
case("truncated replay", ["--resume", "RUN", "--max-timesteps", "1", *P], trunc("replay/frames.npy"))
case("truncated loop_state", ["--resume", "RUN", "--max-timesteps", "1", *P], trunc("loop_state/metadata"))
for name, argv in [
    ("run name ../x", ["--run-name", "../x"]),
    ("threshold .inf (new)", ["--set", "train.explosion_l2_threshold=.inf"]),
    ("2M replay slots", ["--set", "train.replay.capacity=2000000"]),
    ("4M replay slots", ["--set", "train.replay.capacity=4000000"]),
]:
    from jtd3.cli import _resolve, build_parser
    try:
        _resolve(build_parser().parse_args(["--logdir", str(work / "new"), *argv]))
        line = "accepted (fits with the headroom)"
    except Exception as e:
        line = f"error: {e}"
    print(f"| {name} | {'-' if line.startswith('accepted') else 2} | `{line.replace(str(work), '<runs>')}` |")
