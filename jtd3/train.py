"""The training loop: a Python actor loop over a DrivingEnv feeding a NumPy replay buffer and jitted TD3 updates.

Data flow per environment step::

    action = warm-up policy (first learning_starts steps) | agent.act(state, obs, key, noise)
    next_obs, reward, terminated, truncated, info = env.step(action)
    replay.add(obs, action, reward, next_obs, terminated, truncated)
    every train_freq steps: state, metrics = agent.update_many(state, replay.sample_many(gradient_steps, B))
    every eval_freq steps: deterministic evaluation on a separate env -> eval/* + eval.csv
    every checkpoint_freq steps: orbax checkpoint of the train state, the loop state and the replay buffer

Exact resume: every episode is reset with a seed derived from (train.seed, episode index), and the loop state
of a checkpoint records the actions taken so far in the current episode. On resume the env is reset with that
seed and the actions are replayed (the embedded simulator is deterministic), so the environment, the replay
buffer, the RNG streams and the agent continue exactly where the checkpoint left them. On a CARLA server (not
deterministic) a resume starts a new episode instead.

Explosion alarm: after every update the feature statistics and losses are checked
(:func:`jtd3.diagnostics.check_explosion`), and the parameters every ``log_freq`` steps; on an alarm the loop
logs ``alerts/*``, saves a checkpoint, prints the metric, value and step, and exits with code 3.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from jtd3.agent.config import AgentConfig
from jtd3.agent.learn import is_actor_metric
from jtd3.checkpoint import CheckpointConfig
from jtd3.config import ConfigError, ConfigNode, check, from_dict, nested, param, to_dict
from jtd3.envs.config import EnvConfig
from jtd3.exploration import ExplorationConfig, RandomDrivingPolicy, noise_scale
from jtd3.replay import ReplayConfig

__all__ = ["Config", "TrainConfig", "Trainer", "episode_seed", "eval_seed", "eval_summary"]

EXIT_OK = 0
EXIT_ALARM = 3


@dataclasses.dataclass(frozen=True)
class TrainConfig(ConfigNode):
    """The actor loop, evaluation, checkpointing and logging (YAML section ``train``)."""

    seed: int = param(0, "seed of everything: agent init, episode seeds, exploration, replay sampling")
    max_timesteps: int = param(
        15_000, "environment steps to train for (default: about 10 minutes on a 2-core CPU; the original ran 1,000,000)"
    )
    learning_starts: int = param(2_000, "environment steps taken by the warm-up policy before any update")
    batch_size: int = param(64, "transitions per gradient step")
    train_freq: int = param(4, "environment steps between two update calls")
    gradient_steps: int = param(
        4, "gradient steps per update call (one jitted lax.scan); with train_freq 4: one gradient step per env step, "
        "about 25% faster than 1/1 on CPU (fewer calls)"
    )
    eval_freq: int = param(2_500, "environment steps between evaluations")
    num_eval_episodes: int = param(3, "deterministic episodes per evaluation")
    checkpoint_freq: int = param(5_000, "environment steps between checkpoints (a multiple of eval_freq)")
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
    progress_bar: bool = param(True, "show a tqdm progress bar on the console")
    exploration: ExplorationConfig = nested(ExplorationConfig)
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
        check(self.explosion_l2_threshold > 0, "train.explosion_l2_threshold", self.explosion_l2_threshold, "> 0")
        check(0.0 < self.jax_memory_fraction <= 1.0, "train.jax_memory_fraction", self.jax_memory_fraction,
              "in (0, 1]")
        check(bool(self.logdir), "train.logdir", self.logdir, "a non-empty path")


@dataclasses.dataclass(frozen=True)
class Config(ConfigNode):
    """Everything a run needs; ``configs/default.yaml`` lists every key with its default."""

    agent: AgentConfig = nested(AgentConfig)
    env: EnvConfig = nested(EnvConfig)
    train: TrainConfig = nested(TrainConfig)


def load_config(data: dict[str, Any]) -> Config:
    return from_dict(Config, data)


def episode_seed(seed: int, episode: int) -> int:
    """Reset seed of training episode ``episode`` (independent streams per (seed, episode))."""
    return int(np.random.SeedSequence([seed, 0, episode]).generate_state(1)[0])


def eval_seed(seed: int) -> int:
    """Reset seed of the first evaluation episode (episode i uses it + i): the same at every evaluation."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0] % (2**31 - 1_000_000))


