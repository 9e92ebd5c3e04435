"""Training with Ray actors, one per environment (``train.actors.kind: ray``); docs/scaling.md.

Each :class:`EnvActor` owns one driving environment (on CARLA: one server, placed with the custom resource
``train.actors.resource``) and a CPU-jitted policy. It acts with the newest parameters the learner published
(every ``publish_every`` gradient steps, pushed while it runs) and returns its steps in chunks of at most
``chunk_steps``: the newest camera frame (uint8) and kinematics of each next observation, the actions,
rewards, terminated and truncated flags, and the parameter version each action used.

The learner (:class:`RayTrainer`) keeps an episode's chunks until its last one arrives and then writes the whole
episode into the actor's replay stream. An actor or server that dies is restarted by Ray (``max_restarts``); the
episode it had in flight is dropped, never half-written. The learner never waits for a particular actor: it takes
whichever chunk is ready, runs the update calls the written steps made due (the config's ratio), publishes, and
goes on. Not reproducible step for step (the interleaving depends on timing); a resume drops the episodes in
flight and says so.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import numpy as np

from jtd3.train import CarlaGaveUp, _warn
from jtd3.training.bookkeeping import new_episode_stats
from jtd3.training.exploration import RandomDrivingPolicy, noise_scale
from jtd3.training.parallel import MultiEnvTrainer, parallel_env_configs

__all__ = ["EnvActor", "RayTrainer", "acting_state", "connect", "episode_steps"]

# Seconds a restarting actor (Ray: ActorUnavailableError) may take before the calls that find it still restarting
# count as failures towards carla.max_consecutive_failures. A restart is a new process that imports JAX, builds
# the env and compiles the policy: on the loaded 2-core test VM it took longer than the 15 s that five backed-off
# calls last.
_RESTART_GRACE_S = 120.0

_started_here = False  # this process started the local Ray cluster it uses (and shuts it down)


def connect(actors: Any) -> None:
    """Join the Ray cluster of ``train.actors.address`` (else ``$RAY_ADDRESS``), or start a local one. The CLI
    calls this before JAX starts its threads (Ray starts its processes with fork + exec)."""
    global _started_here
    try:
        import ray
    except ImportError:
        raise ImportError("train.actors.kind ray needs Ray: pip install -e '.[ray]'") from None
    address = actors.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, object_store_memory=10**9)
        _started_here = True


def acting_state(state: Any) -> Any:
    """The part of a train state ``agent.act`` reads (online actor, its statistics, the critic encoder in
    ``shared`` mode), on the host: what the learner publishes to the actors."""
    import jax

    shared = not state.spec.separate
    # No optimiser (tx=None): a deserialised optimiser is a new object, and jit would compile act again for
    # every published state (the static fields are part of its cache key).
    bare = dict(target_params=None, target_batch_stats=None, opt_state=None, tx=None)
    critic_params = {"encoder": state.critic.params["encoder"]} if shared else {}
    return jax.device_get(state.replace(
        actor=state.actor.replace(**bare), critic=state.critic.replace(params=critic_params, **bare)
    ))


def episode_steps(first_obs: dict[str, np.ndarray], chunks: list[dict[str, Any]]):
    """The (obs, action, reward, next_obs, terminated, truncated) of an episode's chunks, with the frame stacks
    rebuilt from its first observation and each step's newest frame."""
    obs = first_obs
    for c in chunks:
        for t in range(len(c["reward"])):
            nxt = {"camera": np.concatenate([obs["camera"][1:], c["frames"][t][None]]), "kinematics": c["kinematics"][t]}
            yield obs, c["action"][t], float(c["reward"][t]), nxt, bool(c["terminated"][t]), bool(c["truncated"][t])
            obs = nxt


