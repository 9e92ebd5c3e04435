"""The training loop's settings (YAML section ``train``)."""

from __future__ import annotations

import dataclasses
import math
import os

from jtd3.checkpoint import CheckpointConfig
from jtd3.choices import ACTOR_KINDS
from jtd3.config import ConfigNode, check, choice, nested, param
from jtd3.replay import ReplayConfig
from jtd3.training.exploration import ExplorationConfig

__all__ = ["ActorsConfig", "TrainConfig"]


@dataclasses.dataclass(frozen=True)
class ActorsConfig(ConfigNode):
    """Who steps the environments (YAML section ``train.actors``; docs/scaling.md)."""

    kind: str = choice(
        "inline", ACTOR_KINDS,
        "inline: one environment in the learner process; process: num_envs environments in worker processes, "
        "acting on the batch in the learner; ray: num_envs Ray actors (one per CARLA server), each acting with the "
        "parameters the learner publishes",
    )
    num_envs: int = param(1, "environments stepping at the same time (inline: 1)")
    carla_servers: tuple[str, ...] = param(
        (), "backend carla: one host:port per environment (empty with num_envs 1: env.carla.host/port)"
    )
    overlap: bool = param(
        True, "process: the environments step while the learner runs the updates the previous step made due "
        "(the acting policy is one update call behind); false: act after them"
    )
    publish_every: int = param(
        50, "ray: the learner publishes its parameters to the actors every this many gradient steps (the bound on "
        "how far the acting policy lags behind, plus one transfer)"
    )
    chunk_steps: int = param(100, "ray: environment steps per actor call (an episode's steps come back in chunks)")
    max_restarts: int = param(3, "ray: times Ray restarts a dead actor (its episode in flight is dropped)")
    address: str | None = param(
        None, "ray: address of the cluster to join (ray start --head prints it); null: $RAY_ADDRESS, else a local "
        "cluster on this machine"
    )
    resource: str | None = param(
        "carla", "ray, backend carla: custom resource each actor needs one of (ray start --resources "
        "'{\"carla\": 1}' on each server machine); null: place actors anywhere"
    )

    def __post_init__(self):
        check(self.num_envs >= 1, "train.actors.num_envs", self.num_envs, ">= 1")
        check(self.kind != "inline" or self.num_envs == 1, "train.actors.num_envs", self.num_envs,
              "1 with train.actors.kind inline (use kind process or ray for more)")
        check(self.publish_every >= 1, "train.actors.publish_every", self.publish_every, ">= 1")
        check(self.chunk_steps >= 1, "train.actors.chunk_steps", self.chunk_steps, ">= 1")
        check(self.max_restarts >= 0, "train.actors.max_restarts", self.max_restarts, ">= 0")
        check(not self.carla_servers or len(self.carla_servers) == self.num_envs, "train.actors.carla_servers",
              list(self.carla_servers), f"one host:port per environment ({self.num_envs})")


@dataclasses.dataclass(frozen=True)
class TrainConfig(ConfigNode):
    """The actor loop, evaluation, checkpointing and logging (YAML section ``train``)."""

    seed: int = param(0, "seed of everything: agent init, episode seeds, exploration, replay sampling")
    max_timesteps: int = param(
        20_000, "environment steps to train for (the README's main job; the original ran 1,000,000)"
    )
    learning_starts: int = param(2_000, "environment steps taken by the warm-up policy before any update")
    batch_size: int = param(64, "transitions per gradient step")
    train_freq: int = param(4, "environment steps between two update calls")
    gradient_steps: int = param(
        2, "gradient steps per update call (one jitted lax.scan); with train_freq 4: one gradient step every two "
        "env steps (DrQ-v2's ratio with action repeat 2)"
    )
    eval_freq: int = param(2_500, "environment steps between evaluations")
    num_eval_episodes: int = param(10, "deterministic episodes per evaluation (they select the best checkpoint)")
    checkpoint_freq: int = param(2_500, "environment steps between checkpoints (a multiple of eval_freq)")
    log_freq: int = param(250, "environment steps between TensorBoard writes of update metrics (means)")
    debug: bool = param(False, "log update metrics after every update, with per-conv-layer statistics")
    logdir: str = param("runs", "directory holding run directories")
    run_name: str | None = param(None, "run directory name; null: <norm>_<encoder>_s<scenario>_seed<seed>_<time>")
    explosion_l2_threshold: float = param(
        1.0e4, "alarm when the per-sample feature L2 norm (max over the batch) exceeds this"
    )
    jax_memory_fraction: float = param(
        0.5, "fraction of GPU memory JAX may take (XLA_PYTHON_CLIENT_MEM_FRACTION), leaving room for CARLA"
    )
    jax_compilation_cache: str | None = param(
        "~/.cache/jtd3/jax", "JAX's persistent compilation cache: later runs load the compiled update, act and "
        "initialisation instead of compiling them (about 20 s less start-up on a 2-core CPU); one subdirectory per "
        "CPU kind; $JAX_COMPILATION_CACHE_DIR, when set, is used instead; null = off"
    )
    progress_bar: bool = param(True, "show a tqdm progress bar on the console")
    exploration: ExplorationConfig = nested(ExplorationConfig)
    actors: ActorsConfig = nested(ActorsConfig)
    replay: ReplayConfig = nested(ReplayConfig)
    checkpoint: CheckpointConfig = nested(CheckpointConfig)

    def __post_init__(self):
        for key in ("max_timesteps", "batch_size", "train_freq", "gradient_steps", "eval_freq", "checkpoint_freq",
                    "log_freq", "num_eval_episodes"):
            value = getattr(self, key)
            check(value >= 1, f"train.{key}", value, ">= 1")
        check(self.learning_starts >= 0, "train.learning_starts", self.learning_starts, ">= 0")
        check(self.checkpoint_freq % self.eval_freq == 0, "train.checkpoint_freq", self.checkpoint_freq,
              f"a multiple of train.eval_freq ({self.eval_freq}) so that every checkpoint carries its evaluation")
        check(math.isfinite(self.explosion_l2_threshold) and self.explosion_l2_threshold > 0,
              "train.explosion_l2_threshold", self.explosion_l2_threshold, "a finite number > 0 (the alarm cannot "
              "be switched off: an infinite threshold would hide exploding features)")
        check(0.0 < self.jax_memory_fraction <= 1.0, "train.jax_memory_fraction", self.jax_memory_fraction,
              "in (0, 1]")
        check(bool(self.logdir), "train.logdir", self.logdir, "a non-empty path")
        check(self.jax_compilation_cache is None or bool(self.jax_compilation_cache), "train.jax_compilation_cache",
              self.jax_compilation_cache, "a non-empty path or null (off)")
        check(self.run_name is None or _is_plain_name(self.run_name), "train.run_name", self.run_name,
              "one directory name inside train.logdir (no '/', not '.' or '..', not empty)")


def _is_plain_name(name: str) -> bool:
    """A single path component that stays inside its parent directory."""
    return bool(name) and name not in (".", "..") and "/" not in name and os.sep not in name and "\0" not in name
