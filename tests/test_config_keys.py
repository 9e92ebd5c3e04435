"""Every key of the configuration reaches the code (the original project had YAML keys nothing read).

Reads are recorded with :func:`jtd3.config.track_reads` while the code runs: a short training run through the
CLI (agent, env, sim, replay, checkpoint, exploration, evaluation), then the branches a default run does not
take: random routes on a procedural town with the bird's-eye camera, a collision and reverse driving in the
simulator, and an episode on the CARLA backend over the fake server (including its reconnect path).
Configs/default.yaml must be exactly what scripts/write_default_config.py writes from the dataclass defaults.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from jtd3 import DATA_DIR
from jtd3.backends.base import Pose, VehicleControl
from jtd3.cli import train_main
from jtd3.config import from_dict, leaf_keys, track_reads
from jtd3.run_config import Config

REPO = Path(__file__).resolve().parent.parent


def _sim_collision_and_reverse() -> None:
    from jtd3.backends.sim import SimConfig, SimWorld

    world = SimWorld(SimConfig())
    p = world.network.project(300.0, 129.5)
    world.reset(Pose(305.5, p.y, 180.0), 0, seed=0)
    lane = world.network.lanes[p.lane_index]
    world.traffic.place([p.lane_index], [lane.s1 - p.s], np.random.default_rng(0), 9000)
    hit = False
    for _ in range(40):
        hit = hit or bool(world.step(VehicleControl(throttle=1.0)).collisions)
    assert hit, "the constructed collision did not happen"
    world.reset(Pose(305.5, p.y, 180.0), 0, seed=0)
    for _ in range(5):
        world.step(VehicleControl(throttle=1.0, reverse=True))
    world.close()


def _random_route_birdeye_lead_vehicle() -> None:
    from jtd3.envs import EnvConfig, make_env

    cfg = from_dict(EnvConfig, {"route": "random", "route_start": "random", "observation": {"lead_vehicle": True},
                                 "speed_control": {"follow": True},
                                 "sim": {"town": "grid3", "camera": {"kind": "birdeye"}}})
    env = make_env(cfg, seed=0)
    env.reset(seed=1)
    for _ in range(3):
        env.step(np.array([0.0, 0.5], np.float32))
    env.close()


def _carla_episode() -> None:
    pytest.importorskip("carla")
    from fake_carla import FakeServer, make_carla

    from jtd3.backends.carla.errors import CarlaEpisodeLost
    from jtd3.backends.carla.session import CarlaSession
    from jtd3.envs import DrivingEnv, EnvConfig

    cfg = from_dict(EnvConfig, {"backend": "carla", "carla": {"probe": False, "reconnect_backoff_s": 0.0}})
    server = FakeServer(opendrive=(DATA_DIR / "Town01.xodr").read_text(encoding="utf-8"))
    env = DrivingEnv(cfg, backend=CarlaSession(cfg.carla, carla_module=make_carla(server)))
    env.reset(seed=0)
    env.step(np.array([0.0, 1.0], np.float32))
    server.fail["tick"] = 1  # the reconnect path reads the reconnect settings
    with pytest.raises(CarlaEpisodeLost):
        env.step(np.array([0.0, 1.0], np.float32))
    env.close()
    server.join_timers()


def _clear_map_caches() -> None:
    """Drop the cached towns (and the rasters and lane graphs cached on them) and JAX's compiled functions:
    earlier tests in the same process built them from the same settings, and a cache hit reads no config key
    (the agent's Flax modules and optimisers are cached per spec, and a jitted update is not traced again)."""
    import jax

    from jtd3.agent import state
    from jtd3.envs import driving_env
    from jtd3.roads import towns

    jax.clear_caches()
    state.modules.cache_clear()
    state.optimizer.cache_clear()

    towns.load_town.cache_clear()
    driving_env._network_from_text.cache_clear()


@pytest.mark.slow
def test_every_config_key_is_read(tmp_path):
    _clear_map_caches()
    argv = [
        "--max-timesteps", "120", "--learning-starts", "40", "--batch-size", "8", "--eval-freq", "120",
        "--checkpoint-freq", "120", "--num-eval-episodes", "1", "--logdir", str(tmp_path), "--run-name", "keys",
        "--set", "env.max_episode_steps=30", "--set", "train.replay.capacity=500", "--set", "train.log_freq=20",
        "--set", "train.progress_bar=false", "--set", "train.exploration.noise_decay_steps=50",
        "--set", "agent.actor_hidden=[32, 32]", "--set", "agent.critic_hidden=[32, 32]",
    ]
    with track_reads() as reads:
        assert train_main(argv) == 0
        for actors in ("process", "ray"):  # the train.actors keys of the loops over several environments
            # learning starts at 20 of the 40 steps, so update calls (and the keys read by them, such as
            # train.actors.publish_every) are certain; with 40 of 40 they happened only when the actors' chunks
            # overshot the last step
            assert train_main([*argv, "--max-timesteps", "40", "--learning-starts", "20", "--eval-freq", "40",
                               "--checkpoint-freq", "40", "--actors", actors, "--num-envs", "2",
                               "--run-name", actors]) == 0
        _random_route_birdeye_lead_vehicle()
        _sim_collision_and_reverse()
        _carla_episode()
    unread = sorted(key for key, field in leaf_keys(Config).items() if field not in reads)
    assert not unread, f"config keys no code reads: {unread}"


def test_default_yaml_is_generated_from_the_dataclasses():
    spec = importlib.util.spec_from_file_location("write_default_config", REPO / "scripts" / "write_default_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (REPO / "configs" / "default.yaml").read_text()
    assert committed == module.render(), "configs/default.yaml is stale: run python scripts/write_default_config.py"
    import yaml

    assert from_dict(Config, yaml.safe_load(committed)) == Config()
