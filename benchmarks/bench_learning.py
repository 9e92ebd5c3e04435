"""Learning benchmark: train N seeds with one configuration, evaluate each run's final and selected checkpoints on
fresh episodes, and report success with 95 % intervals, driving quality, failures and learning curves.

    python benchmarks/bench_learning.py --seeds 0 1 2                       # the defaults, 3 seeds
    python benchmarks/bench_learning.py --seeds 0 1 --out runs/bench_ar4 -- --set env.action_repeat=4
    python benchmarks/bench_learning.py --seeds 0 1 2 --jobs 2               # two seeds at a time
    python benchmarks/bench_learning.py --seeds 0 1 2 --out DIR              # again: reuses finished runs,
                                                                              # resumes unfinished ones

Per seed, both the final checkpoint and the selected one (the best by the trainer's in-training evaluations)
are evaluated on ``--episodes`` episodes of scenario 0 whose reset seeds start at ``BENCH_SEED_BASE``: disjoint
from the in-training evaluation episodes that selected the checkpoint and from every training episode (checked,
not assumed). The selected checkpoint is also evaluated on ``--other-scenarios`` (50 / 100 NPCs).

Writes to ``--out``: ``runs/seed<k>/`` (the training runs), ``results.json`` (everything), ``report.md``,
``learning_curves.png`` (one line per seed, the band between the lowest and highest seed) and
``failures.png`` (where along the route the failed episodes ended, by reason). A benchmark, not a test: CI
runs only a tiny smoke of it (tests/test_bench_learning.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jtd3.envs import make_env  # noqa: E402
from jtd3.envs.reward import route_curvature  # noqa: E402
from jtd3.evaluate import AgentPolicy, evaluate, load_agent  # noqa: E402
from jtd3.machine import cpu_model  # noqa: E402
from jtd3.stats import bootstrap_iqm_interval, iqm, wilson_interval  # noqa: E402
from jtd3.training.bookkeeping import episode_seed, eval_seed  # noqa: E402

BENCH_SEED_BASE = 2**31 - 1_000_000 + 100_000  # evaluation episodes of scenario k: BENCH_SEED_BASE + 10_000 k + i
TURN_RADIUS_M = 25.0  # the turn starts where the route's curvature first exceeds 1 / TURN_RADIUS_M
GOAL = {"success_k_of_50": 45, "collisions_per_km": 0.5, "lane_invasions_per_km": 10.0, "speed_kmh": (20.0, 35.0)}


class TraceRecorder(gym.Wrapper):
    """Records the route arc length and speed after every step of the current episode."""

    def reset(self, **kw):
        self.trace: list[tuple[float, float]] = []
        return self.env.reset(**kw)

    def step(self, action):
        out = self.env.step(action)
        info = out[4]
        self.trace.append((float(info["route_s"]), float(info["speed_kmh"])))
        return out


def turn_entry_s(env) -> float | None:
    """Arc length where the route's first turn starts (curvature above 1 / TURN_RADIUS_M); None if straight."""
    route = env.unwrapped.route
    grid = np.arange(0.0, route.length, 0.5)
    curv = route_curvature(grid, route.point_at(grid)[2])
    sharp = np.flatnonzero(curv > 1.0 / TURN_RADIUS_M)
    return float(grid[sharp[0]]) if sharp.size else None


def evaluate_checkpoint(run_dir: Path, step: int | None, scenario: int, episodes: int) -> dict:
    """Evaluate one checkpoint on ``episodes`` fresh episodes of ``scenario`` (each from the route's beginning):
    the evaluation report plus Wilson interval, turn-entry speeds and where the failed episodes ended."""
    from jtd3.evaluate import summarise

    config, state, step = load_agent(str(run_dir), step=step)
    env = TraceRecorder(make_env(dataclasses.replace(config.env, route_start="beginning", scenario=scenario)))
    first = BENCH_SEED_BASE + 10_000 * scenario
    policy = AgentPolicy(state)
    results, entry_speeds, failures = [], [], []
    try:
        for i in range(episodes):
            report, _ = evaluate(env, policy, 1, seed=first + i, gamma=config.agent.gamma)
            r = report.results[0]
            results.append(r)
            entry = turn_entry_s(env)
            after = [v for s, v in env.trace if entry is not None and s >= entry]
            entry_speeds.append(after[0] if after else None)
            if not r.success:
                failures.append({"seed": r.seed, "reason": r.termination_reason, "route_s": env.trace[-1][0]})
    finally:
        env.close()
    k = sum(r.success for r in results)
    reached = [v for v in entry_speeds if v is not None]
    return {
        "step": step,
        "scenario": scenario,
        "episode_seeds": [first, first + episodes - 1],
        "successes": k,
        "episodes": episodes,
        "success_ci95": list(wilson_interval(k, episodes)),
        "turn_entry_speed_kmh_mean": float(np.mean(reached)) if reached else None,
        "turn_entry_speed_kmh_max": float(np.max(reached)) if reached else None,
        "failures": failures,
        "outcomes": [int(r.success) for r in results],
        "report": summarise(results, f"step {step}", config.agent.gamma).to_dict(),
    }


