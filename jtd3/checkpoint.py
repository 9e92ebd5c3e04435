"""Checkpoints of a training run: a thin layer over ``orbax.checkpoint.CheckpointManager`` (orbax 0.12).

One checkpoint (``<directory>/<step>/``) holds these orbax items:

- ``train_state``: the agent's train-state pytree (``StandardSave``). Typed PRNG keys are stored as their
  key data and re-wrapped with the template's key implementation on restore; dtypes and shapes must equal
  the template's (orbax would silently cast dtypes: :meth:`CheckpointStore.restore` refuses instead).
- ``loop_state``: a JSON-able dict (env steps, episode counters, exploration schedule, NumPy RNG state).
- ``meta``: format version and whether a replay buffer was saved.
- ``replay`` (optional): the :class:`jtd3.replay.ReplayBuffer` as ``.npy`` files (``ReplayBuffer.save``).
- ``metrics`` (optional): evaluation metrics, used to keep the best checkpoint.

Retention: the newest ``keep_last`` checkpoints, plus the ``keep_best`` best by ``best_metric`` (a tuple of
metric names compared in order, higher is better, so later names break ties; checkpoints saved without
metrics are never "best"). The replay buffer is large (about 7 GB at 1M slots), so only the newest
``replay_keep_last`` checkpoints keep it; older ones have their ``replay`` item removed (renamed away
first, so it is either whole or absent).

Crash safety. Saving is synchronous (``enable_async_checkpointing=False``): :meth:`CheckpointStore.save`
returns only after the step is committed. Orbax writes each step into ``<step>.orbax-checkpoint-tmp``
and commits it with one ``rename``; listing ignores temporary directories, so after a SIGKILL at any moment
the latest step is the last committed one and loads; leftovers are deleted when the directory is next
opened for writing. Async saving was not used because (1) the replay buffer is mutated in place by the
training loop right after ``save`` returns, so a background write would need a full copy of it (twice the
memory) to stay consistent with the train state; (2) with async saves "saved at step N" would not mean
committed, and a crash would resume from an older step than the loop had logged. The cost is that
training pauses while a checkpoint is written (``benchmarks/bench_replay.py`` measures it). Orbax does
not fsync, so the guarantee covers process death, not power loss.

Only one process may write a directory at a time; readers (evaluation) open it with ``mode="read"``,
which never deletes anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as ocp_preservation

from jtd3.agent import state as agent_state
from jtd3.checkpoint_tree import abstract, compare_to_saved, is_key, key_impl, savable
from jtd3.config import ConfigNode, check, param
from jtd3.replay import ReplayBuffer

__all__ = [
    "CheckpointConfig", "CheckpointDamagedError", "CheckpointStore", "Restored", "MODES", "committed_steps",
    "config_digest",
]

FORMAT_VERSION = 2
"""2: the agent's train state nested by side (``actor.params``, ``critic.opt_state``, ...). 1: one flat struct
(``actor_params``, ``critic_opt_state``, ...); still read (:func:`jtd3.agent.state.from_flat_v1`)."""
READABLE_VERSIONS = (1, 2)
MODES = ("new", "resume", "read")
_ITEM_TRAIN, _ITEM_LOOP, _ITEM_META, _ITEM_REPLAY = "train_state", "loop_state", "meta", "replay"
_TRASH_PREFIX = ".replay-trash-"


class CheckpointDamagedError(RuntimeError):
    """A committed checkpoint cannot be read back; the message names the step, the item and the file."""

    def __init__(self, message: str, *, step: int, item: str):
        super().__init__(message)
        self.step = step
        self.item = item


def config_digest(config: Mapping[str, Any]) -> str:
    """sha256 of a resolved config dict (canonical JSON), recorded in every checkpoint's meta."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@contextlib.contextmanager