class EnvActor:
    """One environment and a CPU policy, as a Ray actor (``max_concurrency=2``: :meth:`set_params` arrives while
    :meth:`collect` runs)."""

    def __init__(self, env_config: Any, index: int, seed: int, exploration: Any, learning_starts: int):
        from jtd3.envs import make_env

        self.env = make_env(env_config, seed=None)
        self.index = index
        self.incarnation = uuid.uuid4().hex  # new after a restart: the learner drops what the old one sent
        # not reproducible on purpose: a restarted actor must not replay the episodes it already played
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 5, index, time.time_ns(), os.getpid()]))
        self.exploration, self.learning_starts = exploration, learning_starts
        self.warmup = RandomDrivingPolicy(exploration)
        self._lock = threading.Lock()
        self._state, self._version = None, -1
        self._key = None
        self.obs = None
        self.episode = 0

    def set_params(self, version: int, state: Any) -> None:
        with self._lock:
            if version > self._version:
                self._state, self._version = state, version

    def _act(self, obs: dict[str, np.ndarray], env_steps: int) -> tuple[np.ndarray, int]:
        import jax

        from jtd3 import agent

        with self._lock:
            state, version = self._state, self._version
        if env_steps < self.learning_starts or state is None:
            return self.warmup(self.rng), version
        if self._key is None:
            self._key = jax.random.PRNGKey(int(self.rng.integers(2**31)))
        self._key, sub = jax.random.split(self._key)
        scale = noise_scale(self.exploration, env_steps - self.learning_starts)
        action = agent.act(state, {k: v[None] for k, v in obs.items()}, sub, scale)
        return np.asarray(action, np.float32)[0], version

    def collect(self, max_steps: int, env_steps: int) -> dict[str, Any]:
        """Up to ``max_steps`` steps of the current episode (a new one if none is running); ``env_steps``: the
        learner's count, for the warm-up and the exploration noise schedule. A CARLA error ends the episode: the
        chunk then says so (``"error"``) and the next call starts a new one (the session reconnects on reset)."""
        from jtd3.backends.carla.errors import CarlaError

        chunk: dict[str, Any] = {"actor": self.index, "incarnation": self.incarnation, "episode": self.episode}
        try:
            return self._collect(chunk, max_steps, env_steps)
        except CarlaError as e:
            self.obs = None
            self.episode += 1
            return {**chunk, "error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"}

    def _collect(self, chunk: dict[str, Any], max_steps: int, env_steps: int) -> dict[str, Any]:
        if self.obs is None:
            self.obs = self.env.reset(seed=int(self.rng.integers(2**31)))[0]
            self.warmup.reset()
            chunk["first_obs"] = self.obs
        cols: dict[str, list] = defaultdict(list)
        info = None
        for _ in range(max_steps):
            action, version = self._act(self.obs, env_steps)
            acted_at = time.time()
            obs, reward, terminated, truncated, info = self.env.step(action)
            for k, v in (("frames", obs["camera"][-1]), ("kinematics", obs["kinematics"]), ("action", action),
                         ("reward", reward), ("terminated", terminated), ("truncated", truncated),
                         ("version", version), ("time", acted_at), ("speed_kmh", info["speed_kmh"])):
                cols[k].append(v)
            for k, v in info["reward_components"].items():
                cols[f"rewards/{k}"].append(v)
            self.obs = obs
            if terminated or truncated:
                self.obs = None
                self.episode += 1
                break
        chunk.update({k: np.asarray(v) for k, v in cols.items()})
        chunk["final_info"] = None if self.obs is not None else _loggable(info)
        return chunk

    def close(self) -> None:
        self.env.close()


