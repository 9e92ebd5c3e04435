"""Command line of ``jtd3-train`` (also ``python -m jtd3.train`` and ``scripts/train.py``): flags -> config
overrides -> checks -> a run directory -> :class:`jtd3.train.Trainer`.

Resolution order (later wins): the packaged ``jtd3/configs/default.yaml`` (or ``--config FILE``), the
seed-compatible flags (``--norm``, ``--scenario``, ...), then ``--set key.sub=value`` overrides.

Every check runs before the environment, the agent or a CARLA connection is built and before anything is
written: config values, the run name, the replay buffer's memory (with headroom for the rest of the process),
and on ``--resume`` the keys that may not change (:func:`jtd3.training.resume.is_state_key`: agent and env keys, the
seed, the replay capacity) against the run's ``config.yaml`` and against the config recorded in each
checkpoint. Every expected failure is one line ``error: ...`` on stderr and exit code 2. ``config.yaml`` is
written atomically (temporary file + rename) once every check has passed, before the trainer is built: a run
killed at any later moment can be resumed (one without a checkpoint yet starts again from step 0); a new run
whose trainer cannot be built (CARLA unreachable, ...) is removed again, so its name stays free.

Signals: the first SIGINT (Ctrl-C) or SIGTERM makes the loop save a checkpoint and exit with 128 + signal
number; a second one exits at once (the environments are still closed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from jtd3.choices import ACTOR_KINDS, BACKENDS, ENCODERS, NORMS
from jtd3.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict, yaml_value
from jtd3.files import write_text_atomic
from jtd3.machine import cpu_kind, onednn_version, reexec_with_huge_pages

EXIT_USAGE = 2
# Memory the process needs besides the replay buffer (JAX and XLA, the jitted update's buffers, the
# environments, sampled batches, the checkpoint writer); see docs/reliability.md for the measurement.
MEMORY_HEADROOM_GB = 2.0


def default_config_path() -> Path:
    """The packaged default config (``jtd3/configs/default.yaml``, package data)."""
    return Path(str(resources.files("jtd3").joinpath("configs", "default.yaml")))


# flag -> config key
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
    "actors": "train.actors.kind",
    "num_envs": "train.actors.num_envs",
    "carla_servers": "train.actors.carla_servers",
}


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``argv`` split at the first ``--``: (the script's own arguments, the training flags passed on after it)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jtd3-train",
        description="Train TD3 (JAX/Flax) to drive from a camera stack plus a kinematic vector.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=str, default=None, help="YAML config (default: the packaged jtd3/configs/default.yaml)")
    p.add_argument("--norm", choices=NORMS, help="CNN normalization")
    p.add_argument(
        "--encoder", choices=ENCODERS,
        help="encoder topology (original: the PyTorch original's wiring, to reproduce its failure)",
    )
    p.add_argument("--scenario", type=int, choices=(0, 1, 2), help="NPC vehicles: 0/1/2 -> 20/50/100")
    p.add_argument("--env", choices=BACKENDS, help="backend: embedded simulator or CARLA server")
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
    p.add_argument("--actors", choices=ACTOR_KINDS,
                   help="who steps the environments: inline (one, in the learner), process (worker processes), ray "
                        "(Ray actors, across machines); docs/scaling.md")
    p.add_argument("--num-envs", type=int, help="environments stepping at the same time")
    p.add_argument("--carla-servers", type=_server_list, metavar="HOST:PORT,...",
                   help="with --env carla: one CARLA server per environment")
    p.add_argument("--debug", action="store_true", help="log statistics every update, per conv layer")
    p.add_argument("--resume", type=str, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest intact checkpoint")
    p.add_argument("--resume-step", type=int, metavar="N",
                   help="with --resume: load checkpoint N (a regular one, or one the explosion alarm saved)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    return p


def _server_list(text: str) -> list[str]:
    from jtd3.envs.vector import parse_server

    servers = [x.strip() for x in text.split(",") if x.strip()]
    for x in servers:
        parse_server(x)  # ValueError -> argparse names the flag
    return servers


def make_trainer(config: Any, run_dir: Path, **kwargs: Any):
    """The trainer ``train.actors.kind`` asks for (same arguments as :class:`jtd3.train.Trainer`)."""
    kind = config.train.actors.kind
    if kind == "process":
        from jtd3.training.parallel import ParallelTrainer as cls
    elif kind == "ray":
        from jtd3.training.ray_actors import RayTrainer as cls
    else:
        from jtd3.train import Trainer as cls
    return cls(config, run_dir, **kwargs)


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


def _memory_check(config: Any) -> None:
    """Refuse a replay buffer that does not fit, before anything is allocated or built.

    With ``train.replay.memory_limit_gb`` the buffer must fit in that limit; otherwise in ``MemAvailable``
    minus :data:`MEMORY_HEADROOM_GB` for the rest of the process.
    """
    from jtd3.evaluate import env_spaces
    from jtd3.replay import available_memory_bytes, bytes_per_slot

    observation_space, action_space = env_spaces(config.env)
    camera, kinematics = observation_space["camera"].shape, observation_space["kinematics"].shape
    per_slot = bytes_per_slot(tuple(camera[1:]), kinematics[0], action_space.shape[0])["total"]
    capacity = config.train.replay.capacity
    needed = capacity * per_slot
    limit_gb = config.train.replay.memory_limit_gb
    if limit_gb is not None:
        usable, source = limit_gb * 1e9, f"train.replay.memory_limit_gb = {limit_gb:g}"
    else:
        try:
            available = available_memory_bytes()
        except RuntimeError as e:
            raise ConfigError(str(e)) from None
        usable = available - MEMORY_HEADROOM_GB * 1e9
        source = (f"{available / 1e9:.1f} GB available (MemAvailable) minus {MEMORY_HEADROOM_GB:g} GB headroom "
                  "for JAX, the environments and checkpoint writes")
    if needed > usable:
        fits = max(int(usable // per_slot), 0)
        raise ConfigError(
            f"config key 'train.replay.capacity' = {capacity:,}: the replay buffer needs {needed / 1e9:.3g} GB "
            f"({per_slot:,} bytes per slot) but {max(usable, 0) / 1e9:.3g} GB may be used ({source}); the largest "
            f"capacity that fits is {fits:,}"
        )


def _resolve_new(args: argparse.Namespace, overrides: list[str]) -> tuple[Any, Path]:
    from jtd3.run_config import Config

    data = load_yaml(args.config or str(default_config_path()))
    data = apply_overrides(data, overrides, Config)
    config = from_dict(Config, data)
    name = config.train.run_name or _default_run_name(config)
    run_dir = Path(config.train.logdir) / name
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise FileExistsError(
            f"run directory {run_dir} already exists and is not empty; continue it with --resume {run_dir} "
            "or choose another --run-name"
        )
    return config, run_dir


def _resolve_resume(args: argparse.Namespace, overrides: list[str]) -> tuple[Any, Path, list]:
    """The resumed run's config and the checkpoints to try; refuses state-defining changes (one line)."""
    from jtd3.run_config import Config
    from jtd3.training.resume import resume_candidates, state_differences

    run_dir = Path(args.resume)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no run there ({saved} does not exist)")
    if args.config:
        raise ConfigError("--resume reads the run's own config.yaml; do not pass --config with it")
    saved_config = from_dict(Config, load_yaml(str(saved)))
    config = from_dict(Config, apply_overrides(to_dict(saved_config), overrides, Config))
    diffs = state_differences(to_dict(saved_config), to_dict(config))
    if diffs:
        raise ConfigError(
            f"--resume: cannot change {'; '.join(diffs)}: the saved train state, replay and RNG streams depend "
            "on it (only train.* keys other than train.seed and train.replay.capacity may change)"
        )
    candidates = resume_candidates(run_dir, args.resume_step)
    if not candidates:
        print(f"note: {run_dir} has no checkpoint yet (the run stopped before its first one): it starts again "
              "from step 0", file=sys.stderr)
        return config, run_dir, []
    return config, run_dir, _check_recorded_configs(candidates, to_dict(config), explicit=args.resume_step is not None)


