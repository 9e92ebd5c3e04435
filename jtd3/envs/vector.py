"""Several driving environments in subprocesses (``gymnasium.vector.AsyncVectorEnv``).

On the simulator every subprocess builds its own ``SimWorld``. On CARLA each environment needs its own server:
``servers`` lists ``"host:port"`` per environment, and environments on the same host get Traffic Manager ports
``carla.tm_port + i`` so they do not share one (docs/carla.md: one TM per server).
"""

from __future__ import annotations

import dataclasses
import functools

import gymnasium as gym

from jtd3.envs.config import EnvConfig
from jtd3.envs.driving_env import make_env

__all__ = ["make_vector_env", "parse_server", "vector_env_configs"]


def parse_server(text: str) -> tuple[str, int]:
    """``"host:port"`` -> (host, port); raises ``ValueError`` naming the bad entry."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65534:
        raise ValueError(f"CARLA server {text!r} must look like host:port with a port in [1, 65534]")
    return host, int(port)


def vector_env_configs(config: EnvConfig, num_envs: int, servers: list[str] | tuple[str, ...] | None = None) -> list[EnvConfig]:
    """One ``EnvConfig`` per environment: identical on the simulator; on CARLA one server each (``servers``,
    required when ``num_envs > 1``) and a distinct Traffic Manager port per environment."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if config.backend != "carla":
        if servers:
            raise ValueError(f"servers are for backend 'carla', the config says backend {config.backend!r}")
        return [config] * num_envs
    if not servers:
        if num_envs > 1:
            raise ValueError(f"{num_envs} CARLA environments need {num_envs} servers (host:port each), got none")
        return [config]
    if len(servers) != num_envs:
        raise ValueError(f"got {len(servers)} CARLA servers for {num_envs} environments; give one host:port each")
    parsed = [parse_server(s) for s in servers]
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"CARLA servers must be distinct, got {list(servers)}")
    out = []
    for i, (host, port) in enumerate(parsed):
        carla = dataclasses.replace(config.carla, host=host, port=port, tm_port=config.carla.tm_port + i)
        out.append(dataclasses.replace(config, carla=carla))
    return out


def make_vector_env(
    config: EnvConfig,
    num_envs: int,
    seed: int | None = None,
    servers: list[str] | tuple[str, ...] | None = None,
    context: str = "spawn",
) -> gym.vector.AsyncVectorEnv:
    """``AsyncVectorEnv`` of ``num_envs`` environments (env i seeded ``seed + i`` on its first reset).

    ``context="spawn"`` by default: forking a process that already runs JAX threads can deadlock.
    """
    cfgs = vector_env_configs(config, num_envs, servers)
    fns = [functools.partial(make_env, c, None if seed is None else seed + i) for i, c in enumerate(cfgs)]
    return gym.vector.AsyncVectorEnv(fns, context=context)
