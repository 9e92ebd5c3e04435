#!/usr/bin/env python
"""The seed's validation plan as one command: does the original's feature explosion reproduce, and what fixes it?

    python scripts/validate.py --stage smoke             # a few hundred steps per configuration (minutes)
    python scripts/validate.py --stage 5k --report-dir docs/validation/5k   # 8 configurations x 1 seed (CPU: ~1 h)
    python scripts/validate.py --stage 50k               # 8 configurations x 3 seeds, the GPU plan
    python scripts/validate.py --stage 5k --dry-run      # print the plan and the commands, run nothing
    python scripts/validate.py --stage 5k --estimate     # time a few updates per wiring and estimate the stage
    python scripts/validate.py --stage 5k --runs-from runs/validate_5k   # re-check criteria of finished runs

Runs both wirings (`original`: the PyTorch original's; `shared`: jtd3's default) x the four norms x the stage's
seeds with configs/original.yaml, then checks the seed's success criteria on each run and writes report.md
(verdict table), q.png, features.png and results.json to --report-dir (default: --out, the run directory,
runs/validate_<stage>). Extra training
flags pass through after `--` (e.g. `-- --set env.scenario=1`). See jtd3/validate.py.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from jtd3 import validate
from jtd3.cli import split_passthrough
from jtd3.machine import reexec_with_huge_pages


def main(argv: list[str] | None = None) -> int:
    argv, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="scripts/validate.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", choices=tuple(validate.STAGES), required=True, help="the seed's validation stage")
    p.add_argument("--wirings", nargs="+", choices=("original", "shared", "separate"), default=list(validate.WIRINGS),
                   help="encoder topologies (agent.encoder)")
    p.add_argument("--norms", nargs="+", choices=validate.NORMS, default=list(validate.NORMS), help="normalizations")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the stage's)")
    p.add_argument("--batch-size", type=int, help="override the batch (default: the stage's; reduced on a CPU)")
    p.add_argument("--out", type=Path, help="run directory (default runs/validate_<stage>)")
    p.add_argument("--report-dir", type=Path, help="where report.md, the plots and results.json go (default --out)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the training commands only")
    p.add_argument("--estimate", action="store_true", help="time a few gradient steps and estimate the stage")
    p.add_argument("--runs-from", type=Path, help="do not train: check the runs already in this directory")
    args = p.parse_args(argv)

    stage = validate.STAGES[args.stage]
    info = validate.machine()
    cpu_plan = info["backend"] == "cpu"
    batch = args.batch_size or (stage.cpu_batch_size if cpu_plan else stage.batch_size)
    seeds = tuple(args.seeds) if args.seeds else stage.seeds
    out = args.runs_from or args.out or Path("runs") / f"validate_{stage.name}"
    out.mkdir(parents=True, exist_ok=True)
    runs = validate.plan_runs(stage, args.wirings, args.norms, seeds, batch, out, passthrough)
    plan = validate.plan_text(stage, batch, cpu_plan and not args.batch_size, len(runs))
    command = shlex.join(["python", "scripts/validate.py", *argv, *(["--", *passthrough] if passthrough else [])])
    print(f"stage {stage.name}: {plan}")
    print(f"machine: {info['cpu']} ({info['cpu_count']} CPUs), JAX on {info['backend']}")
    if cpu_plan and batch != stage.batch_size:
        print(f"CPU plan: batch {batch} instead of the preset's {stage.batch_size} (update time grows about "
              f"linearly with the batch; the GPU plan keeps {stage.batch_size})")
    if cpu_plan and stage.name == "50k":
        print("note: the 50k stage is the GPU plan; on this CPU it takes many hours")
    if args.dry_run:
        for r in runs:
            print(shlex.join(["python", "scripts/train.py", *r["argv"]]))
        return 0
    if args.estimate:
        per_run = validate.estimate_seconds(stage, args.wirings, batch)
        total = sum(per_run[r["wiring"]]["run_wall_s"] for r in runs)
        share = min(x["share"] for x in per_run.values())
        print(f"estimated time of the stage's gradient steps: {total / 60:.0f} min for {len(runs)} runs at the speed "
              f"measured now (plus ~20 % for env steps, evaluations and compiles)")
        if share < 0.8:
            print(f"the machine is busy (this process had {share:.0%} of it): on an idle machine expect about "
                  f"{total * share / 60:.0f} min (+20 %)")
        return 0
    if not args.runs_from:
        with open(out / "validate_command.txt", "a", encoding="utf-8") as fh:  # several commands may fill one --out
            fh.write(command + "\n")
        validate.run_stage(runs)
    else:
        trained = out / "validate_command.txt"
        if trained.is_file():
            done = "`, `".join(line for line in trained.read_text().splitlines() if line.strip())
            command = f"{done}`; report rebuilt with `{command}"
        runs = validate.load_run_info([r for r in runs if Path(r["run_dir"]).is_dir()])
        if not runs:
            print(f"error: no planned run directories in {out}", file=sys.stderr)
            return 2
    validate.summarise(stage, runs)
    report_dir = args.report_dir or out
    report_dir.mkdir(parents=True, exist_ok=True)
    validate.plot(report_dir, runs)
    report = validate.write_report(report_dir, stage, runs, command, plan, info)
    print(f"\nreport: {report}\nplots:  {report_dir / 'q.png'}, {report_dir / 'features.png'}\n"
          f"json:   {report_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    reexec_with_huge_pages()  # the training runs happen in this process (jtd3.machine)
    sys.exit(main())
