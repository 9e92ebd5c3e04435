"""Driving environments in worker processes, stepped together, reset one by one (``train.actors.kind: process``).

Each worker process builds one :class:`~jtd3.envs.DrivingEnv` (its own simulator, or its own CARLA session) and
answers commands over a pipe. :meth:`EnvWorkers.step_async` sends every worker its action and returns at once, so
the learner can run updates while the environments step; :meth:`EnvWorkers.step_wait` collects the results. A
step that ends an episode resets the environment in the same call, with the seed the learner gave.

An exception inside an environment does not end its worker: the error comes back as :class:`WorkerError` for that
environment only (a CARLA error as :class:`~jtd3.backends.carla.errors.CarlaError`, whose session reconnects on the
next reset), so the trainer can drop that episode and go on. gymnasium's ``AsyncVectorEnv`` shuts a worker down on
any error and steps all environments in one call, which is why this module exists.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from jtd3.backends.carla.errors import CarlaError

__all__ = ["EnvWorkers", "StepResult", "WorkerError"]


class WorkerError(RuntimeError):
    """An environment raised something that is not a CARLA error (a bug, a bad config): the run stops."""


@dataclass
class StepResult:
    """One environment's step: what ``env.step`` returned, and the first observation of the next episode
    when the step ended one (``reset_obs``; None otherwise)."""

    next_obs: dict[str, np.ndarray]
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    reset_obs: dict[str, np.ndarray] | None


def _serve(conn, env_config) -> None:
    """The worker process: one environment, commands until ``close``."""
    from jtd3.envs import make_env

    try:
        env = make_env(env_config, seed=None)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", (isinstance(e, CarlaError), f"{type(e).__name__}: {e}", traceback.format_exc())))
        return
    conn.send(("ok", (env.observation_space, env.action_space)))
    while True:
        try:
            cmd, data = conn.recv()
        except (EOFError, KeyboardInterrupt):
            break
        try:
            if cmd == "close":
                env.close()
                conn.send(("ok", None))
                return
            conn.send(("ok", _handle(env, cmd, data)))
        except KeyboardInterrupt:
            break
        except BaseException as e:  # noqa: BLE001 - the parent decides what an error means
            conn.send(("error", (isinstance(e, CarlaError), f"{type(e).__name__}: {e}", traceback.format_exc())))
    env.close()


def _handle(env, cmd: str, data: Any) -> Any:
    if cmd == "reset":
        return env.reset(seed=data)[0]
    if cmd == "step":
        action, next_seed = data
        next_obs, reward, terminated, truncated, info = env.step(action)
        reset_obs = env.reset(seed=next_seed)[0] if terminated or truncated else None
        return StepResult(next_obs, float(reward), bool(terminated), bool(truncated), info, reset_obs)
    if cmd == "resimulate":  # reset with a seed and take recorded actions (exact resume)
        seed, actions = data
        obs = env.reset(seed=seed)[0]
        steps = []
        for a in actions:
            obs, reward, terminated, truncated, info = env.step(np.asarray(a, np.float32))
            steps.append((float(reward), info))
            if terminated or truncated:
                raise RuntimeError("replaying the episode's recorded actions ended it early: the environment is "
                                   "not deterministic for a seed")
        return obs, steps
    raise ValueError(f"unknown worker command {cmd!r}")


class EnvWorkers:
    """``len(env_configs)`` environments, one worker process each (``spawn``: the learner process runs JAX
    threads, which a fork could deadlock).

    Raises CarlaError or WorkerError (naming the environment) when an environment cannot be built; the workers
    already started are closed.
    """

    def __init__(self, env_configs: list[Any]):
        ctx = mp.get_context("spawn")
        self._conns = []
        self._procs = []
        self._pending = False
        try:
            for i, cfg in enumerate(env_configs):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, cfg), name=f"jtd3-env-{i}", daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            spaces = [self._receive(i) for i in range(len(self._conns))]
        except BaseException:
            self.close()
            raise
        self.observation_space, self.action_space = spaces[0]

    @property
    def num_envs(self) -> int:
        return len(self._conns)

    def _receive(self, i: int) -> Any:
        try:
            status, payload = self._conns[i].recv()
        except EOFError:
            self._procs[i].join(timeout=5)
            raise WorkerError(f"environment {i}: its worker process died (exit code {self._procs[i].exitcode})") from None
        if status == "ok":
            return payload
        is_carla, message, trace = payload
        if is_carla:
            raise CarlaError(f"environment {i}: {message}")
        raise WorkerError(f"environment {i}: {message}\n{trace}")

    def _call(self, i: int, cmd: str, data: Any) -> Any:
        self._conns[i].send((cmd, data))
        return self._receive(i)

    def reset(self, i: int, seed: int) -> dict[str, np.ndarray]:
        """Reset environment ``i`` with ``seed``; its first observation."""
        return self._call(i, "reset", seed)

    def resimulate(self, i: int, seed: int, actions: list[list[float]]) -> tuple[dict[str, np.ndarray], list]:
        """Reset environment ``i`` with ``seed`` and take ``actions``: (the observation after them, [(reward,
        info)] per action)."""
        return self._call(i, "resimulate", (seed, actions))

    def step_async(self, actions: np.ndarray, next_seeds: list[int]) -> None:
        """Send environment i ``actions[i]`` (and the seed of its next episode, used if this step ends one)."""
        if self._pending:
            raise RuntimeError("step_async called twice without step_wait")
        for i, conn in enumerate(self._conns):
            conn.send(("step", (np.asarray(actions[i], np.float32), int(next_seeds[i]))))
        self._pending = True

    def step_wait(self) -> list[StepResult | CarlaError]:
        """Every environment's :class:`StepResult`, or the CarlaError its step (or reset) raised. WorkerError
        for anything else, after all results are in (the pipes stay in order)."""
        self._pending = False
        out: list[StepResult | CarlaError] = []
        fatal = None
        for i in range(self.num_envs):
            try:
                out.append(self._receive(i))
            except CarlaError as e:
                out.append(e)
            except WorkerError as e:
                fatal = fatal or e
                out.append(e)  # type: ignore[arg-type]
        if fatal is not None:
            raise fatal
        return out

    def close(self) -> None:
        """Close every environment (CARLA sessions restore their servers) and end the workers."""
        if self._pending:
            for i in range(self.num_envs):
                try:
                    self._conns[i].recv()
                except (EOFError, OSError):
                    pass
            self._pending = False
        for conn, proc in zip(self._conns, self._procs):
            try:
                if proc.is_alive():
                    conn.send(("close", None))
                    conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                pass
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self._conns, self._procs = [], []
