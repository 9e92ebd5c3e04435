"""Episode runner and evaluation report for any policy on a :class:`jtd3.envs.DrivingEnv`.

A policy is a callable ``policy(obs) -> action`` (``[steer, throttle_brake]`` in [-1, 1]); policies that need
the world state (the pure-pursuit baseline) read ``env.ground_truth()`` themselves. Episode ``i`` of an
evaluation is reset with seed ``seed + i``, so two evaluations with the same seed see the same episodes.

Report (:class:`EvalReport`, JSON via :meth:`EvalReport.to_dict`, Markdown via :meth:`EvalReport.to_markdown`):
success rate, route completion, mean/std return, mean discounted return, collisions/km, lane invasions/km, average speed (km/h,
distance over simulated time, over all episodes), episode length, the per-step reward range, the return per
reward component, termination reasons, and one row per episode.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax
import numpy as np
import yaml

from jtd3 import agent
from jtd3.checkpoint import CheckpointStore
from jtd3.envs.observation import kinematics_size
from jtd3.envs.reward import COMPONENTS
from jtd3.run_config import load_config

__all__ = [
    "AgentPolicy", "EpisodeResult", "EvalReport", "env_spaces", "evaluate", "load_agent", "run_episode", "summarise",
]

Policy = Callable[[Any], np.ndarray]


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    """One episode's figures (SI units unless the name says otherwise)."""

    seed: int
    steps: int
    episode_return: float
    discounted_return: float  # sum of gamma^t * r_t (what a TD learner's value estimates)
    success: bool
    termination_reason: str
    route_completion: float  # 0..1
    distance_m: float
    duration_s: float  # simulated time: steps * dt
    collisions: int
    lane_invasions: int
    reward_min: float  # smallest per-step reward
    reward_max: float  # largest per-step reward
    components: dict[str, float]  # return per weighted reward component (they sum to episode_return)

    @property
    def avg_speed_kmh(self) -> float:
        return 3.6 * self.distance_m / self.duration_s if self.duration_s > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """Aggregate figures over episodes (``None`` where undefined, e.g. per-km rates after 0 m driven)."""

    policy: str
    episodes: int
    success_rate: float
    route_completion_mean: float
    return_mean: float
    return_std: float  # population standard deviation over episodes
    discounted_return_mean: float  # mean of sum(gamma^t r_t), gamma as passed to evaluate()
    gamma: float
    collisions_per_km: float | None
    lane_invasions_per_km: float | None
    avg_speed_kmh: float  # total distance / total simulated time
    episode_length_mean: float  # steps
    distance_km: float  # total
    reward_min: float  # smallest per-step reward over all episodes
    reward_max: float
    components_mean: dict[str, float]  # mean episode return per component
    termination_reasons: dict[str, int]
    results: tuple[EpisodeResult, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (episodes as a list of dicts)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "results"}
        d["results"] = [dict(dataclasses.asdict(r), avg_speed_kmh=r.avg_speed_kmh) for r in self.results]
        return d

    def to_markdown(self, title: str | None = None) -> str:
        """A Markdown summary table, the reward components and the per-episode rows."""
        def num(v: float | None, fmt: str) -> str:
            return "n/a" if v is None else format(v, fmt)

        lines = [f"# {title or 'Evaluation: ' + self.policy}", ""]
        lines += [
            "| metric | value |",
            "|---|---|",
            f"| episodes | {self.episodes} |",
            f"| success rate | {self.success_rate:.2f} |",
            f"| route completion (mean) | {self.route_completion_mean:.3f} |",
            f"| return (mean ± std) | {self.return_mean:.1f} ± {self.return_std:.1f} |",
            f"| discounted return (gamma {self.gamma}) | {self.discounted_return_mean:.2f} |",
            f"| per-step reward range | [{self.reward_min:.3f}, {self.reward_max:.3f}] |",
            f"| collisions / km | {num(self.collisions_per_km, '.2f')} |",
            f"| lane invasions / km | {num(self.lane_invasions_per_km, '.2f')} |",
            f"| average speed (km/h) | {self.avg_speed_kmh:.1f} |",
            f"| episode length (steps, mean) | {self.episode_length_mean:.1f} |",
            f"| distance (km, total) | {self.distance_km:.3f} |",
            f"| termination reasons | {', '.join(f'{k}: {v}' for k, v in sorted(self.termination_reasons.items()))} |",
            "",
            "Mean episode return per reward component:",
            "",
            "| " + " | ".join(COMPONENTS) + " |",
            "|" + "---|" * len(COMPONENTS),
            "| " + " | ".join(f"{self.components_mean[k]:.2f}" for k in COMPONENTS) + " |",
            "",
            "| seed | steps | return | end | completion | distance (m) | km/h | collisions | lane inv. |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.results:
            lines.append(
                f"| {r.seed} | {r.steps} | {r.episode_return:.1f} | {r.termination_reason} | "
                f"{r.route_completion:.3f} | {r.distance_m:.1f} | {r.avg_speed_kmh:.1f} | {r.collisions} | "
                f"{r.lane_invasions} |"
            )
        return "\n".join(lines) + "\n"


def run_episode(
    env, policy: Policy, seed: int, frames: list[np.ndarray] | None = None, frame_every: int = 1, gamma: float = 0.99
) -> EpisodeResult:
    """Run one episode (reset with ``seed``) to termination or truncation.

    With ``frames`` (a list), ``env.render()`` is appended at reset and every ``frame_every`` steps (the env
    must have ``render_mode="rgb_array"``).
    """
    if frame_every < 1:
        raise ValueError(f"frame_every must be >= 1, got {frame_every}")
    obs, info = env.reset(seed=seed)
    if frames is not None:
        frames.append(env.render())
    dt = env.unwrapped.dt
    total, discounted, weight = 0.0, 0.0, 1.0
    r_min, r_max = math.inf, -math.inf
    comps = dict.fromkeys(COMPONENTS, 0.0)
    steps = 0
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        steps += 1
        total += reward
        discounted += weight * reward
        weight *= gamma
        r_min, r_max = min(r_min, reward), max(r_max, reward)
        for k, v in info["reward_components"].items():
            comps[k] += v
        if frames is not None and (steps % frame_every == 0 or terminated or truncated):
            frames.append(env.render())
        if terminated or truncated:
            break
    return EpisodeResult(
        seed=int(seed),
        steps=steps,
        episode_return=float(total),
        discounted_return=float(discounted),
        success=bool(info["success"]),
        termination_reason=str(info["termination_reason"]),
        route_completion=float(info["route_completion"]),
        distance_m=float(info["distance_m"]),
        duration_s=float(steps * dt),
        collisions=int(info["collisions"]),
        lane_invasions=int(info["lane_invasions"]),
        reward_min=float(r_min),
        reward_max=float(r_max),
        components=comps,
    )


def summarise(
    results: list[EpisodeResult] | tuple[EpisodeResult, ...], policy: str = "policy", gamma: float = 0.99
) -> EvalReport:
    """Aggregate episode results into a report."""
    if not results:
        raise ValueError("no episodes to summarise")
    returns = np.array([r.episode_return for r in results])
    km = sum(r.distance_m for r in results) / 1000.0
    seconds = sum(r.duration_s for r in results)
    per_km = (lambda n: n / km) if km > 0 else (lambda n: None)
    return EvalReport(
        policy=policy,
        episodes=len(results),
        success_rate=float(np.mean([r.success for r in results])),
        route_completion_mean=float(np.mean([r.route_completion for r in results])),
        return_mean=float(returns.mean()),
        return_std=float(returns.std()),
        discounted_return_mean=float(np.mean([r.discounted_return for r in results])),
        gamma=float(gamma),
        collisions_per_km=per_km(sum(r.collisions for r in results)),
        lane_invasions_per_km=per_km(sum(r.lane_invasions for r in results)),
        avg_speed_kmh=float(3.6 * km * 1000.0 / seconds) if seconds > 0 else 0.0,
        episode_length_mean=float(np.mean([r.steps for r in results])),
        distance_km=float(km),
        reward_min=float(min(r.reward_min for r in results)),
        reward_max=float(max(r.reward_max for r in results)),
        components_mean={k: float(np.mean([r.components[k] for r in results])) for k in COMPONENTS},
        termination_reasons=dict(Counter(r.termination_reason for r in results)),
        results=tuple(results),
    )


def evaluate(
    env,
    policy: Policy,
    episodes: int,
    seed: int = 0,
    policy_name: str = "policy",
    record: int = 0,
    frame_every: int = 1,
    gamma: float = 0.99,
) -> tuple[EvalReport, list[list[np.ndarray]]]:
    """Run ``episodes`` episodes (seeds ``seed``, ``seed + 1``, ...) and summarise them. Every episode drives
    the whole route: an environment with ``route_start`` other than ``beginning`` is refused.

    The first ``record`` episodes are rendered (``env`` needs ``render_mode="rgb_array"``); their frames come
    back as one list per episode.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    config = getattr(env.unwrapped, "config", None)
    if getattr(config, "route_start", "beginning") != "beginning":
        raise ValueError(
            f"the environment starts episodes at route_start={config.route_start!r}; an evaluation drives the whole "
            "route: make the environment with route_start='beginning'"
        )
    results, recordings = [], []
    for i in range(episodes):
        frames: list[np.ndarray] | None = [] if i < record else None
        results.append(run_episode(env, policy, seed + i, frames, frame_every, gamma))
        if frames is not None:
            recordings.append(frames)
    return summarise(results, policy_name, gamma), recordings


# ----------------------------------------------------------------------------------------------------------
# The trained agent as a policy


def env_spaces(config: Any) -> tuple[Any, Any]:
    """``(observation_space, action_space)`` of a :class:`jtd3.envs.DrivingEnv` for EnvConfig ``config``,
    without building it (no simulator, no CARLA connection); ``tests/test_install.py`` compares them with a
    built env's."""
    if config.backend == "sim":
        frame = (config.sim.camera.height, config.sim.camera.width)
    else:
        frame = (config.carla.output_height, config.carla.output_width)
    o = config.observation
    observation_space = gym.spaces.Dict(
        {
            "camera": gym.spaces.Box(0, 255, (o.frame_stack, int(frame[0]), int(frame[1])), np.uint8),
            "kinematics": gym.spaces.Box(-o.clip, o.clip, (kinematics_size(o),), np.float32),
        }
    )
    return observation_space, gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


class AgentPolicy:
    """The deterministic TD3 policy of a train state, as ``policy(obs) -> action`` (no exploration noise)."""

    def __init__(self, state: Any):
        self.state = state
        self._act = agent.act
        self._key = jax.random.PRNGKey(0)  # unused with noise 0, but act's signature takes one

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = {k: np.asarray(v)[None] for k, v in obs.items()}
        return np.asarray(self._act(self.state, batch, self._key, 0.0))[0]


def load_agent(run_dir: str, step: int | None = None, best: bool = False) -> tuple[Any, Any, int]:
    """Load a run's config and a checkpointed train state (``step``, the best by evaluation, or the latest).

    Returns ``(config, train_state, step)``. Opens the checkpoints read-only, so it is safe next to a running
    training process. Raises FileNotFoundError naming the path when there is no run or checkpoint.
    """
    run = Path(run_dir)
    if run.parent.name == "checkpoints" and run.name.isdigit():  # a step directory was given
        step, run = int(run.name), run.parent.parent
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run} is not a jtd3 run directory ({config_path} does not exist)")
    config = load_config(yaml.safe_load(config_path.read_text()))
    # the spaces from the config: no environment is built (on CARLA that would open a session on the server,
    # perhaps the one a training process drives)
    observation_space, action_space = env_spaces(config.env)
    template = agent.create(config.agent, observation_space, action_space, config.train.seed)
    store = CheckpointStore(run / "checkpoints", "read")
    try:
        if best:
            step = store.best_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint with evaluation metrics in {run / 'checkpoints'}")
        restored = store.restore(template, step)
    finally:
        store.close()
    return config, restored.train_state, restored.step
