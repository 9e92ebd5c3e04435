"""DrivingEnv on the CARLA backend without a server: CarlaSession over the fake server of tests/fake_carla.py,
serving Town01's OpenDRIVE text (the environment builds its road network from it, as with a real server)."""

import numpy as np
import pytest

from fake_carla import FakeServer, make_carla
from jtd3 import DATA_DIR
from jtd3.config import from_dict
from jtd3.envs import DrivingEnv, EnvConfig
from jtd3.backends.carla.session import CarlaSession


def carla_env(server, **overrides):
    cfg = from_dict(EnvConfig, {"backend": "carla", "route_start": "beginning", "scenario_vehicles": [3, 3, 3],
                                "carla": {"probe": False, "reconnect_backoff_s": 0.0, "sensor_timeout_s": 0.5},
                                **overrides})
    return DrivingEnv(cfg, backend=CarlaSession(cfg.carla, carla_module=make_carla(server)))


def test_episode_on_the_carla_backend_and_clean_teardown():
    server = FakeServer(opendrive=(DATA_DIR / "Town01.xodr").read_text(encoding="utf-8"))
    env = carla_env(server)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    ego = env.ground_truth().ego
    assert ego.location[:2] == pytest.approx([317.74, 129.49], abs=0.01)  # the reference route's start
    assert info["next_waypoint"] == 1 and not info["off_road"]
    for _ in range(20):
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0], np.float32))
        assert not terminated and not truncated
    assert info["route_s"] > 0.5 and info["reward_components"]["progress"] > 0.0
    assert obs["kinematics"][0] > 0.0  # moving forward
    assert np.all(obs["kinematics"][5::2] > 0.0)  # the next 25 waypoints lie ahead on the 216 m straight
    server.events[server.frame + 1].append(("collision", server.alive("vehicle.")[-1]))
    _, _, terminated, _, info = env.step(np.array([0.0, 1.0], np.float32))
    assert terminated and info["termination_reason"] == "collision" and info["collisions"] == 1
    env.close()
    server.join_timers()
    assert server.alive() == [] and server.violations == []
    assert server.settings["synchronous_mode"] is False
