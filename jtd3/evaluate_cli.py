"""``jtd3-evaluate`` (and ``scripts/evaluate.py``): evaluate a policy on the driving environment; report JSON
+ Markdown, optional GIF and PNG stills.

Policies: ``--checkpoint RUN_DIR`` (the trained TD3 agent of a run: its latest checkpoint, ``--step N`` or
``--best``; the environment is the run's own unless overridden), or ``--policy`` ``pid`` (PID + pure pursuit on
the route, the classical baseline), ``random`` (uniform actions), ``still`` (brake held), ``offroad`` (constant
right steer with throttle). Episode i uses seed ``--seed + i``.

Writes to ``--out`` (default ``runs/eval/<policy>`` under the current directory): ``report.json``,
``report.md`` and, with ``--gif N``, for the first N episodes ``episode_<seed>.gif`` (camera frame beside a bird's-eye view) and ``episode_<seed>_<k>.png``
stills at the start, middle and end.

Examples::

    jtd3-evaluate --checkpoint runs/<run> --scenario 0 --num-episodes 20 --gif 1
    jtd3-evaluate --policy pid --episodes 20
    jtd3-evaluate --policy pid --episodes 20 --scenario 2 --gif 1
    jtd3-evaluate --policy random --episodes 5 --set route=random --set sim.town=grid3
    jtd3-evaluate --env carla --set carla.host=10.0.0.5   # needs a CARLA 0.9.16 server
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import imageio.v2 as imageio

from jtd3 import envs
from jtd3.backends.carla.errors import CarlaError
from jtd3.baselines.policy import PRESET_ACTIONS, ConstantPolicy, PurePursuitConfig, PurePursuitPolicy, RandomPolicy
from jtd3.checkpoint import CheckpointDamagedError
from jtd3.choices import BACKENDS
from jtd3.cli import default_config_path
from jtd3.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from jtd3.envs import EnvConfig
from jtd3.evaluate import AgentPolicy, evaluate, load_agent

POLICIES = ("pid", "random", "still", "offroad")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jtd3-evaluate",
        description="Evaluate a policy on the jtd3 driving environment (success rate, route completion, return, "
        "collisions/km, lane invasions/km, average speed, episode length).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, metavar="RUN_DIR",
                   help="evaluate the TD3 agent of a training run (a run directory, or one of its checkpoints/<step>)")
    p.add_argument("--step", type=int, help="with --checkpoint: this checkpoint step (default: the latest)")
    p.add_argument("--best", action="store_true", help="with --checkpoint: the best checkpoint by evaluation")
    p.add_argument("--policy", choices=POLICIES, default="pid", help="policy to evaluate (without --checkpoint)")
    p.add_argument("--episodes", "--num-episodes", dest="episodes", type=int, default=20, help="number of episodes")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (episode i: seed + i)")
    p.add_argument("--config", type=Path, default=None,
                   help="config YAML whose env section is used (default: the run's with --checkpoint, else the packaged "
                   "jtd3/configs/default.yaml)")
    p.add_argument("--env", choices=BACKENDS, help="backend (env key 'backend')")
    p.add_argument("--scenario", type=int, help="scenario (row of scenario_vehicles: 0/1/2 -> 20/50/100 NPCs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any EnvConfig key")
    p.add_argument("--policy-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a PurePursuitConfig key of --policy pid (e.g. lookahead_min_m=6)")
    p.add_argument("--out", type=Path, help="output directory (default <run>/eval_<step> with --checkpoint, else runs/eval/<policy>)")
    p.add_argument("--gif", type=int, default=0, metavar="N", help="record the first N episodes as GIF + PNG stills")
    p.add_argument("--gif-every", type=int, default=2, help="record every k-th step")
    return p


def make_policy(name: str, env, seed: int, pid_config=None):
    if name == "pid":
        return PurePursuitPolicy(env, pid_config)
    if name == "random":
        return RandomPolicy(seed)
    if name in PRESET_ACTIONS:
        return ConstantPolicy(PRESET_ACTIONS[name])
    raise ValueError(f"unknown policy {name!r}; choices: {', '.join(POLICIES)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.episodes < 1 or args.gif < 0 or args.gif_every < 1:
        print("error: --episodes >= 1, --gif >= 0 and --gif-every >= 1", file=sys.stderr)
        return 2

    agent_state = None
    try:
        if args.checkpoint is not None:

            if args.policy_set:
                raise ConfigError("--policy-set applies to --policy pid only")
            run_config, agent_state, step = load_agent(str(args.checkpoint), args.step, args.best)
            data = to_dict(run_config.env)
            policy_name = f"td3@{step}"
        else:
            if args.step is not None or args.best:
                raise ConfigError("--step and --best need --checkpoint")
            policy_name = args.policy
        if args.config is not None or args.checkpoint is None:
            data = load_yaml(str(args.config or default_config_path()))
            if "env" in data:  # a full run config (configs/default.yaml, a run's config.yaml)
                data = data["env"]
        data = {**data, "route_start": "beginning"}  # evaluation drives the whole route (training may start anywhere)
        sets = list(args.set)
        if args.env is not None:
            sets.insert(0, f"backend={args.env}")
        if args.scenario is not None:
            sets.insert(0, f"scenario={args.scenario}")
        cfg = from_dict(EnvConfig, apply_overrides(data, sets, EnvConfig))

        if args.policy_set and args.policy != "pid":
            raise ConfigError("--policy-set applies to --policy pid only")
        pid_cfg = from_dict(PurePursuitConfig, apply_overrides({}, args.policy_set, PurePursuitConfig))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, CheckpointDamagedError) as e:  # no run, damaged or mismatched checkpoint
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out is not None:
        out = args.out
    elif args.checkpoint is not None:
        run = args.checkpoint.parent.parent if args.checkpoint.parent.name == "checkpoints" else args.checkpoint
        out = run / f"eval_{step}"
    else:
        out = Path("runs") / "eval" / args.policy
    out.mkdir(parents=True, exist_ok=True)
    try:
        env = envs.make_env(cfg, render_mode="rgb_array" if args.gif else None)
    except Exception as e:  # CARLA not reachable, bad town for the route, ...: say what failed, no traceback

        if isinstance(e, (CarlaError, ValueError)):
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        raise
    try:
        if agent_state is not None:

            policy = AgentPolicy(agent_state)
        else:
            policy = make_policy(args.policy, env, args.seed, pid_cfg)
        t0 = time.perf_counter()
        report, recordings = evaluate(env, policy, args.episodes, args.seed, policy_name, args.gif, args.gif_every)
        wall = time.perf_counter() - t0
    finally:
        env.close()

    summary = report.to_dict()
    summary["config"] = to_dict(cfg)
    if agent_state is not None:
        summary["checkpoint"] = str(args.checkpoint)
    elif args.policy == "pid":
        summary["policy_config"] = to_dict(pid_cfg)
    summary["command"] = " ".join(["jtd3-evaluate", *(argv if argv is not None else sys.argv[1:])])
    summary["wall_s"] = wall
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = f"Evaluation: {policy_name}, backend {cfg.backend}, scenario {cfg.scenario}, route {cfg.route}"
    (out / "report.md").write_text(report.to_markdown(title) + f"\nCommand: `{summary['command']}`\n")
    for frames, result in zip(recordings, report.results):
        write_recording(out, result.seed, frames, fps=20.0 / args.gif_every)
    print(
        f"{policy_name}: {report.episodes} episodes, success {report.success_rate:.2f}, completion "
        f"{report.route_completion_mean:.3f}, return {report.return_mean:.1f} ± {report.return_std:.1f}, "
        f"collisions/km {_fmt(report.collisions_per_km)}, lane invasions/km {_fmt(report.lane_invasions_per_km)}, "
        f"{report.avg_speed_kmh:.1f} km/h, {report.episode_length_mean:.0f} steps, reward/step "
        f"[{report.reward_min:.2f}, {report.reward_max:.2f}]  ({wall:.1f} s) -> {out}"
    )
    return 0


def write_recording(out: Path, seed: int, frames: list, fps: float) -> None:
    """``episode_<seed>.gif`` and three PNG stills (first, middle, last frame)."""

    imageio.mimsave(out / f"episode_{seed}.gif", frames, duration=1.0 / fps, loop=0)
    for k, i in enumerate((0, len(frames) // 2, len(frames) - 1)):
        imageio.imwrite(out / f"episode_{seed}_{k}.png", frames[i])


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def console_main() -> None:
    """Console script ``jtd3-evaluate``."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
