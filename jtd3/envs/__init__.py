"""The gymnasium driving environment over two backends (embedded simulator, CARLA server). See docs/env.md.

- :func:`make_env` / :class:`DrivingEnv`: observation ``{"camera": uint8 (4, 84, 84), "kinematics": float32
  (55,)}``, action ``[steer, target speed]`` in [-1, 1] (``env.longitudinal_action: pedals``: ``[steer,
  throttle_brake]``), reward (``jtd3.envs.reward``) and termination (``jtd3.envs.driving_env``).
- :class:`EnvConfig` (with ``ObservationConfig``, ``RewardConfig``, ``SimConfig``, ``CarlaConfig``); defaults in
  the ``env`` section of ``configs/default.yaml``.
- :func:`make_vector_env`: ``AsyncVectorEnv`` of N simulators, or N CARLA servers from a ``host:port`` list.
- Registered gymnasium id :data:`ENV_ID` (``"jtd3/Driving-v0"``): ``gymnasium.make(ENV_ID, config=...)`` where
  ``config`` is an ``EnvConfig``, a mapping (validated with ``jtd3.config.from_dict``) or ``None`` (defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium

from jtd3.envs.config import EnvConfig, ObservationConfig, RewardConfig, RewardWeights
from jtd3.envs.driving_env import TERMINATION_REASONS, DrivingEnv, GroundTruth, make_backend, make_env
from jtd3.envs.vector import make_vector_env, vector_env_configs

__all__ = [
    "ENV_ID",
    "DrivingEnv",
    "EnvConfig",
    "GroundTruth",
    "ObservationConfig",
    "RewardConfig",
    "RewardWeights",
    "TERMINATION_REASONS",
    "make_backend",
    "make_env",
    "make_vector_env",
    "vector_env_configs",
]

ENV_ID = "jtd3/Driving-v0"


def _registry_entry(
    config: EnvConfig | Mapping[str, Any] | None = None, seed: int | None = None, render_mode: str | None = None
) -> DrivingEnv:
    """Entry point of :data:`ENV_ID`."""
    if config is None or isinstance(config, EnvConfig):
        cfg = config
    elif isinstance(config, Mapping):
        from jtd3.config import from_dict

        cfg = from_dict(EnvConfig, config)
    else:
        raise TypeError(f"config must be an EnvConfig, a mapping or None, got {type(config).__name__}")
    return make_env(cfg, seed=seed, render_mode=render_mode)


if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="jtd3.envs:_registry_entry")