def check_disjoint(run_dir: Path, train_seed: int, scenarios: list[int], episodes: dict[int, int]) -> None:
    """Refuse evaluation seeds that a training episode or an in-training evaluation episode used."""
    loop = json.loads((run_dir / "final_report.json").read_text())
    cfg = _read_yaml(run_dir / "config.yaml")
    n_eval = int(cfg["train"]["num_eval_episodes"])
    used = {episode_seed(train_seed, e) for e in range(int(loop["episodes"]) + 1)}
    used |= set(range(eval_seed(train_seed), eval_seed(train_seed) + n_eval))
    for sc in scenarios:
        first = BENCH_SEED_BASE + 10_000 * sc
        clash = used & set(range(first, first + episodes[sc]))
        if clash:
            raise SystemExit(f"evaluation seeds {sorted(clash)} of scenario {sc} were used in training ({run_dir})")


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def train(seed: int, run_dir: Path, train_args: list[str], log: Path) -> float:
    """Train (or resume) one seed in a subprocess; returns the wall-clock seconds of this call."""
    if (run_dir / "final_report.json").is_file():
        return 0.0
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py")]
    if (run_dir / "config.yaml").is_file():
        cmd += ["--resume", str(run_dir)]
    else:
        cmd += ["--seed", str(seed), "--logdir", str(run_dir.parent), "--run-name", run_dir.name, *train_args]
    cmd += ["--set", "train.progress_bar=false"]
    print(f"[seed {seed}] {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    with open(log, "a", encoding="utf-8") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.monotonic() - t0
    if rc != 0:
        raise SystemExit(f"training seed {seed} exited with {rc}; see {log}")
    return wall


def learning_curve(run_dir: Path) -> dict[str, list[float]]:
    with open(run_dir / "eval.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in ("env_steps", "success_rate", "route_completion")}


def summarise_seeds(per_seed: list[dict], which: str) -> dict:
    outcomes = [s[which]["outcomes"] for s in per_seed]
    rates = [float(np.mean(o)) for o in outcomes]
    return {"iqm_success": iqm(rates), "iqm_success_ci95": list(bootstrap_iqm_interval(outcomes)), "per_seed": rates}


def goal_met(ev: dict) -> dict[str, bool]:
    rep = ev["report"]
    lo, hi = GOAL["speed_kmh"]
    cpk, lpk = rep["collisions_per_km"], rep["lane_invasions_per_km"]
    return {
        "success": ev["successes"] >= GOAL["success_k_of_50"] * ev["episodes"] / 50.0,
        "collisions_per_km": cpk is not None and cpk <= GOAL["collisions_per_km"],
        "lane_invasions_per_km": lpk is not None and lpk <= GOAL["lane_invasions_per_km"],
        "speed": lo <= rep["avg_speed_kmh"] <= hi,
    }


def failure_positions(per_seed: list[dict]) -> dict[str, list[float]]:
    """Route positions (m) of the failed episodes by termination reason: each seed's selected checkpoint, and its
    final one where that is another checkpoint (when they are the same, its episodes count once)."""
    out: dict[str, list[float]] = {}
    for s in per_seed:
        evals = [s["selected"]] + ([s["final"]] if s["final"]["step"] != s["selected"]["step"] else [])
        for ev in evals:
            for f in ev["failures"]:
                out.setdefault(f["reason"], []).append(f["route_s"])
    return dict(sorted(out.items()))


def plots(out: Path, per_seed: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "success_rate", "success rate"), (axes[1], "route_completion", "route completion")):
        curves = [s["curve"] for s in per_seed]
        for i, s in enumerate(per_seed):  # line styles and markers differ, so that equal curves stay visible
            ax.plot(s["curve"]["env_steps"], s["curve"][key], marker="osD^v"[i % 5], ms=4, fillstyle="none",
                    linestyle=("-", "--", ":", "-.")[i % 4], label=f"seed {s['seed']}")
        n = min(len(c["env_steps"]) for c in curves)
        if n:
            ys = np.array([c[key][:n] for c in curves])
            ax.fill_between(curves[0]["env_steps"][:n], ys.min(0), ys.max(0), alpha=0.15, color="grey")
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"{label} (in-training evaluation)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    by_reason = failure_positions(per_seed)
    if by_reason:
        ax.hist(list(by_reason.values()), bins=np.arange(0, 280, 10), stacked=True, label=list(by_reason))
        ax.legend()
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("route arc length where the failed episode ended (m)")
    ax.set_ylabel("failed episodes (all seeds)")
    ax.set_title("Where failures happen (scenario 0)")
    fig.tight_layout()
    fig.savefig(out / "failures.png", dpi=110)
    plt.close(fig)


def _fmt(v, f=".2f"):
    return "n/a" if v is None else format(v, f)


def row(seed: int, name: str, ev: dict) -> str:
    rep = ev["report"]
    lo, hi = ev["success_ci95"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rep["termination_reasons"].items()))
    met = goal_met(ev)
    return (
        f"| {seed} | {name} ({ev['step']}) | {ev['successes']}/{ev['episodes']} [{lo:.2f}, {hi:.2f}] | "
        f"{rep['route_completion_mean']:.3f} | {_fmt(rep['collisions_per_km'])} | "
        f"{_fmt(rep['lane_invasions_per_km'], '.1f')} | {rep['avg_speed_kmh']:.1f} | "
        f"{_fmt(ev['turn_entry_speed_kmh_mean'], '.1f')} / {_fmt(ev['turn_entry_speed_kmh_max'], '.1f')} | {reasons} | "
        f"{'yes' if all(met.values()) else 'no: ' + ', '.join(k for k, v in met.items() if not v)} |"
    )


