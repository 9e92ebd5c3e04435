"""The training loop over N environments in worker processes (``train.actors.kind: process``).

Per vector step::

    actions = warm-up policy per env | agent.act(state, stacked observations)      # one jitted call for all N
    workers.step_async(actions)                                                     # the N envs step ...
    run the update calls the previous vector step made due (train.actors.overlap)   # ... while the learner learns
    results = workers.step_wait()
    replay.add(..., stream=i) for each env i; an ended episode was reset in its worker with the next seed
    log / evaluate / checkpoint when env_steps crossed their frequencies

The update calls stay those of the config (one per ``train_freq`` env steps past ``learning_starts``); with
overlap the acting policy is one vector step's update calls behind the learner. Before an evaluation or a
checkpoint the due updates run first, so both see the same state as without overlap.

Exact resume for any N on the embedded simulator: env i's j-th episode is seeded with ``episode_seed(seed,
i + j * N)``, the loop state records every env's episode index and actions so far, and a resume replays them in
the workers. On a CARLA server (not deterministic) each env starts a new episode instead.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from jtd3 import envs
from jtd3.backends.carla.errors import CarlaError
from jtd3.envs import vector_env_configs
from jtd3.envs.vector import parse_server
from jtd3.train import CarlaGaveUp, Trainer, _warn
from jtd3.training.bookkeeping import episode_seed, new_episode_stats
from jtd3.training.exploration import RandomDrivingPolicy, noise_scale
from jtd3.training.workers import EnvWorkers, StepResult

__all__ = ["MultiEnvTrainer", "ParallelTrainer", "parallel_env_configs"]


def parallel_env_configs(config) -> tuple[list, Any]:
    """(one EnvConfig per training environment, the evaluation env's config).

    On CARLA every training environment needs its own server (``train.actors.carla_servers``, distinct Traffic
    Manager ports) and evaluation runs on ``env.carla.host:port``, which must be none of them: a second session
    on a training server would fight over its settings and actors. Ray actors without ``carla_servers`` drive
    ``localhost:<env.carla.port>`` on their own machines."""
    actors, env = config.train.actors, config.env
    eval_config = dataclasses.replace(env, route_start="beginning")
    if env.backend != "carla":
        return vector_env_configs(env, actors.num_envs, list(actors.carla_servers) or None), eval_config
    if not actors.carla_servers and actors.kind == "ray":
        # each actor drives the server on its own machine (one per machine: the "carla" resource places them)
        local = dataclasses.replace(env, carla=dataclasses.replace(env.carla, host="localhost"))
        return [local] * actors.num_envs, eval_config
    if not actors.carla_servers:
        raise ValueError(f"train.actors.kind {actors.kind!r} on CARLA needs train.actors.carla_servers (one host:port "
                         f"per environment, {actors.num_envs}); env.carla.host/port is the evaluation server")
    configs = vector_env_configs(env, actors.num_envs, list(actors.carla_servers))
    eval_server = (env.carla.host, env.carla.port)
    if eval_server in [parse_server(x) for x in actors.carla_servers]:
        raise ValueError(f"env.carla {eval_server[0]}:{eval_server[1]} is the evaluation server and must not be one "
                         f"of train.actors.carla_servers {list(actors.carla_servers)}")
    tm = dataclasses.replace(env.carla, tm_port=env.carla.tm_port + actors.num_envs)
    return configs, dataclasses.replace(eval_config, carla=tm)


class MultiEnvTrainer(Trainer):
    """What the loops over ``train.actors.num_envs`` environments share (worker processes here, Ray actors in
    :mod:`jtd3.training.ray_actors`): one replay stream per environment, evaluation on an environment of its own,
    and the split of the learner's time between update calls and waiting for the environments."""

    @property
    def num_envs(self) -> int:
        return self.train_cfg.actors.num_envs

    @property
    def shared_backend(self) -> bool:
        return False

    def _replay_streams(self) -> int:
        return self.num_envs

    def _init_envs_state(self) -> None:
        self._learn_s = self._wait_s = 0.0  # seconds in update calls / waiting for the environments, per log window

    def _timed_update(self, calls: int) -> int | None:
        """:meth:`_update`, its time counted as the learner's busy time."""
        t0 = time.perf_counter()
        code = self._update(calls)
        self._learn_s += time.perf_counter() - t0
        return code

    def _extra_log_scalars(self) -> dict[str, float]:
        """How the loop's time splits: the learner's update calls and its wait for the environments."""
        learn, wait = self._learn_s, self._wait_s
        self._learn_s = self._wait_s = 0.0
        return {"charts/learner_busy_s": learn, "charts/learner_waiting_s": wait}


class ParallelTrainer(MultiEnvTrainer):
    """:class:`~jtd3.train.Trainer` over ``train.actors.num_envs`` worker-process environments."""

    def _make_envs(self):
        configs, eval_config = parallel_env_configs(self.config)
        workers = EnvWorkers(configs)
        try:
            return workers, envs.make_env(eval_config, seed=None)
        except BaseException:
            workers.close()
            raise

    def _init_envs_state(self) -> None:
        super()._init_envs_state()
        n = self.num_envs
        self.warmups = [RandomDrivingPolicy(self.train_cfg.exploration) for _ in range(n)]
        # env i's current episode number in the run's seed sequence: i, i + N, i + 2N, ... (episode_seed)
        self.env_episode = list(range(n))
        self.env_actions: list[list[list[float]]] = [[] for _ in range(n)]
        self.eps = [new_episode_stats() for _ in range(n)]
        self.pending_calls = 0  # update calls made due but not run yet (they run while the envs step)

    def _seed_of(self, i: int) -> int:
        return episode_seed(self.train_cfg.seed, self.env_episode[i])

    # ------------------------------------------------------------------------------------------------------
    # State

    def _loop_state(self) -> dict[str, Any]:
        out = super()._loop_state()
        out["envs"] = [
            {"episode": self.env_episode[i], "actions": self.env_actions[i], "warmup_policy": self.warmups[i].state_dict()}
            for i in range(self.num_envs)
        ]
        out["pending_update_calls"] = self.pending_calls
        return out

    def _restore_extra(self, loop_state: dict[str, Any]) -> None:
        envs = loop_state["envs"]
        for i, e in enumerate(envs):
            self.env_episode[i] = int(e["episode"])
            self.env_actions[i] = [list(map(float, a)) for a in e["actions"]]
            self.warmups[i].load_state_dict(e["warmup_policy"])
        self.pending_calls = int(loop_state["pending_update_calls"])

    # ------------------------------------------------------------------------------------------------------

    def _act_batch(self, obs: list[dict[str, np.ndarray]]) -> np.ndarray:
        train_cfg = self.train_cfg
        if self.env_steps < train_cfg.learning_starts:
            return np.stack([w(self.rng) for w in self.warmups]).astype(np.float32)
        self._key, sub = jax.random.split(self._key)
        scale = noise_scale(train_cfg.exploration, self.env_steps - train_cfg.learning_starts)
        batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
        return np.asarray(jax.device_get(self._agent.act(self.state, batch, sub, scale)), np.float32)

    def _begin_episode(self, i: int) -> None:
        self.warmups[i].reset()
        self.env_actions[i] = []
        self.eps[i] = new_episode_stats()

    def _reset_env(self, i: int, *, cut: bool) -> dict[str, np.ndarray]:
        """Start env i's next episode (a CARLA error while resetting counts as a lost episode)."""
        if cut:
            self.replay.start_new_episode(i)
        while True:
            try:
                obs = self.env.reset(i, self._seed_of(i))
                self._begin_episode(i)
                return obs
            except CarlaError as e:
                self._lost(i, e, "reset")

    def _lost(self, i: int, error: BaseException, during: str) -> None:
        """A CARLA error ended env i's episode: count it, move it to its next episode index."""
        self.consecutive_failures += 1
        self.lost_episodes += 1
        first = (str(error).strip().splitlines() or [""])[0]
        _warn(f"jtd3: CARLA {type(error).__name__} during {during} of env {i} at env step {self.env_steps}: "
              f"{first} (episode abandoned; {self.consecutive_failures}/{self.max_failures} failures in a row)")
        self.logger.scalars({"charts/carla_lost_episodes": self.lost_episodes}, self.env_steps)
        if self.consecutive_failures >= self.max_failures:
            raise CarlaGaveUp(f"{type(error).__name__} during {during}: {first}") from error
        self.replay.start_new_episode(i)
        self.episodes += 1
        self.env_episode[i] += self.num_envs

    def _first_observations(self) -> list[dict[str, np.ndarray]]:
        obs = []
        for i in range(self.num_envs):
            if self.resume and self.env_actions[i] and self._resumed_replay and self.config.env.backend == "sim":
                o, steps = self.env.resimulate(i, self._seed_of(i), self.env_actions[i])
                actions = self.env_actions[i]
                self._begin_episode(i)
                self.env_actions[i] = actions
                for reward, info in steps:
                    self._account_env(i, reward, info)
                obs.append(o)
            else:
                obs.append(self._reset_env(i, cut=self.resume))
        return obs

    def _account_env(self, i: int, reward: float, info: dict[str, Any]) -> None:
        self._ep = self.eps[i]
        self._account(reward, info)

    def _take(self, i: int, obs: dict[str, np.ndarray], action: np.ndarray, res: StepResult) -> dict[str, np.ndarray]:
        """Env i's step into the replay and the counters; its next observation."""
        self.replay.add(obs, action, res.reward, res.next_obs, res.terminated, res.truncated, stream=i)
        self.env_actions[i].append([float(a) for a in action])
        self._account_env(i, res.reward, res.info)
        if self.env_steps < self.train_cfg.learning_starts:
            self.warmup_speed_sum += float(res.info["speed_kmh"])
            self.warmup_speed_count += 1
        self.env_steps += 1
        if res.reset_obs is None:
            return res.next_obs
        self._ep = self.eps[i]
        self._log_episode(res.info)
        self.episodes += 1
        self.env_episode[i] += self.num_envs
        self._begin_episode(i)
        return res.reset_obs

    def _next_seeds(self) -> list[int]:
        return [episode_seed(self.train_cfg.seed, self.env_episode[i] + self.num_envs) for i in range(self.num_envs)]

    def _begin(self) -> None:
        self._obs = self._first_observations()

    def _iteration(self, bar) -> int | None:
        """One vector step: act on the N observations, step the workers while the due updates run (overlap),
        write what came back, then the work the new env steps make due."""
        train_cfg, obs = self.train_cfg, self._obs
        if not train_cfg.actors.overlap:
            code = self._run_pending()
            if code is not None:
                return code
        actions = self._act_batch(obs)
        if not np.isfinite(actions).all():
            return self._alarm([("actions/non_finite", float("nan"))])
        self.env.step_async(actions, self._next_seeds())
        code = self._run_pending()  # the learner learns while the environments step
        t0 = time.perf_counter()
        results = self.env.step_wait()
        self._wait_s += time.perf_counter() - t0
        prev = self.env_steps
        for i, res in enumerate(results):
            if isinstance(res, CarlaError):
                self._lost(i, res, "step")
                obs[i] = self._reset_env(i, cut=False)
                continue
            self.consecutive_failures = 0
            obs[i] = self._take(i, obs[i], actions[i], res)
        if code is not None:
            return code
        self.pending_calls += self._update_calls_due(prev, self.env_steps)
        crossing = any(self.env_steps // f > prev // f for f in (train_cfg.eval_freq, train_cfg.checkpoint_freq))
        if crossing or self.env_steps >= train_cfg.max_timesteps:
            code = self._run_pending()  # evaluations and checkpoints see every due update
            if code is not None:
                return code
        code, _ = self._after_steps(prev, bar, updates=False)
        return code

    def _run_pending(self) -> int | None:
        calls, self.pending_calls = self.pending_calls, 0
        return self._timed_update(calls)