def _check_recorded_configs(candidates: list, current: dict, *, explicit: bool) -> list:
    """Read each candidate's meta; drop (and report) damaged ones, refuse a recorded config that differs
    in a state-defining key (a hand edit of config.yaml)."""
    from jtd3.checkpoint import CheckpointDamagedError, CheckpointStore
    from jtd3.training.resume import state_differences

    usable = []
    for cand in candidates:
        try:
            with CheckpointStore(cand.directory, "read") as store:
                meta = store.read_meta(cand.step)
        except CheckpointDamagedError as e:
            if explicit:
                raise
            print(f"warning: {e}", file=sys.stderr)
            continue
        recorded = meta.get("config") if isinstance(meta, dict) else None
        if recorded is None:
            print(f"note: checkpoint {cand.path} records no config (saved by an older jtd3); not compared",
                  file=sys.stderr)
        else:
            diffs = state_differences(recorded, current)
            if diffs:
                raise ConfigError(
                    f"--resume: config.yaml differs from the config recorded in checkpoint {cand.path}: "
                    f"{'; '.join(diffs)} (these keys define the saved state; restore them in config.yaml)"
                )
        usable.append(cand)
    if not usable:
        raise FileNotFoundError(
            f"--resume: every checkpoint is damaged ({', '.join(str(c.path) for c in candidates)})"
        )
    return usable


def resolve(argv: Sequence[str] | None = None) -> tuple[Any, Path, bool]:
    """Parse and check ``argv`` into ``(config, run_dir, resume)``; raises ConfigError, FileNotFoundError or
    FileExistsError (one-line messages) on bad input. Writes nothing."""
    config, run_dir, candidates = _resolve(build_parser().parse_args(argv))
    return config, run_dir, candidates is not None


def _resolve(args: argparse.Namespace) -> tuple[Any, Path, list | None]:
    overrides = _flag_overrides(args)
    if args.resume_step is not None and not args.resume:
        raise ConfigError("--resume-step needs --resume RUN_DIR")
    if args.resume:
        config, run_dir, candidates = _resolve_resume(args, overrides)
    else:
        (config, run_dir), candidates = _resolve_new(args, overrides), None
    _memory_check(config)
    return config, run_dir, candidates