def _damaged_on_failure(what: str, *, step: int, item: str) -> Iterator[None]:
    """Any failure inside the block (orbax, tensorstore, json and numpy errors: the file is damaged) becomes a
    one-line :class:`CheckpointDamagedError` ``"{what} (Type: first line)"``; interrupts, exits and memory
    errors pass through."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as e:
        raise CheckpointDamagedError(f"{what} ({_one_line(e)})", step=step, item=item) from e


def _check_replay_files(step: int, directory: Path) -> None:
    """Open every array file of a saved replay (header and size) so that a damaged one is named."""
    files = sorted(directory.glob("*.npy"))
    for p in [directory / "meta.json", *files]:
        with _damaged_on_failure(f"checkpoint {directory.parent} is damaged: replay file {p} cannot be read",
                                 step=step, item=_ITEM_REPLAY):
            if p.suffix == ".json":
                json.loads(p.read_text(encoding="utf-8"))
            else:
                np.load(p, mmap_mode="r", allow_pickle=False)


def _one_line(error: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (orbax and tensorstore errors span hundreds of lines)."""
    text = str(error).strip().splitlines()
    first = text[0].split(" See full TensorStore details")[0] if text else ""
    if len(first) > limit:
        first = first[:limit] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(ConfigNode):
    """Checkpoint settings (YAML section ``checkpoint``)."""

    keep_last: int = param(3, "number of newest checkpoints kept")
    keep_best: int = param(1, "number of best checkpoints (by best_metric) kept in addition")
    best_metric: tuple[str, ...] = param(
        ("success_rate", "route_completion"),
        "evaluation metrics ranking checkpoints, higher is better; later names break ties",
    )
    save_replay: bool = param(True, "store the replay buffer in checkpoints (needed for an exact resume)")
    replay_keep_last: int = param(
        2, "number of newest checkpoints that keep their replay buffer (2: the replay survives the loss of the "
        "latest checkpoint)"
    )

    def __post_init__(self):
        check(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, ">= 1")
        check(self.keep_best >= 0, "checkpoint.keep_best", self.keep_best, ">= 0")
        check(len(self.best_metric) >= 1, "checkpoint.best_metric", self.best_metric, "at least one metric name")
        check(
            1 <= self.replay_keep_last <= self.keep_last,
            "checkpoint.replay_keep_last",
            self.replay_keep_last,
            f"between 1 and keep_last ({self.keep_last})",
        )


# ----------------------------------------------------------------------------------------------------------
# Orbax item for the replay buffer


class ReplayCheckpointHandler(ocp.CheckpointHandler):
    """Saves/loads a :class:`ReplayBuffer` with its own ``save``/``load`` (plain ``.npy``, written once)."""

    def save(self, directory: epath.Path, args: ReplaySave) -> None:
        args.buffer.save(os.fspath(directory))

    def restore(self, directory: epath.Path, args: ReplayRestore) -> ReplayBuffer:
        args.buffer.load(os.fspath(directory))
        return args.buffer

    def metadata(self, directory: epath.Path) -> None:
        return None


@ocp.args.register_with_handler(ReplayCheckpointHandler, for_save=True)
@dataclasses.dataclass
class ReplaySave(ocp.args.CheckpointArgs):
    buffer: ReplayBuffer


