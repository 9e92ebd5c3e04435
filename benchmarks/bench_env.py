"""Speed of the whole environment step: ``DrivingEnv.step`` on the embedded simulator, one JSON line per row.

The step the trainer calls: simulator ticks (``action_repeat`` of them), 84x84 front camera, observation, reward
and route tracking. A constant action (straight, moderate speed target) from the reference route's start;
episodes that end are reset (resets are timed too, as in training). Single core:

    taskset -c 0 python benchmarks/bench_env.py [--steps 3000] [--scenarios 0 2] [--profile 20]

``--profile N`` adds, per scenario, the N functions with the most own time (cProfile) as one JSON line each, so
the line says where the step's time goes. ``--against REV`` adds, per scenario, the step as it is against the
step of git revision ``REV`` (its ``jtd3`` imported beside this one, ``benchmarks/revision.py``), in one
process, alternating 100-step chunks so both see the same machine speed. The meta line records the CPU model
and flags.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import json
import os
import platform
import pstats
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from jtd3.config import from_dict  # noqa: E402
from machine_info import cpu_info  # noqa: E402 (benchmarks/, the script's directory)
from revision import import_revision  # noqa: E402
from jtd3.envs import EnvConfig, make_env  # noqa: E402

cv2.setNumThreads(1)


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def run(env, action: np.ndarray, steps: int) -> tuple[int, int]:
    """``steps`` env steps (resetting finished episodes); returns (steps, resets)."""
    resets = 0
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
            resets += 1
    return steps, resets


def against(cfg_dict: dict, rev: str, action: np.ndarray, steps: int) -> dict[str, float]:
    """Steps/s of this env and of revision ``rev``'s, ``steps`` each, timed in alternating chunks of 100."""
    old = import_revision(rev)
    old_envs, old_config = (importlib.import_module(f"{old.__name__}.{m}") for m in ("envs", "config"))
    envs = {"this": make_env(from_dict(EnvConfig, cfg_dict), seed=0),
            "old": old_envs.make_env(old_config.from_dict(old_envs.EnvConfig, cfg_dict), seed=0)}
    chunk = min(100, steps)
    chunks = max(steps // chunk, 1)
    spent = dict.fromkeys(envs, 0.0)
    for env in envs.values():
        env.reset(seed=0)
        run(env, action, 200)
    for _ in range(chunks):
        for name, env in envs.items():
            t0 = time.perf_counter()
            run(env, action, chunk)
            spent[name] += time.perf_counter() - t0
    for env in envs.values():
        env.close()
    out = {f"{name}_steps_per_s": round(chunks * chunk / t, 1) for name, t in spent.items()}
    return {"rev": rev, **out, "speedup": round(spent["old"] / spent["this"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000, help="timed env steps per scenario")
    ap.add_argument("--scenarios", type=int, nargs="+", default=[0, 2], help="rows of env.scenario_vehicles")
    ap.add_argument("--profile", type=int, default=0, help="also emit the N functions with the most own time")
    ap.add_argument("--against", metavar="REV",
                    help="also time git revision REV's env step, alternating with this one in one process")
    args = ap.parse_args()
    emit(kind="meta", machine=platform.node(), python=platform.python_version(), numpy=np.__version__,
         affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None, **cpu_info())
    action = np.array([0.0, 0.3], np.float32)
    for scenario in args.scenarios:
        cfg = from_dict(EnvConfig, {"scenario": scenario})
        env = make_env(cfg, seed=0)
        env.reset(seed=0)
        run(env, action, 200)  # warm-up: caches, first episode
        t0 = time.perf_counter()
        steps, resets = run(env, action, args.steps)
        wall = time.perf_counter() - t0
        emit(kind="env_step", scenario=scenario, vehicles=cfg.num_vehicles, action_repeat=cfg.action_repeat,
             steps=steps, resets=resets, steps_per_s=round(steps / wall, 1),
             ticks_per_s=round(steps * cfg.action_repeat / wall, 1))
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            run(env, action, min(args.steps, 1500))
            prof.disable()
            stats = pstats.Stats(prof)
            total = sum(v[2] for v in stats.stats.values())  # own time of every function
            rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[: args.profile]
            for (filename, line, name), (_, ncalls, tottime, cumtime, _) in rows:
                emit(kind="profile", scenario=scenario, function=f"{os.path.relpath(filename)}:{line}({name})",
                     calls=ncalls, own_share=round(tottime / total, 3), cum_share=round(cumtime / total, 3))
        env.close()
        if args.against:
            emit(kind="against", scenario=scenario, vehicles=cfg.num_vehicles,
                 **against({"scenario": scenario}, args.against, action, args.steps))


if __name__ == "__main__":
    main()