def _default_run_name(config: Any) -> str:
    import time

    return (
        f"{config.agent.norm}_{config.agent.encoder}_s{config.env.scenario}_seed{config.train.seed}_"
        f"{time.strftime('%Y%m%d-%H%M%S')}"
    )


class _SignalHandler:
    """First SIGINT/SIGTERM: ask the trainer to save and stop (or leave at once if it is not running yet);
    the second: exit at once (``SystemExit`` unwinds, so the environments are still closed)."""

    def __init__(self):
        self.trainer: Any = None
        self.count = 0
        self.previous = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self)

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.trainer is None or self.count > 1:
            raise SystemExit(128 + signum)
        self.trainer.request_stop(signum)
        print(f"\njtd3: {signal.Signals(signum).name} received: saving a checkpoint and stopping (send it again "
              "to exit at once)", file=sys.stderr, flush=True)


def _conv_line(conv_impl: str) -> str:
    """The resolved ``agent.conv_impl``, with oneDNN's version when it is the one."""
    if conv_impl != "onednn":
        return conv_impl
    return f"onednn (oneDNN {onednn_version()})"


def _expected_errors() -> tuple[type[BaseException], ...]:
    from jtd3.backends.carla.errors import CarlaError
    from jtd3.checkpoint import CheckpointDamagedError

    return (ConfigError, FileNotFoundError, FileExistsError, CheckpointDamagedError, CarlaError, MemoryError,
            ValueError, ImportError)


def use_compilation_cache(path: str | None) -> str | None:
    """Point JAX's persistent compilation cache at ``path`` (``train.jax_compilation_cache``; ``~`` expanded),
    in a subdirectory per CPU kind (:func:`jtd3.machine.cpu_kind`), created if missing, and return the directory
    in use; None: off. A cache the caller chose (``$JAX_COMPILATION_CACHE_DIR``) is used as it is. Set through
    the environment, so that worker processes and Ray actors started from here use it too, and in JAX's config
    when JAX is already imported (JAX reads that setting at its first compilation, so it applies when nothing was
    compiled in the process yet). Every compilation is cached (``min_compile_time 0``): most of the start-up is
    many small ones (the networks' initialisation runs op by op)."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if path is None:
        return None
    directory = Path(path).expanduser() / cpu_kind()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"train.jax_compilation_cache: cannot create the directory {directory} ({e}); set it to a writable "
            "directory, or to null to compile without the cache"
        ) from e
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(directory)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if "jax" in sys.modules:  # JAX read the environment when it was imported
        import jax

        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    return str(directory)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jtd3-train``; returns the exit code (0, 2 expected failure, 3 alarm, 128+N signal)."""
    args = build_parser().parse_args(argv)
    try:
        config, run_dir, candidates = _resolve(args)
    except (ConfigError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        from jtd3.checkpoint import CheckpointDamagedError

        if isinstance(e, CheckpointDamagedError):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise
    resume = candidates is not None

    # Before JAX creates a GPU client: leave GPU memory for a CARLA server on the same card.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(config.train.jax_memory_fraction))
    try:
        use_compilation_cache(config.train.jax_compilation_cache)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    handler = _SignalHandler()
    handler.install()
    created = not run_dir.exists()
    trainer = None
    try:
        # config.yaml first (atomically; every check has passed): a run killed from here on can be resumed
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        if config.train.actors.kind == "ray":
            from jtd3.training.ray_actors import connect

            connect(config.train.actors)  # before JAX starts its threads
        import jax

        print(f"jtd3: run directory {run_dir}  (JAX devices: {', '.join(str(d) for d in jax.devices())})")
        trainer = make_trainer(config, run_dir, resume=resume, resume_candidates=candidates)
        print(f"jtd3: convolutions: {_conv_line(trainer.state.spec.conv_impl)}")
    except BaseException as e:
        handler.uninstall()
        if created and run_dir.exists():
            shutil.rmtree(run_dir)  # a new run that did not start: nothing of value, and the name stays free
        if isinstance(e, _expected_errors()):  # connection, memory and checkpoint problems: one line
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return EXIT_USAGE
        raise
    try:
        handler.trainer = trainer
        code = trainer.run()
    finally:
        handler.trainer = None
        trainer.close()
        handler.uninstall()
    print(f"jtd3: TensorBoard logs   {run_dir}   (tensorboard --logdir {run_dir.parent})")
    print(f"jtd3: checkpoints        {run_dir / 'checkpoints'}")
    print(f"jtd3: evaluation table   {run_dir / 'eval.csv'}")
    print(f"jtd3: final report       {run_dir / 'final_report.json'}")
    return code


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    text = lines[0] if len(lines) == 1 else lines[0] + " (" + " ".join(x.strip() for x in lines[1:]) + ")"
    return text


def main() -> None:
    """Console script ``jtd3-train``."""
    reexec_with_huge_pages()
    sys.exit(train_main())
