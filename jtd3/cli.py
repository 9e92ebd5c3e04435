"""Command line of ``scripts/train.py``: flags -> config overrides -> a run directory -> :class:`jtd3.train.Trainer`.

Resolution order (later wins): ``configs/default.yaml`` (or ``--config FILE``), the seed-compatible flags
(``--norm``, ``--scenario``, ...), then ``--set key.sub=value`` overrides. The resolved config is written to
``<run_dir>/config.yaml``; ``--resume RUN_DIR`` reads it back and accepts changes to ``train.*`` keys only
(anything else would not match the saved train state).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from jtd3.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict, yaml_value

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
EXIT_USAGE = 2

# flag -> (config key, type)
FLAG_KEYS: dict[str, str] = {
    "norm": "agent.norm",
    "encoder": "agent.encoder",
    "lr": "agent.mlp_lr",
    "cnn_lr": "agent.cnn_lr",
    "scenario": "env.scenario",
    "env": "env.backend",
    "carla_host": "env.carla.host",
    "carla_port": "env.carla.port",
    "max_timesteps": "train.max_timesteps",
    "eval_freq": "train.eval_freq",
    "checkpoint_freq": "train.checkpoint_freq",
    "num_eval_episodes": "train.num_eval_episodes",
    "seed": "train.seed",
    "batch_size": "train.batch_size",
    "learning_starts": "train.learning_starts",
    "train_freq": "train.train_freq",
    "gradient_steps": "train.gradient_steps",
    "logdir": "train.logdir",
    "run_name": "train.run_name",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/train.py",
        description="Train TD3 (JAX/Flax) to drive from a camera stack plus a kinematic vector.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=str, default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
    p.add_argument("--norm", choices=("none", "layernorm", "batchnorm", "hybrid"), help="CNN normalization")
    p.add_argument("--encoder", choices=("separate", "shared"), help="encoder topology")
    p.add_argument("--scenario", type=int, choices=(0, 1, 2), help="NPC vehicles: 0/1/2 -> 20/50/100")
    p.add_argument("--env", choices=("sim", "carla"), help="backend: embedded simulator or CARLA server")
    p.add_argument("--carla-host", type=str, help="CARLA server host")
    p.add_argument("--carla-port", type=int, help="CARLA server RPC port")
    p.add_argument("--max-timesteps", type=int, help="environment steps to train for")
    p.add_argument("--eval-freq", type=int, help="environment steps between evaluations")
    p.add_argument("--checkpoint-freq", type=int, help="environment steps between checkpoints")
    p.add_argument("--num-eval-episodes", type=int, help="episodes per evaluation")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--batch-size", type=int, help="batch size")
    p.add_argument("--learning-starts", type=int, help="warm-up steps before learning")
    p.add_argument("--train-freq", type=int, help="env steps between update calls")
    p.add_argument("--gradient-steps", type=int, help="gradient steps per update call")
    p.add_argument("--lr", type=float, help="learning rate of the MLP heads (actor and critic)")
    p.add_argument("--cnn-lr", type=float, help="learning rate of the CNN encoders")
    p.add_argument("--logdir", type=str, help="directory holding run directories")
    p.add_argument("--run-name", type=str, help="run directory name")
    p.add_argument("--debug", action="store_true", help="log statistics every update, per conv layer")
    p.add_argument("--resume", type=str, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    return p


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={yaml_value(value)}")
    if args.debug:
        out.append("train.debug=true")
        out.append("agent.per_layer_stats=true")
    return out + list(args.set)


def resolve(argv: Sequence[str] | None = None) -> tuple[Any, Path, bool]:
    """Parse ``argv`` into ``(config, run_dir, resume)``; raises ConfigError/FileNotFoundError on bad input."""
    from jtd3.train import Config

    args = build_parser().parse_args(argv)
    overrides = _flag_overrides(args)
    if args.resume:
        run_dir = Path(args.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no run there ({saved} does not exist)")
        if args.config:
            raise ConfigError("--resume reads the run's own config.yaml; do not pass --config with it")
        changed = [o.split("=", 1)[0] for o in overrides if not o.startswith("train.")]
        changed = [k for k in changed if k != "agent.per_layer_stats"]
        if changed:
            raise ConfigError(
                f"--resume: cannot change {', '.join(changed)} (only train.* keys may change when resuming; "
                "the saved train state depends on the others)"
            )
        data = apply_overrides(load_yaml(str(saved)), overrides, Config)
        config = from_dict(Config, data)
        return config, run_dir, True

    data = load_yaml(args.config or str(DEFAULT_CONFIG))
    data = apply_overrides(data, overrides, Config)
    config = from_dict(Config, data)
    name = config.train.run_name or _default_run_name(config)
    run_dir = Path(config.train.logdir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"run directory {run_dir} already exists and is not empty; continue it with --resume {run_dir} "
            "or choose another --run-name"
        )
    return config, run_dir, False


def _default_run_name(config: Any) -> str:
    import time

    return (
        f"{config.agent.norm}_{config.agent.encoder}_s{config.env.scenario}_seed{config.train.seed}_"
        f"{time.strftime('%Y%m%d-%H%M%S')}"
    )


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/train.py``; returns the exit code."""
    try:
        config, run_dir, resume = resolve(argv)
    except (ConfigError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    # Before JAX creates a GPU client: leave GPU memory for a CARLA server on the same card.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(config.train.jax_memory_fraction))

    from jtd3.train import Trainer

    # A SIGTERM (e.g. from a job scheduler) unwinds like Ctrl-C, so the env closes cleanly: a CARLA server
    # left in synchronous mode by a dead client freezes.
    signal.signal(signal.SIGTERM, _raise_system_exit)

    run_dir.mkdir(parents=True, exist_ok=True)
    # On resume this records the train.* keys changed on the command line (e.g. a longer max_timesteps).
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    import jax

    print(f"jtd3: run directory {run_dir}  (JAX devices: {', '.join(str(d) for d in jax.devices())})")
    try:
        trainer = Trainer(config, run_dir, resume=resume)
    except Exception as e:  # connection and checkpoint problems: a message, not a traceback
        from jtd3.envs.carla_session import CarlaUnavailableError

        if isinstance(e, (CarlaUnavailableError, FileNotFoundError, FileExistsError, ValueError)):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise
    try:
        code = trainer.run()
    finally:
        trainer.close()
    print(f"jtd3: TensorBoard logs   {run_dir}   (tensorboard --logdir {run_dir.parent})")
    print(f"jtd3: checkpoints        {run_dir / 'checkpoints'}")
    print(f"jtd3: evaluation table   {run_dir / 'eval.csv'}")
    print(f"jtd3: final report       {run_dir / 'final_report.json'}")
    return code