def report_md(res: dict) -> str:
    lines = [
        "# Learning benchmark",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']['cpu']} ({res['machine']['cores']} cores); {res['date']}",
        "",
        f"Each checkpoint is evaluated on fresh episodes (reset seeds {BENCH_SEED_BASE}+; disjoint from the "
        "training episodes and from the in-training evaluations that selected the checkpoint). Success: k/n with "
        "the 95 % Wilson interval. Goal per seed: >= 45/50, <= 0.5 collisions/km, <= 10 lane invasions/km, "
        "20-35 km/h.",
        "",
        "## Scenario 0 (20 NPCs)",
        "",
        "| seed | checkpoint (step) | success | route completion | collisions/km | lane inv./km | km/h | "
        "turn entry km/h (mean / max) | endings | goal met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in res["seeds"]:
        lines.append(row(s["seed"], "final", s["final"]))
        lines.append(row(s["seed"], "selected", s["selected"]))
    agg = res["aggregate"]
    lines += [
        "",
        "Across seeds (IQM of the per-seed success rate, 95 % stratified bootstrap interval over seeds and episodes):",
        "",
        "| checkpoint | IQM success | interval | per seed |",
        "|---|---|---|---|",
    ]
    for which in ("final", "selected"):
        a = agg[which]
        lines.append(f"| {which} | {a['iqm_success']:.3f} | [{a['iqm_success_ci95'][0]:.3f}, "
                     f"{a['iqm_success_ci95'][1]:.3f}] | {', '.join(f'{r:.2f}' for r in a['per_seed'])} |")
    # --jobs describes this command; a reused run's wall clock is that of the call that trained it
    jobs = res.get("jobs", 1)
    title = "## Training runs" + (f" (this command: --jobs {jobs}; reused runs keep their own wall clock)"
                                  if jobs > 1 else "")
    lines += ["", title, "", "| seed | env steps | wall clock (min) | env steps/s | best step |",
              "|---|---|---|---|---|"]
    for s in res["seeds"]:
        t = s["training"]
        sps = t["env_steps"] / t["wall_s"] if t["wall_s"] else None
        lines.append(f"| {s['seed']} | {t['env_steps']} | {_fmt(t['wall_s'] / 60 if t['wall_s'] else None, '.1f')} | "
                     f"{_fmt(sps, '.1f')} | {s['selected']['step']} |")
    other = [(s["seed"], e) for s in res["seeds"] for e in s.get("other_scenarios", [])]
    if other:
        lines += ["", "## Other scenarios (selected checkpoint; not part of the goal)", "",
                  "| seed | scenario | success | route completion | collisions/km | lane inv./km | km/h | "
                  "turn entry km/h (mean / max) | endings | goal met |", "|---|---|---|---|---|---|---|---|---|---|"]
        for seed, e in other:
            lines.append(row(seed, f"scenario {e['scenario']}", e))
    lines += ["", "![learning curves](learning_curves.png)", "", "![failures](failures.png)", ""]
    return "\n".join(lines)


def bench_seed(seed: int, out: Path, train_args: list[str], episodes: int, other_scenarios: list[int],
               other_episodes: int) -> dict:
    """Train (or reuse) one seed's run in ``out/runs/seed<k>``, evaluate its final and selected checkpoints on
    ``episodes`` episodes of scenario 0 and the selected one on ``other_episodes`` of each other scenario;
    returns the seed's entry of ``results.json``."""
    run_dir = out / "runs" / f"seed{seed}"
    timing_file = run_dir / "bench_timing.json"
    wall = train(seed, run_dir, train_args, out / f"train_seed{seed}.log")
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {"wall_s": 0.0}
    timing["wall_s"] += wall
    timing_file.write_text(json.dumps(timing))
    final = json.loads((run_dir / "final_report.json").read_text())
    counts = {0: episodes, **{sc: other_episodes for sc in other_scenarios}}
    check_disjoint(run_dir, seed, [0, *other_scenarios], counts)
    best = final["best_checkpoint_step"] or final["env_steps"]
    # Evaluations are kept beside the run, keyed by what they evaluated: a rerun reports without redoing them.
    cache_file = run_dir / "bench_eval.json"
    key = json.dumps([final["env_steps"], best, episodes, other_scenarios, other_episodes])
    cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    if cached.get("key") == key:
        evals = cached["evals"]
    else:
        print(f"[seed {seed}] evaluating the final ({final['env_steps']}) and selected ({best}) checkpoints",
              flush=True)
        evals = {
            "final": evaluate_checkpoint(run_dir, final["env_steps"], 0, episodes),
            "selected": evaluate_checkpoint(run_dir, best, 0, episodes),
            "other_scenarios": [evaluate_checkpoint(run_dir, best, sc, other_episodes) for sc in other_scenarios],
        }
        cache_file.write_text(json.dumps({"key": key, "evals": evals}))
    entry = {
        "seed": seed,
        "training": {"env_steps": final["env_steps"], "wall_s": timing["wall_s"]},
        "curve": learning_curve(run_dir),
        **evals,
    }
    for name in ("final", "selected"):
        e = entry[name]
        print(f"[seed {seed}] {name} step {e['step']}: {e['successes']}/{e['episodes']} "
              f"{e['report']['termination_reasons']}", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--out", default="runs/bench_learning", help="output directory (reused: finished runs are kept)")
    ap.add_argument("--episodes", type=int, default=50, help="evaluation episodes per checkpoint (scenario 0)")
    ap.add_argument("--other-scenarios", type=int, nargs="*", default=[1, 2], help="also evaluate the selected "
                    "checkpoint on these scenarios")
    ap.add_argument("--other-episodes", type=int, default=20, help="episodes per other scenario")
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained and evaluated at once, each in its own "
                    "process: the same results; each run is slower, since every training uses all cores (docs/learning.md)")
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="after '--': flags for scripts/train.py "
                    "(e.g. -- --max-timesteps 20000 --set env.action_repeat=2)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds must be distinct (each seed has one run directory), got {args.seeds}")
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    work = [(seed, out, train_args, args.episodes, args.other_scenarios, args.other_episodes) for seed in args.seeds]
    if args.jobs == 1:
        per_seed = [bench_seed(*w) for w in work]
    else:
        # Each seed (training subprocess, then its evaluations) in its own worker process, `jobs` at a time; the
        # results are those of a sequential run (every run and evaluation is seeded), only sooner.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            per_seed = list(pool.map(bench_seed, *zip(*work)))
    res = {
        "command": " ".join(["python benchmarks/bench_learning.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpu": cpu_model() or platform.processor() or "unknown", "cores": os.cpu_count()},
        "jobs": args.jobs,
        "train_args": train_args,
        "seeds": per_seed,
        "aggregate": {w: summarise_seeds(per_seed, w) for w in ("final", "selected")},
        "goal_met_all_seeds": all(all(goal_met(s[w]).values()) for s in per_seed for w in ("final", "selected")),
    }
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "report.md").write_text(report_md(res))
    plots(out, per_seed)
    print(f"wrote {out / 'report.md'}, results.json, learning_curves.png, failures.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