def eval_summary(report: Any) -> dict[str, float]:
    """The scalars of an evaluation report logged as ``eval/*`` (NaN where undefined, e.g. per km after 0 km)."""
    nan = float("nan")
    return {
        "success_rate": report.success_rate,
        "route_completion": report.route_completion_mean,
        "return_mean": report.return_mean,
        "return_std": report.return_std,
        "discounted_return_mean": report.discounted_return_mean,
        "collisions_per_km": nan if report.collisions_per_km is None else report.collisions_per_km,
        "lane_invasions_per_km": nan if report.lane_invasions_per_km is None else report.lane_invasions_per_km,
        "avg_speed_kmh": report.avg_speed_kmh,
        "episode_length": report.episode_length_mean,
        "distance_km": report.distance_km,
    }


def _json_floats(d: dict[str, float] | None) -> dict[str, float | None] | None:
    """Standard JSON has no NaN: undefined values become null."""
    return None if d is None else {k: (v if math.isfinite(v) else None) for k, v in d.items()}


# ----------------------------------------------------------------------------------------------------------


class _MetricWindow:
    """Means of update metrics between two TensorBoard writes (``*_max`` keys keep the max, ``*_min`` the min).

    Actor metrics exist on policy steps only (0.0 on the others): they are averaged over the update calls
    that made actor updates, weighted by ``losses/actor_updates``.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.extremes: dict[str, float] = {}
        self.count = 0
        self.actor_weight = 0.0

    def add(self, metrics: dict[str, float]) -> None:
        self.count += 1
        actor_updates = metrics.get("losses/actor_updates", 1.0)
        self.actor_weight += actor_updates
        for k, v in metrics.items():
            actor = is_actor_metric(k)
            if actor and actor_updates == 0:
                continue
            if k.endswith("_max"):
                self.extremes[k] = max(self.extremes.get(k, -math.inf), v)
            elif k.endswith("_min"):
                self.extremes[k] = min(self.extremes.get(k, math.inf), v)
            else:
                self.sums[k] += v * actor_updates if actor else v

    def means(self) -> dict[str, float]:
        out = {k: v / (self.actor_weight if is_actor_metric(k) else self.count) for k, v in self.sums.items()}
        out.update(self.extremes)
        return out


class Trainer:
    """One training run in ``run_dir``.

    Args:
        config: the resolved configuration (saved as ``run_dir/config.yaml`` by the CLI).
        run_dir: the run directory (TensorBoard events, ``checkpoints/``, ``eval.csv``, reports).
        resume: continue from the latest checkpoint in ``run_dir/checkpoints``.
    """

    def __init__(self, config: Config, run_dir: str | os.PathLike, *, resume: bool = False):
        import jax

        from jtd3 import agent as agent_lib
        from jtd3.checkpoint import CheckpointStore
        from jtd3.envs import make_env
        from jtd3.logging import RunLogger
        from jtd3.replay import ReplayBuffer

        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        tc = config.train
        self.tc = tc
        self._agent = agent_lib

        self.env = make_env(config.env, seed=None)
        # evaluation episodes start at the route's beginning whatever the training episodes do
        self.eval_env = make_env(dataclasses.replace(config.env, route_start="beginning"), seed=None)
        self.state = agent_lib.create(config.agent, self.env.observation_space, self.env.action_space, tc.seed)
        self.replay = ReplayBuffer.from_config(
            tc.replay, self.env.observation_space, self.env.action_space, seed=tc.seed
        )
        self.rng = np.random.default_rng(np.random.SeedSequence([tc.seed, 2]))
        self._key = jax.random.PRNGKey(np.random.SeedSequence([tc.seed, 3]).generate_state(1)[0])
        self.warmup = RandomDrivingPolicy(tc.exploration)

        # Loop counters (all in the checkpoint).
        self.env_steps = 0
        self.episodes = 0
        self.updates = 0
        self.warmup_speed_sum = 0.0
        self.warmup_speed_count = 0
        self.last_eval: dict[str, float] | None = None
        self._eval_step: int | None = None
        self._resumed_replay = False
        self.best_success = -1.0
        self.episode_actions: list[list[float]] = []

        ckpt_dir = self.run_dir / "checkpoints"
        self.ckpt = CheckpointStore.from_config(ckpt_dir, "resume" if resume else "new", tc.checkpoint)
        purge_step = None
        if resume:
            purge_step = self._restore()
        self.logger = RunLogger(self.run_dir, purge_step=purge_step)
        self.window = _MetricWindow()

    # ------------------------------------------------------------------------------------------------------
    # State

    def _loop_state(self) -> dict[str, Any]:
        import jax

        return {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "updates": self.updates,
            "episode_actions": self.episode_actions,
            "np_rng": self.rng.bit_generator.state,
            "loop_key": np.asarray(jax.device_get(self._key)).tolist(),
            "warmup_policy": self.warmup.state_dict(),
            "warmup_speed_sum": self.warmup_speed_sum,
            "warmup_speed_count": self.warmup_speed_count,
            "last_eval": _json_floats(self.last_eval),
            "best_success": self.best_success,
        }

    def _restore(self) -> int:
        import jax.numpy as jnp

        template = self.state
        with_replay = self.tc.checkpoint.save_replay
        restored = self.ckpt.restore(template, replay=self.replay if with_replay else None)
        self.state = restored.train_state
        ls = restored.loop_state
        self.env_steps = int(ls["env_steps"])
        self.episodes = int(ls["episodes"])
        self.updates = int(ls["updates"])
        self.episode_actions = [list(map(float, a)) for a in ls["episode_actions"]]
        self.rng.bit_generator.state = ls["np_rng"]
        self._key = jnp.asarray(np.asarray(ls["loop_key"], dtype=np.uint32))
        self.warmup.load_state_dict(ls["warmup_policy"])
        self.warmup_speed_sum = float(ls["warmup_speed_sum"])
        self.warmup_speed_count = int(ls["warmup_speed_count"])
        self.last_eval = None if ls["last_eval"] is None else {
            k: (float("nan") if v is None else float(v)) for k, v in ls["last_eval"].items()
        }
        self.best_success = float(ls["best_success"])
        self._resumed_replay = with_replay
        # Events the killed process wrote after the checkpoint are hidden; those at its step stay.
        return restored.step + 1

    # ------------------------------------------------------------------------------------------------------

    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        import jax

        tc = self.tc
        if self.env_steps < tc.learning_starts:
            return self.warmup(self.rng)
        self._key, sub = jax.random.split(self._key)
        scale = noise_scale(tc.exploration, self.env_steps - tc.learning_starts)
        batch = {k: v[None] for k, v in obs.items()}
        action = self._agent.act(self.state, batch, sub, scale)
        return np.asarray(jax.device_get(action))[0].astype(np.float32)

    def _start_episode(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, info = self.env.reset(seed=episode_seed(self.tc.seed, self.episodes))
        self.warmup.reset()
        self.episode_actions = []
        self._ep = {"return": 0.0, "length": 0, "speed_sum": 0.0, "components": defaultdict(float)}
        return obs, info

    def _resimulate_episode(self) -> dict[str, np.ndarray]:
        """Bring the env back to the checkpoint's mid-episode state by replaying the recorded actions."""
        actions = self.episode_actions
        obs, _ = self.env.reset(seed=episode_seed(self.tc.seed, self.episodes))
        self._ep = {"return": 0.0, "length": 0, "speed_sum": 0.0, "components": defaultdict(float)}
        for a in actions:
            obs, reward, terminated, truncated, info = self.env.step(np.asarray(a, np.float32))
            self._account(reward, info)
            if terminated or truncated:
                raise RuntimeError(
                    "replaying the current episode's actions after a resume ended the episode early: the "
                    "environment is not deterministic for a seed"
                )
        self.episode_actions = actions
        return obs

    def _account(self, reward: float, info: dict[str, Any]) -> None:
        ep = self._ep
        ep["return"] += float(reward)
        ep["length"] += 1
        ep["speed_sum"] += float(info["speed_kmh"])
        for k, v in info["reward_components"].items():
            ep["components"][k] += float(v)

    def _log_episode(self, info: dict[str, Any]) -> None:
        ep = self._ep
        n = max(ep["length"], 1)
        scalars = {
            "train/episode_reward": ep["return"],
            "train/episode_length": ep["length"],
            "train/speed_kmh": ep["speed_sum"] / n,
            "train/collisions": info["collisions"],
            "train/lane_invasions": info["lane_invasions"],
            "train/route_completion": info["route_completion"],
            "train/success": float(info["success"]),
            "train/distance_m": info["distance_m"],
            "train/episodes": self.episodes,
        }
        scalars.update({f"rewards/{k}": v for k, v in ep["components"].items()})
        self.logger.scalars(scalars, self.env_steps)
        self.last_episode_return = ep["return"]

    # ------------------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Train until ``max_timesteps``; returns the process exit code (0, or 3 on an explosion alarm)."""
        import jax

        from jtd3.diagnostics import check_explosion, tree_all_finite

        tc = self.tc
        resumed_mid_episode = self.resume and len(self.episode_actions) > 0
        if resumed_mid_episode and getattr(self, "_resumed_replay", False) and self.config.env.backend == "sim":
            obs = self._resimulate_episode()
        else:
            if self.resume:
                self.replay.start_new_episode()
            obs, _ = self._start_episode()

        self.last_episode_return = float("nan")
        bar = None
        if tc.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=tc.max_timesteps, initial=self.env_steps, unit="step", dynamic_ncols=True,
                       file=sys.stdout, mininterval=1.0)
        t_last, steps_last = time.perf_counter(), self.env_steps
        try:
            while self.env_steps < tc.max_timesteps:
                action = self._act(obs)
                if not np.isfinite(action).all():
                    return self._alarm([("actions/non_finite", float("nan"))])
                next_obs, reward, terminated, truncated, info = self.env.step(action)
                self.replay.add(obs, action, reward, next_obs, terminated, truncated)
                self.episode_actions.append([float(a) for a in action])
                self._account(reward, info)
                if self.env_steps < tc.learning_starts:
                    self.warmup_speed_sum += float(info["speed_kmh"])
                    self.warmup_speed_count += 1
                self.env_steps += 1
                obs = next_obs
                if terminated or truncated:
                    self._log_episode(info)
                    self.episodes += 1
                    obs, _ = self._start_episode()

                if self.env_steps == tc.learning_starts and self.warmup_speed_count:
                    self.logger.scalars(
                        {"charts/warmup_mean_speed_kmh": self.warmup_speed_sum / self.warmup_speed_count},
                        self.env_steps,
                    )

                if self.env_steps > tc.learning_starts and self.env_steps % tc.train_freq == 0:
                    batches = self.replay.sample_many(tc.gradient_steps, tc.batch_size)
                    self.state, metrics = self._agent.update_many(self.state, batches)
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    self.updates += tc.gradient_steps
                    alarms = check_explosion(metrics, tc.explosion_l2_threshold)
                    if tc.debug:
                        self.logger.scalars(metrics, self.env_steps)
                    else:
                        self.window.add(metrics)
                    if alarms:
                        return self._alarm(alarms)

                if self.env_steps % tc.log_freq == 0:
                    now = time.perf_counter()
                    sps = (self.env_steps - steps_last) / max(now - t_last, 1e-9)
                    t_last, steps_last = now, self.env_steps
                    scalars = {"charts/steps_per_second": sps, "charts/updates": self.updates}
                    if self.env_steps > tc.learning_starts:
                        scalars["charts/exploration_noise"] = noise_scale(
                            tc.exploration, self.env_steps - tc.learning_starts
                        )
                    if self.window.count:
                        scalars.update(self.window.means())
                        self.window.reset()
                    self.logger.scalars(scalars, self.env_steps)
                    if self.updates and not bool(tree_all_finite(self.state)):
                        return self._alarm([("params/non_finite", float("nan"))])
                    if bar is not None:
                        bar.set_postfix(
                            sps=f"{sps:.0f}",
                            ep_return=f"{self.last_episode_return:.1f}",
                            eval_success=("-" if self.last_eval is None else f"{self.last_eval['success_rate']:.2f}"),
                            refresh=False,
                        )

                if self.env_steps % tc.eval_freq == 0:
                    self._evaluate()
                if self.env_steps % tc.checkpoint_freq == 0:
                    self._checkpoint(with_metrics=True)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

        if self.env_steps % tc.eval_freq != 0:
            self._evaluate()
        if self.ckpt.latest_step() != self.env_steps:
            self._checkpoint(with_metrics=True)
        self._write_final_report()
        return EXIT_OK

    # ------------------------------------------------------------------------------------------------------

    def _evaluate(self) -> dict[str, float]:
        from jtd3.evaluate import evaluate
        from jtd3.logging import append_csv_row

        report, _ = evaluate(
            self.eval_env, self.policy(), self.tc.num_eval_episodes, seed=eval_seed(self.tc.seed),
            policy_name="td3", gamma=self.config.agent.gamma,
        )
        summary = eval_summary(report)
        self.last_eval = summary
        self._eval_step = self.env_steps
        # Per-km rates are undefined (NaN) after 0 km: they stay out of TensorBoard, and in the CSV as nan.
        self.logger.scalars({f"eval/{k}": v for k, v in summary.items() if math.isfinite(v)}, self.env_steps)
        append_csv_row(self.run_dir / "eval.csv", {"env_steps": self.env_steps, "updates": self.updates, **summary})
        with open(self.run_dir / "eval.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"env_steps": self.env_steps, "updates": self.updates, **report.to_dict()}) + "\n")
        return summary

    def policy(self):
        """The deterministic policy of the current train state, as ``obs -> action``."""
        from jtd3.evaluate import AgentPolicy

        return AgentPolicy(self.state)

    def _checkpoint(self, *, with_metrics: bool) -> Path:
        metrics = None
        if with_metrics and self.last_eval is not None and self._eval_step == self.env_steps:
            metrics = {k: v for k, v in self.last_eval.items() if math.isfinite(v)}
        return self.ckpt.save(
            self.env_steps, self.state, self._loop_state(),
            replay=self.replay if self.tc.checkpoint.save_replay else None, metrics=metrics,
        )

    def _alarm(self, alarms: list[tuple[str, float]]) -> int:
        self.logger.scalars({f"alerts/{name}": value for name, value in alarms}, self.env_steps)
        self.logger.flush()
        path = self.ckpt.save(
            self.env_steps, self.state, self._loop_state(),
            replay=self.replay if self.tc.checkpoint.save_replay else None,
        ) if self.ckpt.latest_step() != self.env_steps else self.ckpt.step_path(self.env_steps)
        name, value = alarms[0]
        others = "" if len(alarms) == 1 else f" (and {', '.join(n for n, _ in alarms[1:])})"
        print(
            f"\nEXPLOSION ALARM at env step {self.env_steps} (update {self.updates}): {name} = {value:.6g}"
            f"{others}; threshold for the feature L2 norm: {self.tc.explosion_l2_threshold:g}. "
            f"Checkpoint saved: {path}",
            file=sys.stderr,
        )
        return EXIT_ALARM

    def _write_final_report(self) -> None:
        out = {
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episodes": self.episodes,
            "warmup_mean_speed_kmh": (
                self.warmup_speed_sum / self.warmup_speed_count if self.warmup_speed_count else None
            ),
            "final_eval": _json_floats(self.last_eval),
            "checkpoint": str(self.ckpt.step_path(self.env_steps)),
            "best_checkpoint_step": self.ckpt.best_step(),
        }
        (self.run_dir / "final_report.json").write_text(json.dumps(out, indent=2))

    def close(self) -> None:
        self.logger.close()
        self.ckpt.close()
        self.env.close()
        self.eval_env.close()