@ocp.args.register_with_handler(ReplayCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class ReplayRestore(ocp.args.CheckpointArgs):
    buffer: ReplayBuffer  # loaded in place (same capacity and sizes as the saved one)


def check_json_state(value: Any, where: str = "loop_state") -> None:
    """Raise TypeError naming the first entry that would not come back from JSON unchanged.

    Allowed: dict with str keys, list, str, int, float, bool, None. Tuples and NumPy scalars are refused
    (JSON would turn them into lists/Python numbers, so a resumed run would not see the same state).
    """
    if value is None or isinstance(value, (bool, str, int, float)) and type(value) in (bool, str, int, float):
        return
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; JSON keys must be str")
            check_json_state(v, f"{where}[{k!r}]")
        return
    if type(value) is list:
        for i, v in enumerate(value):
            check_json_state(v, f"{where}[{i}]")
        return
    hint = "use a list" if isinstance(value, tuple) else "convert it with int()/float()/.tolist()"
    raise TypeError(f"{where} = {value!r} is a {type(value).__name__}, not JSON-exact; {hint}")


def _metric_key(names: tuple[str, ...]):
    def key(metrics: Mapping[str, Any]) -> tuple[float, ...]:
        return tuple(float(metrics[n]) for n in names)

    return key


@dataclasses.dataclass(frozen=True)
class Restored:
    """What :meth:`CheckpointStore.restore` returns."""

    step: int
    path: Path
    train_state: Any
    loop_state: dict[str, Any]
    metrics: dict[str, float] | None
    replay_restored: bool
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # format version, recorded config, ...


def committed_steps(directory: str | os.PathLike) -> list[int]:
    """Committed steps in ``directory`` (orbax's listing: temporary directories of killed saves are skipped);
    [] when it does not exist. Reads nothing else and writes nothing."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(m.step for m in ocp.step.standard_name_format().find_all(directory))


# ----------------------------------------------------------------------------------------------------------
# The store


class CheckpointStore:
    """Save and restore training checkpoints in ``directory``.

    Args:
        directory: the run's checkpoint directory.
        mode: ``"new"`` creates it; refuses a directory that already holds checkpoints (nothing is
            overwritten). ``"resume"`` requires at least one committed checkpoint and deletes leftovers of
            a killed save. ``"read"`` requires a committed checkpoint and never writes (evaluation; safe
            while a training process writes the same directory).
        keep_last, keep_best, best_metric, save_replay, replay_keep_last: see :class:`CheckpointConfig`.

    Raises:
        FileNotFoundError: ``resume``/``read`` on a missing directory or one without a committed
            checkpoint (the message names the path).
        FileExistsError: ``new`` on a directory that holds checkpoints.
        ValueError: invalid mode or settings.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        mode: str,
        *,
        keep_last: int = 3,
        keep_best: int = 1,
        best_metric: Sequence[str] = ("success_rate", "route_completion"),
        save_replay: bool = True,
        replay_keep_last: int = 1,
    ):
        if mode not in MODES:
            raise ValueError(f"mode = {mode!r}: must be one of {', '.join(map(repr, MODES))}")
        # Validation through the config class gives the same messages as a YAML file would.
        cfg = CheckpointConfig(
            keep_last=keep_last,
            keep_best=keep_best,
            best_metric=tuple(best_metric),
            save_replay=save_replay,
            replay_keep_last=replay_keep_last,
        )
        self.directory = Path(directory).absolute()
        self.mode = mode
        self.keep_last = cfg.keep_last
        self.keep_best = cfg.keep_best
        self.best_metric = cfg.best_metric
        self.save_replay = cfg.save_replay
        self.replay_keep_last = cfg.replay_keep_last

        existing = self._committed_steps_on_disk()
        if mode == "new":
            if existing:
                raise FileExistsError(
                    f"checkpoint directory {self.directory} already holds checkpoints (steps {existing}); "
                    "resume it or choose another directory"
                )
        else:
            if not self.directory.is_dir():
                raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
            if not existing:
                found = sorted(p.name for p in self.directory.iterdir())
                raise FileNotFoundError(
                    f"no committed checkpoint in {self.directory} (found: {found or 'nothing'})"
                )

        key = _metric_key(self.best_metric)
        policies: list[Any] = [ocp_preservation.LatestN(n=self.keep_last)]
        if self.keep_best:
            policies.append(
                ocp_preservation.BestN(
                    get_metric_fn=key, reverse=False, n=self.keep_best, keep_checkpoints_without_metrics=False
                )
            )
        writable = mode != "read"
        options = ocp.CheckpointManagerOptions(
            best_fn=key,
            best_mode="max",
            preservation_policy=ocp_preservation.AnyPreservationPolicy(policies),
            enable_async_checkpointing=False,
            create=mode == "new",
            cleanup_tmp_directories=writable,
            read_only=not writable,
            save_interval_steps=1 if writable else 0,  # orbax sets 0 for read-only managers (and warns)
        )
        if writable:
            self._empty_trash()
        # In write modes orbax deletes leftover temporary directories of killed saves (in the background,
        # awaited before the first save).
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    @classmethod
    def from_config(cls, directory: str | os.PathLike, mode: str, config: CheckpointConfig) -> CheckpointStore:
        return cls(
            directory,
            mode,
            keep_last=config.keep_last,
            keep_best=config.keep_best,
            best_metric=config.best_metric,
            save_replay=config.save_replay,
            replay_keep_last=config.replay_keep_last,
        )

    # ------------------------------------------------------------------------------------------------------
    # Queries

    def _committed_steps_on_disk(self) -> list[int]:
        return committed_steps(self.directory)

    def all_steps(self) -> list[int]:
        """Committed steps, ascending."""
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """Best step by ``best_metric`` among checkpoints saved with metrics; None if there is none."""
        if not any(self.metrics(s) is not None for s in self.all_steps()):
            return None
        return self._manager.best_step()

    def step_path(self, step: int) -> Path:
        return self.directory / str(step)

    def metrics(self, step: int) -> dict[str, float] | None:
        m = self._manager.metrics(step)
        return None if m is None else dict(m)

    def steps_with_replay(self) -> list[int]:
        return [s for s in self.all_steps() if (self.step_path(s) / _ITEM_REPLAY).is_dir()]

    def reload(self) -> None:
        """Re-read the directory (a reader following a training process that writes it)."""
        self._manager.reload()

    # ------------------------------------------------------------------------------------------------------
    # Save

    def save(
        self,
        step: int,
        train_state: Any,
        loop_state: Mapping[str, Any],
        *,
        replay: ReplayBuffer | None = None,
        metrics: Mapping[str, float] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Path:
        """Commit checkpoint ``step`` and apply the retention rules; returns the step's directory.

        ``replay`` is required when ``save_replay`` is on (and ignored, not written, when it is off).
        ``metrics`` must be the evaluation of exactly this train state, with every ``best_metric`` name, or
        None (then the checkpoint never counts as the best). ``config`` (the run's resolved config as a plain
        dict) is recorded in the step's ``meta`` with its sha256, so a resume can compare it.
        """
        if self.mode == "read":
            raise PermissionError(f"checkpoint store {self.directory} is open read-only (mode 'read')")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step = {step!r}: must be an int >= 0")
        step = int(step)
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise ValueError(f"step = {step}: must be greater than the latest checkpoint step {latest} in {self.directory}")
        if not isinstance(loop_state, Mapping):
            raise TypeError(f"loop_state must be a dict, got {type(loop_state).__name__}")
        check_json_state(dict(loop_state))
        if self.save_replay and replay is None:
            raise ValueError("save_replay is on but no replay buffer was passed (pass replay=buffer)")
        if metrics is not None:
            metrics = self._check_metrics(metrics)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "replay": bool(self.save_replay), "saved_at_unix_s": time.time()
        }
        if config is not None:
            config = dict(config)
            check_json_state(config, "config")
            meta["config"] = config
            meta["config_sha256"] = config_digest(config)

        items = {
            _ITEM_TRAIN: ocp.args.StandardSave(savable(train_state)),
            _ITEM_LOOP: ocp.args.JsonSave(dict(loop_state)),
            _ITEM_META: ocp.args.JsonSave(meta),
        }
        if self.save_replay:
            items[_ITEM_REPLAY] = ReplaySave(replay)
        saved = self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)
        self._manager.wait_until_finished()
        if not saved:
            raise RuntimeError(f"orbax declined to save step {step} in {self.directory}")
        self._prune_replays()
        return self.step_path(step)

    def _check_metrics(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        missing = [n for n in self.best_metric if n not in metrics]
        if missing:
            raise ValueError(
                f"metrics lack {', '.join(missing)} (needed to rank checkpoints by {self.best_metric}); "
                f"given: {', '.join(sorted(metrics))}"
            )
        out = {}
        for k, v in metrics.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                raise ValueError(f"metrics[{k!r}] = {v!r}: must be a finite number")
            out[str(k)] = float(v)
        return out

    def _prune_replays(self) -> None:
        """Remove the replay item from all but the newest ``replay_keep_last`` checkpoints that hold one.

        Counting only checkpoints with a replay means a save without one (``save_replay`` turned off on a
        resume) never deletes the last saved replay.
        """
        for step in self.steps_with_replay()[: -self.replay_keep_last]:
            src = self.step_path(step) / _ITEM_REPLAY
            if src.is_dir():
                dst = self.directory / f"{_TRASH_PREFIX}{step}-{os.getpid()}-{time.time_ns()}"
                os.rename(src, dst)  # atomic: the step's replay is whole or gone
                shutil.rmtree(dst)

    def _empty_trash(self) -> None:
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                if p.name.startswith(_TRASH_PREFIX) and p.is_dir():
                    shutil.rmtree(p)

    # ------------------------------------------------------------------------------------------------------
    # Restore

    def read_meta(self, step: int) -> dict[str, Any]:
        """The ``meta`` item of committed step ``step`` (format version, replay flag, recorded config).

        Raises FileNotFoundError for a step that is not committed, :class:`CheckpointDamagedError` when the
        item cannot be read.
        """
        path = self._committed_path(step)
        return self._restore_item(step, path, _ITEM_META, ocp.args.JsonRestore())

    def _committed_path(self, step: int) -> Path:
        self._manager.reload()
        steps = self.all_steps()
        path = self.step_path(int(step))
        if int(step) not in steps:
            raise FileNotFoundError(f"no committed checkpoint at {path} (committed steps: {steps})")
        return path

    def _restore_item(self, step: int, path: Path, item: str, args: Any) -> Any:
        """Restore one item; any failure becomes a one-line :class:`CheckpointDamagedError` naming it."""
        where = path / item / "metadata" if isinstance(args, ocp.args.JsonRestore) else path / item
        what = f"checkpoint {path} is damaged: {item} ({where}) cannot be read"
        with _damaged_on_failure(what, step=step, item=item):
            return self._manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]

    def restore(
        self, train_state_template: Any, step: int | None = None, *, replay: ReplayBuffer | None = None
    ) -> Restored:
        """Load checkpoint ``step`` (None: the latest committed one).

        ``train_state_template`` is a pytree with the structure, shapes and dtypes of the saved train state
        (concrete arrays, e.g. a freshly created state, or ``jax.ShapeDtypeStruct``s); restored arrays take
        its shardings. A ``replay`` buffer (same capacity and sizes) is loaded in place; it is touched only
        after every other item has been read, and a failure while loading it leaves it unusable (make a new
        one before trying another step).

        Items are read one at a time (meta, loop state, train state, replay), so a damaged file is named:
        :class:`CheckpointDamagedError` (one line: step, item, file, cause). FileNotFoundError names the path
        of a missing step; ValueError lists the leaves when the template does not match, or says that
        ``replay`` was given but the step holds none.
        """
        self._manager.reload()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no committed checkpoint in {self.directory}")
            step = steps[-1]
        step = int(step)
        path = self._committed_path(step)
        if replay is not None and not (path / _ITEM_REPLAY).is_dir():
            raise ValueError(
                f"checkpoint {path} holds no replay buffer (steps with one: {self.steps_with_replay()}); "
                "restore without replay= or choose one of those steps"
            )

        meta = self._restore_item(step, path, _ITEM_META, ocp.args.JsonRestore())
        version = meta.get("format_version") if isinstance(meta, Mapping) else meta
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{path}: checkpoint format_version {version!r}, this code reads {READABLE_VERSIONS}")
        # Format 1 stored the agent's train state flat: read it in that layout, then nest it by side.
        flat_v1 = version == 1 and isinstance(train_state_template, agent_state.TrainState)
        template = agent_state.to_flat_v1(train_state_template) if flat_v1 else train_state_template
        loop_state = self._restore_item(step, path, _ITEM_LOOP, ocp.args.JsonRestore())
        if not isinstance(loop_state, Mapping):
            raise CheckpointDamagedError(
                f"checkpoint {path} is damaged: {_ITEM_LOOP} ({path / _ITEM_LOOP}) holds a "
                f"{type(loop_state).__name__}, not a dict", step=step, item=_ITEM_LOOP,
            )

        converted = savable(template)
        with _damaged_on_failure(f"checkpoint {path} is damaged: {_ITEM_TRAIN} metadata ({path / _ITEM_TRAIN}) cannot "
                                 "be read", step=step, item=_ITEM_TRAIN):
            saved_tree = ocp.StandardCheckpointHandler().metadata(epath.Path(path / _ITEM_TRAIN)).tree
        saved = {
            m.name: (tuple(m.shape), m.dtype, isinstance(m, ocp.metadata.ScalarMetadata))
            for m in jax.tree.leaves(saved_tree, is_leaf=lambda m: hasattr(m, "dtype") and hasattr(m, "name"))
        }
        problems = compare_to_saved(converted, saved)
        if problems:
            raise ValueError(
                f"the train-state template does not match checkpoint {path / _ITEM_TRAIN}:\n  " + "\n  ".join(problems)
            )
        train = self._restore_item(step, path, _ITEM_TRAIN, ocp.args.StandardRestore(abstract(template)))
        if replay is not None:
            _check_replay_files(step, path / _ITEM_REPLAY)
            with _damaged_on_failure(f"checkpoint {path} is damaged: {_ITEM_REPLAY} ({path / _ITEM_REPLAY}) cannot be "
                                     "read", step=step, item=_ITEM_REPLAY):
                replay.load(os.fspath(path / _ITEM_REPLAY))

        restored = jax.tree.map(
            lambda t, x: jax.random.wrap_key_data(x, impl=key_impl(t)) if is_key(t) else x,
            template,
            train,
        )
        if flat_v1:
            restored = agent_state.from_flat_v1(train_state_template, restored)
        return Restored(
            step=step,
            path=path,
            train_state=restored,
            loop_state=dict(loop_state),
            metrics=self.metrics(step),
            replay_restored=replay is not None,
            meta=dict(meta),
        )

    # ------------------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
