"""EnvConfig: every key reaches the code, it round-trips, bad values are named (configs/default.yaml: test_config_keys)."""


import numpy as np
import pytest

from jtd3.config import ConfigError, from_dict, leaf_keys, to_dict, track_reads
from jtd3.envs import EnvConfig, make_env



def _episode(cfg, steps=30):
    env = make_env(cfg)
    try:
        env.reset(seed=0)
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(np.array([0.0, 0.7], np.float32))
            if terminated or truncated:
                break
    finally:
        env.close()


def test_every_env_key_is_read():
    """The original project had YAML keys nothing read. Two short episodes (reference route with the front
    camera on Town01; a random route, random start, the lead-vehicle entries and the bird's-eye camera on a
    procedural town) read every key of the
    environment, observation and reward sections. (sim.* is the simulator's to read, carla.* CarlaSession's:
    tests/test_sim_config.py, tests/test_carla_session.py.)"""
    with track_reads() as reads:
        _episode(EnvConfig())
        _episode(from_dict(EnvConfig, {"route": "random", "route_start": "random", "observation": {"lead_vehicle": True},
                                       "speed_control": {"follow": True},
                                       "sim": {"town": "grid3", "camera": {"kind": "birdeye"}}}))
    keys = leaf_keys(EnvConfig)
    unread = sorted(k for k, pair in keys.items() if pair not in reads and not k.startswith(("sim.", "carla.")))
    assert unread == []


def test_env_config_round_trips():
    assert from_dict(EnvConfig, to_dict(EnvConfig())) == EnvConfig()  # a saved run config loads back


@pytest.mark.parametrize(
    "data, match",
    [
        ({"scenario": 3}, r"'scenario' = 3: must be one of 0, 1, 2"),
        ({"scenario": 3, "scenario_vehicles": [1, 2, 3, 4]}, None),
        ({"backend": "gazebo"}, r"'backend' = 'gazebo': must be one of 'sim', 'carla'"),
        ({"route": "loop"}, r"'route' = 'loop'"),
        ({"route_min_length_m": 500.0}, r"route_min_length_m.*route_max_length_m"),
        ({"reward": {"weights": {"collision": -5.0}}}, r"reward.weights.collision.*>= 0"),
        ({"reward": {"target_speed_kmh": 0.0}}, r"reward.target_speed_kmh"),
        ({"observation": {"n_waypoints": 0}}, r"observation.n_waypoints"),
        ({"observation": {"waypoints": 3}}, r"unknown config key\(s\) observation.waypoints"),
        ({"max_episode_steps": 0}, r"max_episode_steps"),
        ({"route_start": "middle"}, r"'route_start' = 'middle': must be one of 'beginning', 'random'"),
        ({"route_start_margin_m": -1.0}, r"route_start_margin_m"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(data, match):
    if match is None:
        assert from_dict(EnvConfig, data).num_vehicles == 4
        return
    with pytest.raises(ConfigError, match=match):
        from_dict(EnvConfig, data)


def test_scenario_table_sets_the_npc_count():
    from env_double import ScriptedBackend
    from jtd3.envs import DrivingEnv

    for scenario, n in ((0, 20), (1, 50), (2, 100)):
        be = ScriptedBackend()
        env = DrivingEnv(from_dict(EnvConfig, {"scenario": scenario}), backend=be)
        env.reset(seed=0)
        assert be.resets[-1][1] == n
