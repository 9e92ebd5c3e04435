"""The root configuration of a run: the ``agent``, ``env`` and ``train`` sections of ``configs/default.yaml``.

Each section's class lives next to its code (:mod:`jtd3.agent.config`, :mod:`jtd3.envs.config`,
:mod:`jtd3.training.config`); this module only puts them together, so that the CLI, the loop and the evaluation
read one config without importing each other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jtd3.agent.config import AgentConfig
from jtd3.config import ConfigNode, from_dict, nested
from jtd3.envs.config import EnvConfig
from jtd3.training.config import TrainConfig

__all__ = ["Config", "TrainConfig", "load_config"]


@dataclasses.dataclass(frozen=True)
class Config(ConfigNode):
    """Everything a run needs; ``configs/default.yaml`` lists every key with its default."""

    agent: AgentConfig = nested(AgentConfig)
    env: EnvConfig = nested(EnvConfig)
    train: TrainConfig = nested(TrainConfig)


def load_config(data: dict[str, Any]) -> Config:
    """A :class:`Config` from a nested dict (the YAML file with its overrides), validated."""
    return from_dict(Config, data)