def _loggable(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("collisions", "lane_invasions", "route_completion", "success", "distance_m", "termination_reason")
    return {k: info[k] for k in keys}


class ActorPool:
    """The Ray actors of a run; ``observation_space``/``action_space`` come from the learner's evaluation env."""

    def __init__(self, config: Any, env_configs: list[Any], spaces: tuple[Any, Any]):
        import ray

        ac = config.train.actors
        connect(ac)
        options: dict[str, Any] = {
            "max_restarts": ac.max_restarts, "max_task_retries": 0, "max_concurrency": 2, "num_cpus": 0,
            "runtime_env": {"env_vars": {"JAX_PLATFORMS": "cpu"}},
        }
        resource = ac.resource
        if config.env.backend == "carla" and resource:
            options["resources"] = {resource: 1}
        remote = ray.remote(EnvActor).options(**options)
        train_cfg = config.train
        self.actors = [remote.remote(cfg, i, train_cfg.seed, train_cfg.exploration, train_cfg.learning_starts)
                       for i, cfg in enumerate(env_configs)]
        self.observation_space, self.action_space = spaces

    def close(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.get(a.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a dead actor has nothing to close
                pass
            ray.kill(a, no_restart=True)
        self.actors = []
        global _started_here
        if _started_here:
            ray.shutdown()
            _started_here = False


class RayTrainer(MultiEnvTrainer):
    """:class:`~jtd3.train.Trainer` fed by ``train.actors.num_envs`` Ray actors."""

    def _make_envs(self):
        from jtd3.envs import make_env

        configs, eval_config = parallel_env_configs(self.config)
        eval_env = make_env(eval_config, seed=None)
        try:
            return ActorPool(self.config, configs, (eval_env.observation_space, eval_env.action_space)), eval_env
        except BaseException:
            eval_env.close()
            raise

    def _init_envs_state(self) -> None:
        super()._init_envs_state()
        self.pending: list[list[dict[str, Any]]] = [[] for _ in range(self.num_envs)]
        self.published = -1
        self._lags: list[float] = []
        self._timeline: tuple[list[float], list[int]] = ([], [])  # (wall time, gradient steps done) per update call

    def _publish(self) -> None:
        import ray

        ref = ray.put(acting_state(self.state))
        for a in self.env.actors:
            a.set_params.remote(self.updates, ref)
        self.published = self.updates

    def _dispatch(self, i: int) -> Any:
        return self.env.actors[i].collect.remote(self.train_cfg.actors.chunk_steps, self.env_steps)

    def _accept(self, i: int, chunk: dict[str, Any]) -> None:
        """Keep ``chunk``; write its episode when it is the episode's last. A chunk that does not continue the
        pending ones (the actor restarted) drops them; one that continues nothing the learner holds is ignored."""
        pending = self.pending[i]
        starts = "first_obs" in chunk
        continues = bool(pending) and not starts and (chunk["incarnation"], chunk["episode"]) == (
            pending[0]["incarnation"], pending[0]["episode"])
        if not continues:
            self._drop(i, "its actor restarted")
            if not starts:
                return
        self._lags.extend(self._policy_lag(chunk).tolist())
        self.pending[i].append(chunk)
        if chunk["final_info"] is not None:
            self._write_episode(i)

    def _drop(self, i: int, why: str, *, lost: bool = False) -> None:
        """Forget env i's episode in flight; ``lost``: it was (count it even when nothing of it arrived yet)."""
        if self.pending[i] or lost:
            steps = sum(len(c["reward"]) for c in self.pending[i])
            _warn(f"jtd3: env {i}: episode in flight dropped ({steps} steps not written to the replay): {why}")
            self.lost_episodes += 1
            self.logger.scalars({"charts/lost_episodes": self.lost_episodes}, self.env_steps)
        self.pending[i] = []

    def _write_episode(self, i: int) -> None:
        chunks, self.pending[i] = self.pending[i], []
        first = chunks[0]["first_obs"]
        self._ep = new_episode_stats()
        for obs, action, reward, nxt, term, trunc in episode_steps(first, chunks):
            self.replay.add(obs, action, reward, nxt, term, trunc, stream=i)
        for c in chunks:
            self._ep["return"] += float(c["reward"].sum())
            self._ep["length"] += len(c["reward"])
            self._ep["speed_sum"] += float(c["speed_kmh"].sum())
            for k in c:
                if k.startswith("rewards/"):
                    self._ep["components"][k[len("rewards/"):]] += float(c[k].sum())
        self.env_steps += self._ep["length"]
        self._log_episode(chunks[-1]["final_info"])
        self.episodes += 1

    def _begin(self) -> None:
        if self.resume:
            _warn("note: Ray actors start new episodes on resume (episodes in flight at the checkpoint were not "
                  "in it)")
        self.replay.start_new_episode()
        self._timeline = ([time.time()], [self.updates])
        self._publish()
        self._futures = {self._dispatch(i): i for i in range(self.num_envs)}
        self._failures = [0] * self.num_envs  # per actor, in a row
        self._retry_at: dict[int, float] = {}  # actors to call again after a failure, and when
        self._down_since: dict[int, float] = {}  # actors whose last call failed: since when

    def _iteration(self, bar) -> int | None:
        """Wait for the next chunk(s), write the finished episodes, run the updates they made due."""
        import ray  # an optional dependency (the `ray` extra)
        from ray.exceptions import ActorUnavailableError, RayActorError

        futures, failures, retry_at = self._futures, self._failures, self._retry_at
        t0 = time.perf_counter()
        ready = []
        if futures:
            ready, _ = ray.wait(list(futures), num_returns=1, timeout=0.2 if retry_at else 1.0)
        else:  # every actor is waiting to be called again after a failure
            time.sleep(0.2)
        self._wait_s += time.perf_counter() - t0
        prev = self.env_steps
        for ref in ready:
            i = futures.pop(ref)
            try:
                chunk = ray.get(ref)
            except RayActorError as e:
                # the first failure in a row loses the episode in flight; calls while Ray restarts the
                # actor lose nothing more, and are no new failures (a restart is a new process: imports, the
                # env, the policy's compilation) until the restart takes longer than _RESTART_GRACE_S
                now = time.monotonic()
                first = failures[i] == 0
                self._drop(i, f"its actor died or is restarting ({type(e).__name__})", lost=first)
                down = self._down_since.setdefault(i, now)
                if first or not isinstance(e, ActorUnavailableError) or now - down > _RESTART_GRACE_S:
                    failures[i] += 1
                    self._give_up_after(failures[i], i, f"{type(e).__name__}: {e}")
                retry_at[i] = now + min(0.5 * 2 ** failures[i], 30.0)  # Ray restarts it
                continue
            self._down_since.pop(i, None)
            futures[self._dispatch(i)] = i
            if "error" in chunk:  # a CARLA error ended the actor's episode
                self._drop(i, chunk["error"], lost=True)
                failures[i] += 1
                self._give_up_after(failures[i], i, chunk["error"])
                continue
            failures[i] = 0
            self._accept(i, chunk)
        for i, at in list(retry_at.items()):
            if time.monotonic() >= at:
                del retry_at[i]
                futures[self._dispatch(i)] = i
        if self.env_steps == prev:
            return None
        code = self._timed_update(self._update_calls_due(prev, self.env_steps))
        if code is not None:
            return code
        code, _ = self._after_steps(prev, bar, updates=False)
        return code

    def _policy_lag(self, chunk: dict[str, Any]) -> np.ndarray:
        """Per action of ``chunk``: gradient steps the learner had done when the action was taken minus those of
        the parameters it used (wall clocks of the actor's and the learner's machines)."""
        times, updates = self._timeline
        done = np.asarray(updates)[np.maximum(np.searchsorted(times, chunk["time"], side="right") - 1, 0)]
        return done - np.maximum(chunk["version"], 0)

    def _after_update_call(self) -> None:
        times, updates = self._timeline
        times.append(time.time())
        updates.append(self.updates)
        if len(times) > 100_000:  # keep the recent past only (chunks arrive within seconds)
            del times[:50_000], updates[:50_000]
        if self.updates - self.published >= self.train_cfg.actors.publish_every:
            self._publish()

    def _give_up_after(self, failures: int, i: int, last: str) -> None:
        self.consecutive_failures = failures
        if failures >= self.max_failures:
            raise CarlaGaveUp(f"env {i}: its actor failed {failures} times in a row (last: {last})")

    def _extra_log_scalars(self) -> dict[str, float]:
        out = super()._extra_log_scalars()
        if self._lags:
            out["charts/policy_lag_updates_mean"] = float(np.mean(self._lags))
            out["charts/policy_lag_updates_max"] = float(np.max(self._lags))
        self._lags = []
        return out
