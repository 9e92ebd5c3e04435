"""The TD3 agent: pure jitted functions over a train-state pytree.

- :func:`create` (config, observation_space, action_space, seed) -> :class:`TrainState`
- :func:`act` (state, obs, key, noise_scale) -> actions in [-1, 1], shape (B, A)
- :func:`update` (state, batch) -> (state, metrics); :func:`update_many` (state, batches) -> (state, metrics)

See :mod:`jtd3.agent.learn` for the TD3 math and metrics, :mod:`jtd3.agent.state` for the state layout and
docs/agent.md for design notes and measured speed.
"""

from jtd3.agent.config import AgentConfig
from jtd3.agent.learn import act, update, update_many
from jtd3.agent.state import AgentSpec, TrainState, create

__all__ = ["AgentConfig", "AgentSpec", "TrainState", "act", "create", "update", "update_many"]
