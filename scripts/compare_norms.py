#!/usr/bin/env python
"""One command that shows what each normalization does to the CNN features and to learning.

    python scripts/compare_norms.py                          # drift probe + one short run per norm (CPU: ~40 min)
    python scripts/compare_norms.py --max-timesteps 50000    # longer runs
    python scripts/compare_norms.py --probe-only             # the drift probe alone (seconds)
    python scripts/compare_norms.py --runs runs/a runs/b     # report on existing runs (label = their agent.norm)

Every run uses scripts/train.py with the same seed and budget; extra training flags pass through after `--`
(e.g. `-- --encoder shared --set train.batch_size=128`). Writes report.md, features.png, learning.png,
drift.json and summary.json to --out (default runs/compare_norms_<time>). See jtd3/compare.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from jtd3 import compare
from jtd3.cli import split_passthrough
from jtd3.machine import reexec_with_huge_pages

NORMS = compare.NORMS


def main(argv: list[str] | None = None) -> int:
    argv, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="scripts/compare_norms.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--norms", nargs="+", choices=NORMS, default=list(NORMS), help="normalizations to compare")
    p.add_argument("--max-timesteps", type=int, default=10_000, help="environment steps per run")
    p.add_argument("--eval-freq", type=int, default=2_500, help="evaluation interval of each run")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")
    p.add_argument("--out", type=Path, help="report directory (default runs/compare_norms_<time>)")
    p.add_argument("--probe-only", action="store_true", help="only the drift probe, no training")
    p.add_argument("--runs", nargs="+", type=Path, help="report on these existing run directories instead of training")
    args = p.parse_args(argv)

    out = args.out or Path("runs") / f"compare_norms_{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "scripts/compare_norms.py", *(sys.argv[1:] if argv is None else argv)])

    print("drift probe: NatureCNN per norm on camera stacks of the reference route, kernels x1/x10/x100")
    camera = compare.collect_camera_batch(64, seed=args.seed)
    drift = compare.drift_probe(camera, args.norms, seed=args.seed)
    for r in drift:
        print(f"  {r['norm']:>9}  {r['scope']:>4} x{r['factor']:<5g} per-sample L2 {r['l2_norm']:10.4g} "
              f"(max {r['l2_norm_max']:.4g})")

    runs: dict[str, Path] = {}
    if args.runs:
        for run_dir in args.runs:
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
            runs[f"{cfg['agent']['norm']} ({run_dir.name})"] = run_dir
    elif not args.probe_only:
        from jtd3.cli import train_main

        for norm in args.norms:
            print(f"\n=== training with --norm {norm} ({args.max_timesteps} steps) ===")
            code = train_main(["--norm", norm, "--seed", str(args.seed), "--max-timesteps", str(args.max_timesteps),
                               "--eval-freq", str(args.eval_freq), "--checkpoint-freq", str(args.eval_freq * 2),
                               "--logdir", str(out), "--run-name", norm, *passthrough])
            if code not in (0, 3):  # 3: the explosion alarm stopped the run; its logs are part of the comparison
                print(f"error: the {norm} run failed (exit {code})", file=sys.stderr)
                return code
            runs[norm] = out / norm

    summary = compare.summarise_runs(runs)
    compare.plot_runs(summary, drift, out)
    report = compare.write_report(out, drift, summary, command)
    print(f"\nreport: {report}\nplots:  {out / 'features.png'}, {out / 'learning.png'}")
    return 0


if __name__ == "__main__":
    reexec_with_huge_pages()  # the training runs happen in this process (jtd3.machine)
    sys.exit(main())
