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
(:func:`jtd3.agent.diagnostics.check_explosion`), and the parameters every ``log_freq`` steps; on an alarm the loop
logs ``alerts/*``, saves a checkpoint, prints the metric, value and step, and exits with code 3.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal as signal_lib
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jtd3 import agent as agent_lib
from jtd3 import envs
from jtd3.agent.diagnostics import check_explosion, tree_all_finite
from jtd3.backends.carla.errors import CarlaError
from jtd3.checkpoint import CheckpointDamagedError, CheckpointStore, committed_steps
from jtd3.config import ConfigError, to_dict
from jtd3.evaluate import AgentPolicy, evaluate
from jtd3.logging import RunLogger, append_csv_row
from jtd3.machine import device_memory_mb
from jtd3.replay import ReplayBuffer
from jtd3.run_config import Config
from jtd3.training.bookkeeping import (
    MetricWindow, episode_seed, eval_seed, eval_summary, json_floats, new_episode_stats,
)
from jtd3.training.exploration import RandomDrivingPolicy, noise_scale
from jtd3.training.resume import (
    ALARM_DIR, ResumeCandidate, move_aside, resume_candidates, state_differences, trim_eval_logs,
)

__all__ = ["EXIT_ALARM", "EXIT_CARLA", "EXIT_OK", "Trainer"]

EXIT_OK = 0
EXIT_CARLA = 2  # CARLA failed carla.max_consecutive_failures times in a row (after saving a checkpoint)
EXIT_ALARM = 3


class StopRequested(Exception):
    """A signal asked the run to stop while an evaluation was running (raised by the evaluation's policy)."""


class CarlaGaveUp(Exception):
    """``carla.max_consecutive_failures`` CARLA failures in a row: the run saves and stops."""


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Trainer:
    """One training run in ``run_dir``.

    Nothing is written to ``run_dir`` before the environments, the agent and the replay buffer exist (a
    CARLA server that cannot be reached leaves no run directory behind).

    Args:
        config: the resolved configuration (saved as ``run_dir/config.yaml`` by the CLI).
        run_dir: the run directory (TensorBoard events, ``checkpoints/``, ``alarms/``, ``eval.csv``, reports).
        resume: continue from a checkpoint in ``run_dir``.
        resume_candidates: the checkpoints to try, in order (default: :func:`resume_candidates`); a damaged
            one is reported and the next is tried.
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | os.PathLike,
        *,
        resume: bool = False,
        resume_candidates: list[ResumeCandidate] | None = None,
    ):
        self.config = config
        self.config_record = to_dict(config)
        self.run_dir = Path(run_dir)
        self.resume = resume
        train_cfg = config.train
        self.train_cfg = train_cfg
        self._agent = agent_lib
        self.stop_signal: int | None = None
        self.max_failures = config.env.carla.max_consecutive_failures

        self.env, self.eval_env = self._make_envs()
        self.state = agent_lib.create(config.agent, self.env.observation_space, self.env.action_space, train_cfg.seed)
        self.replay = self._new_replay()
        self.rng = np.random.default_rng(np.random.SeedSequence([train_cfg.seed, 2]))
        self._key = jax.random.PRNGKey(np.random.SeedSequence([train_cfg.seed, 3]).generate_state(1)[0])
        self.warmup = RandomDrivingPolicy(train_cfg.exploration)

        # Loop counters (all in the checkpoint).
        self.env_steps = 0
        self.episodes = 0
        self.updates = 0
        self.warmup_speed_sum = 0.0
        self.warmup_speed_count = 0
        self.last_eval: dict[str, float] | None = None
        self._eval_step: int | None = None
        self._resumed_replay = False
        self.episode_actions: list[list[float]] = []
        self.lost_episodes = 0  # training episodes ended by a CARLA error
        self.consecutive_failures = 0
        self.restored_from: ResumeCandidate | None = None
        self._init_envs_state()

        purge_step = None
        if resume and resume_candidates == []:  # stopped before its first checkpoint: start again from step 0

            self.ckpt = CheckpointStore.from_config(self.run_dir / "checkpoints", "new", train_cfg.checkpoint)
            self.resume = False
            trim_eval_logs(self.run_dir, 0)
            purge_step = 0
        elif resume:
            purge_step = self._restore(resume_candidates)
        else:

            self.ckpt = CheckpointStore.from_config(self.run_dir / "checkpoints", "new", train_cfg.checkpoint)
        self.logger = RunLogger(self.run_dir, purge_step=purge_step)
        self.window = MetricWindow()

    def _make_envs(self):
        env = envs.make_env(self.config.env, seed=None)
        # evaluation episodes start at the route's beginning whatever the training episodes do
        eval_config = dataclasses.replace(self.config.env, route_start="beginning")
        if self.config.env.backend == "carla":
            # One session per server: evaluation runs on the training env's CARLA session between training
            # episodes (a second session on the same server would fight over its settings and actors).
            try:
                return env, envs.DrivingEnv(eval_config, backend=env.backend)
            except BaseException:
                env.close()
                raise
        try:
            return env, envs.make_env(eval_config, seed=None)
        except BaseException:
            env.close()
            raise

    @property
    def shared_backend(self) -> bool:
        """True when evaluation runs on the training env's backend (CARLA): evaluating ends the training episode."""
        return self.eval_env.backend is self.env.backend

    def _new_replay(self):
        return ReplayBuffer.from_config(
            self.train_cfg.replay, self.env.observation_space, self.env.action_space, seed=self.train_cfg.seed,
            streams=self._replay_streams(),
        )

    # Hooks of the loops over several environments (jtd3.training.parallel, jtd3.training.ray_actors).
    def _replay_streams(self) -> int:
        """Episode streams of the replay buffer: one per environment stepping at the same time."""
        return 1

    def _init_envs_state(self) -> None:
        """Per-environment loop state, before a resume restores it."""

    def _restore_extra(self, loop_state: dict[str, Any]) -> None:
        """Restore what :meth:`_loop_state` adds for several environments."""

    def request_stop(self, signum: int) -> None:
        """Ask the loop to save a checkpoint and return ``128 + signum`` at the next safe point."""
        self.stop_signal = signum

    # ------------------------------------------------------------------------------------------------------
    # State

    def _loop_state(self) -> dict[str, Any]:
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
            "last_eval": json_floats(self.last_eval),
            "lost_episodes": self.lost_episodes,
        }

    def _restore(self, candidates: list[ResumeCandidate] | None) -> int:
        """Load the first intact checkpoint of ``candidates``; returns the TensorBoard purge step."""
        if candidates is None:
            candidates = resume_candidates(self.run_dir)
        damaged: list[ResumeCandidate] = []
        restored = None
        for cand in candidates:
            with_replay = (cand.path / "replay").is_dir()
            try:
                with CheckpointStore(cand.directory, "read") as store:
                    restored = store.restore(self.state, cand.step, replay=self.replay if with_replay else None)
            except CheckpointDamagedError as e:
                damaged.append(cand)
                rest = [c.step for c in candidates if c not in damaged]
                _warn(f"warning: {e}" + (f"; trying checkpoint {rest[0]}" if rest else ""))
                self.replay = self._new_replay()  # a failed load may have touched it
                continue
            self.restored_from = cand
            break
        if restored is None:
            raise CheckpointDamagedError(
                f"--resume {self.run_dir}: no intact checkpoint (damaged: {', '.join(str(c.path) for c in damaged)})",
                step=candidates[-1].step, item="all",
            )
        recorded = restored.meta.get("config")
        if recorded is not None:
            diffs = state_differences(recorded, self.config_record)
            if diffs:
                raise ConfigError(
                    f"--resume: checkpoint {restored.path} was saved with other state-defining settings: "
                    f"{'; '.join(diffs)}"
                )
        if not with_replay:
            _warn(f"note: checkpoint {restored.path} holds no replay buffer; the replay starts empty and the "
                  "resume is not exact")

        # Move aside what this resume supersedes, then open the store for writing: damaged regular checkpoints
        # and regular checkpoints newer than the one loaded (--resume-step N or a fallback) are kept, not deleted.
        regular_dir = self.run_dir / "checkpoints"
        for c in damaged:
            if c.kind == "regular":
                move_aside(self.run_dir, c, "damaged_checkpoints")
        for s in committed_steps(regular_dir):
            if s > restored.step:
                move_aside(self.run_dir, ResumeCandidate(regular_dir, s, "regular"), "superseded_checkpoints")
        mode = "resume" if committed_steps(regular_dir) else "new"
        self.ckpt = CheckpointStore.from_config(regular_dir, mode, self.train_cfg.checkpoint)
        if self.restored_from.kind == "alarm":
            alarm = restored.loop_state.get("alarm") or []
            what = ", ".join(f"{n} = {v}" for n, v in alarm) or "unknown metric"
            _warn(f"note: resuming from the checkpoint the explosion alarm saved at env step {restored.step} "
                  f"({restored.path}; it holds the state that fired the alarm: {what})")

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
        self.lost_episodes = int(ls.get("lost_episodes", 0))
        self._restore_extra(ls)
        self._resumed_replay = with_replay
        trim_eval_logs(self.run_dir, restored.step)
        # Events the killed process wrote after the checkpoint are hidden; those at its step stay.
        return restored.step + 1

    # ------------------------------------------------------------------------------------------------------

    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        train_cfg = self.train_cfg
        if self.env_steps < train_cfg.learning_starts:
            return self.warmup(self.rng)
        self._key, sub = jax.random.split(self._key)
        scale = noise_scale(train_cfg.exploration, self.env_steps - train_cfg.learning_starts)
        batch = {k: v[None] for k, v in obs.items()}
        action = self._agent.act(self.state, batch, sub, scale)
        return np.asarray(jax.device_get(action))[0].astype(np.float32)

    def _start_episode(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, info = self.env.reset(seed=episode_seed(self.train_cfg.seed, self.episodes))
        self.warmup.reset()
        self.episode_actions = []
        self._ep = new_episode_stats()
        return obs, info

    def _new_episode(self, *, cut: bool) -> dict[str, np.ndarray]:
        """Start the next training episode; ``cut``: the current one ends without terminated/truncated
        (evaluation on the shared CARLA session, a lost episode, a resume). CARLA errors are recovered from."""

        if cut:
            self.replay.start_new_episode()
        try:
            return self._start_episode()[0]
        except CarlaError as e:
            return self._recover(e, "reset")

    def _recover(self, error: BaseException, during: str) -> dict[str, np.ndarray]:
        """A CARLA error ended the training episode: count it, start a new episode (the session reconnects,
        or restarts the server with ``carla.server_command``); raise CarlaGaveUp after
        ``carla.max_consecutive_failures`` failures in a row. What is in the replay stays consistent: the
        failed step added nothing and the next episode starts a new replay episode."""

        while True:
            self.consecutive_failures += 1
            self.lost_episodes += 1
            first = (str(error).strip().splitlines() or [""])[0]
            _warn(f"jtd3: CARLA {type(error).__name__} during {during} at env step {self.env_steps}: {first} "
                  f"(episode abandoned; {self.consecutive_failures}/{self.max_failures} failures in a row)")
            self.logger.scalars({"charts/carla_lost_episodes": self.lost_episodes}, self.env_steps)
            if self.consecutive_failures >= self.max_failures:
                raise CarlaGaveUp(f"{type(error).__name__} during {during}: {first}") from error
            self.episodes += 1
            self.replay.start_new_episode()
            try:
                return self._start_episode()[0]
            except CarlaError as e:
                error, during = e, "reset"

    def _resimulate_episode(self) -> dict[str, np.ndarray]:
        """Bring the env back to the checkpoint's mid-episode state by replaying the recorded actions."""
        actions = self.episode_actions
        obs, _ = self.env.reset(seed=episode_seed(self.train_cfg.seed, self.episodes))
        self._ep = new_episode_stats()
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
        """Train until ``max_timesteps``; returns the process exit code: 0, 3 on an explosion alarm, 2 when
        CARLA failed ``max_consecutive_failures`` times in a row, ``128 + signum`` after :meth:`request_stop`
        (each after saving a checkpoint)."""
        try:
            return self._run()
        except CarlaGaveUp as e:
            path = self._save_now()
            print(
                f"error: CARLA failed {self.consecutive_failures} times in a row (carla.max_consecutive_failures = "
                f"{self.max_failures}; last: {e}); checkpoint saved at env step {self.env_steps}: {path}; "
                f"continue with --resume {self.run_dir} when the server works again",
                file=sys.stderr, flush=True,
            )
            return EXIT_CARLA

    def _save_now(self) -> Path:
        if self.ckpt.latest_step() == self.env_steps:
            return self.ckpt.step_path(self.env_steps)
        return self._checkpoint(with_metrics=True)

    def _stopped(self) -> int:
        path = self._save_now()
        self.logger.flush()
        name = signal_lib.Signals(self.stop_signal).name
        print(f"\njtd3: stopped by {name} at env step {self.env_steps}; checkpoint saved: {path}; continue with "
              f"--resume {self.run_dir}", file=sys.stderr, flush=True)
        return 128 + int(self.stop_signal)

    # ------------------------------------------------------------------------------------------------------
    # What follows environment steps: updates, logging, evaluation, checkpoints

    def _update_calls_due(self, prev: int, now: int) -> int:
        """Update calls the steps ``prev + 1 .. now`` make due: one at every multiple of train_freq past
        learning_starts."""
        train_cfg = self.train_cfg
        lower = max(prev, train_cfg.learning_starts)
        return now // train_cfg.train_freq - lower // train_cfg.train_freq if now > lower else 0

    def _update(self, calls: int) -> int | None:
        """``calls`` update calls of ``gradient_steps`` each; EXIT_ALARM when the explosion alarm fires."""
        train_cfg, ac = self.train_cfg, self.config.agent
        for _ in range(calls):
            batches = self.replay.sample_many(
                train_cfg.gradient_steps, train_cfg.batch_size, n_step=ac.n_step, gamma=ac.gamma
            )
            self.state, metrics = self._agent.update_many(self.state, batches)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            self.updates += train_cfg.gradient_steps
            alarms = check_explosion(metrics, train_cfg.explosion_l2_threshold)
            if train_cfg.debug:
                self.logger.scalars(metrics, self.env_steps)
            else:
                self.window.add(metrics)
            if alarms:
                return self._alarm(alarms)
            self._after_update_call()
        return None

    def _after_update_call(self) -> None:
        """Called after each update call (Ray actors publish the parameters from here)."""

    def _after_steps(self, prev: int, bar, *, updates: bool = True) -> tuple[int | None, bool]:
        """The work the env steps ``prev + 1 .. env_steps`` make due, in order: the warm-up speed, the update
        calls (unless ``updates`` is False: the caller runs them), the TensorBoard write, the evaluation, the
        checkpoint. Returns (an exit code or None, whether an evaluation ran)."""

        train_cfg, now = self.train_cfg, self.env_steps

        def crossed(freq: int) -> bool:
            return now // freq > prev // freq

        if prev < train_cfg.learning_starts <= now and self.warmup_speed_count:
            self.logger.scalars(
                {"charts/warmup_mean_speed_kmh": self.warmup_speed_sum / self.warmup_speed_count}, now
            )
        if updates:
            code = self._update(self._update_calls_due(prev, now))
            if code is not None:
                return code, False
        if crossed(train_cfg.log_freq):
            t = time.perf_counter()
            sps = (now - self._steps_last) / max(t - self._t_last, 1e-9)
            self._t_last, self._steps_last = t, now
            scalars = {"charts/steps_per_second": sps, "charts/updates": self.updates}
            for key, mib in device_memory_mb().items():  # GPUs only: XLA:CPU reports no allocator statistics
                scalars[f"charts/device_memory_{key}_mb"] = mib
            if now > train_cfg.learning_starts:
                scalars["charts/exploration_noise"] = noise_scale(
                    train_cfg.exploration, now - train_cfg.learning_starts
                )
            scalars.update(self._extra_log_scalars())
            if self.window.count:
                scalars.update(self.window.means())
                self.window.reset()
            self.logger.scalars(scalars, now)
            if self.updates and not bool(tree_all_finite(self.state)):
                return self._alarm([("params/non_finite", float("nan"))]), False
            if bar is not None:
                bar.set_postfix(
                    sps=f"{sps:.0f}",
                    ep_return=f"{self.last_episode_return:.1f}",
                    eval_success=("-" if self.last_eval is None else f"{self.last_eval['success_rate']:.2f}"),
                    refresh=False,
                )
        evaluated = False
        if crossed(train_cfg.eval_freq):
            evaluated = True
            try:
                self._evaluate_safely()
            except StopRequested:
                pass
            if self.stop_signal is not None:
                return self._stopped(), evaluated
        if crossed(train_cfg.checkpoint_freq):
            self._checkpoint(with_metrics=True)
        return None, evaluated

    def _extra_log_scalars(self) -> dict[str, float]:
        """More ``charts/*`` for the periodic TensorBoard write (parallel actors add theirs)."""
        return {}

    def _finish(self) -> int:
        """After the last step: a final evaluation and checkpoint (unless the last step made them), the report."""
        if self.env_steps % self.train_cfg.eval_freq != 0:
            try:
                self._evaluate_safely()
            except StopRequested:
                return self._stopped()
        if self.ckpt.latest_step() != self.env_steps:
            self._checkpoint(with_metrics=True)
        self._write_final_report()
        return EXIT_OK

    def _progress_bar(self):
        if not self.train_cfg.progress_bar:
            return None

        return tqdm(total=self.train_cfg.max_timesteps, initial=self.env_steps, unit="step", dynamic_ncols=True,
                    file=sys.stdout, mininterval=1.0)

    def _run(self) -> int:
        """The loop every trainer shares: its first observations, then iterations until ``max_timesteps`` with a
        stop check before each, the progress bar, and the final evaluation and report (:meth:`_finish`)."""
        self.last_episode_return = float("nan")
        self._begin()
        bar = self._progress_bar()
        self._t_last, self._steps_last = time.perf_counter(), self.env_steps
        try:
            while self.env_steps < self.train_cfg.max_timesteps:
                if self.stop_signal is not None:
                    return self._stopped()
                prev = self.env_steps
                code = self._iteration(bar)
                if code is not None:
                    return code
                if bar is not None:
                    bar.update(self.env_steps - prev)
        finally:
            if bar is not None:
                bar.close()
        return self._finish()

    def _begin(self) -> None:
        """Before the loop: the first observation (a resumed episode is re-simulated on the simulator)."""
        resumed_mid_episode = self.resume and len(self.episode_actions) > 0
        if resumed_mid_episode and self._resumed_replay and self.config.env.backend == "sim":
            self._obs = self._resimulate_episode()
        else:
            self._obs = self._new_episode(cut=self.resume)

    def _iteration(self, bar) -> int | None:
        """One env step, its replay write, and the work it makes due; an exit code ends the run."""
        train_cfg, obs = self.train_cfg, self._obs
        action = self._act(obs)
        if not np.isfinite(action).all():
            return self._alarm([("actions/non_finite", float("nan"))])
        try:
            next_obs, reward, terminated, truncated, info = self.env.step(action)
        except CarlaError as e:
            self._obs = self._recover(e, "step")
            return None
        self.consecutive_failures = 0
        self.replay.add(obs, action, reward, next_obs, terminated, truncated)
        self.episode_actions.append([float(a) for a in action])
        self._account(reward, info)
        if self.env_steps < train_cfg.learning_starts:
            self.warmup_speed_sum += float(info["speed_kmh"])
            self.warmup_speed_count += 1
        self.env_steps += 1
        self._obs = next_obs
        if terminated or truncated:
            self._log_episode(info)
            self.episodes += 1
            self._obs = self._new_episode(cut=False)
        code, evaluated = self._after_steps(self.env_steps - 1, bar)
        if code is None and evaluated and self.shared_backend:
            self._obs = self._new_episode(cut=True)
        return code

    # ------------------------------------------------------------------------------------------------------

    def _evaluate_safely(self) -> dict[str, float] | None:
        """:meth:`_evaluate`; a CARLA error abandons this evaluation (counted as a failure)."""
        try:
            return self._evaluate()
        except CarlaError as e:
            self.consecutive_failures += 1
            first = (str(e).strip().splitlines() or [""])[0]
            _warn(f"jtd3: CARLA {type(e).__name__} during the evaluation at env step {self.env_steps}: {first} "
                  f"(evaluation abandoned; {self.consecutive_failures}/{self.max_failures} failures in a row)")
            if self.consecutive_failures >= self.max_failures:
                raise CarlaGaveUp(f"{type(e).__name__} during evaluation: {first}") from e
            return None

    def _evaluate(self) -> dict[str, float]:
        report, _ = evaluate(
            self.eval_env, self._guarded_policy(), self.train_cfg.num_eval_episodes,
            seed=eval_seed(self.train_cfg.seed),
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
        return AgentPolicy(self.state)

    def _guarded_policy(self):
        """:meth:`policy` that raises :class:`StopRequested` once a signal asked the run to stop."""
        policy = self.policy()

        def act(obs):
            if self.stop_signal is not None:
                raise StopRequested
            return policy(obs)

        return act

    def _checkpoint(self, *, with_metrics: bool) -> Path:
        metrics = None
        if with_metrics and self.last_eval is not None and self._eval_step == self.env_steps:
            metrics = {k: v for k, v in self.last_eval.items() if math.isfinite(v)}
        return self.ckpt.save(
            self.env_steps, self.state, self._loop_state(),
            replay=self.replay if self.train_cfg.checkpoint.save_replay else None, metrics=metrics,
            config=self.config_record,
        )

    def _alarm_checkpoint(self, alarms: list[tuple[str, float]]) -> Path:
        """Save the alarm's state apart, in ``alarms/<step>`` (``<step>-<k>`` if taken): a plain resume
        never loads it; ``--resume-step <step>`` does, and says what it is."""

        base = self.run_dir / ALARM_DIR
        directory, k = base / str(self.env_steps), 1
        while directory.exists():
            k += 1
            directory = base / f"{self.env_steps}-{k}"
        loop_state = self._loop_state()
        loop_state["alarm"] = [[name, repr(float(value))] for name, value in alarms]
        cfg = dataclasses.replace(self.train_cfg.checkpoint, keep_best=0)
        with CheckpointStore.from_config(directory, "new", cfg) as store:
            return store.save(
                self.env_steps, self.state, loop_state,
                replay=self.replay if self.train_cfg.checkpoint.save_replay else None, config=self.config_record,
            )

    def _alarm(self, alarms: list[tuple[str, float]]) -> int:
        self.logger.scalars({f"alerts/{name}": value for name, value in alarms}, self.env_steps)
        self.logger.flush()
        path = self._alarm_checkpoint(alarms)
        name, value = alarms[0]
        others = "" if len(alarms) == 1 else f" (and {', '.join(n for n, _ in alarms[1:])})"
        latest = self.ckpt.latest_step()
        plain = (f"a plain --resume continues from the latest regular checkpoint (step {latest})"
                 if latest is not None else "there is no regular checkpoint yet")
        print(
            f"\nEXPLOSION ALARM at env step {self.env_steps} (update {self.updates}): {name} = {value:.6g}"
            f"{others}; threshold for the feature L2 norm: {self.train_cfg.explosion_l2_threshold:g}. "
            f"Checkpoint of the alarm's state saved apart: {path} ({plain}; --resume-step {self.env_steps} "
            f"loads the alarm's state)",
            file=sys.stderr,
        )
        return EXIT_ALARM

    def _write_final_report(self) -> None:
        out = {
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episodes": self.episodes,
            "lost_episodes": self.lost_episodes,
            "warmup_mean_speed_kmh": (
                self.warmup_speed_sum / self.warmup_speed_count if self.warmup_speed_count else None
            ),
            "final_eval": json_floats(self.last_eval),
            "checkpoint": str(self.ckpt.step_path(self.env_steps)),
            "best_checkpoint_step": self.ckpt.best_step(),
        }
        (self.run_dir / "final_report.json").write_text(json.dumps(out, indent=2))

    def close(self) -> None:
        """Close the logger, the checkpoint store and the environments (the CARLA session last: its server
        is left asynchronous with its original settings and none of our actors)."""
        for closer in (getattr(self, "logger", None), getattr(self, "ckpt", None)):
            if closer is not None:
                closer.close()
        if not self.shared_backend:
            self.eval_env.close()
        self.env.close()


if __name__ == "__main__":  # python -m jtd3.train: the same as jtd3-train
    from jtd3.cli import main

    main()
