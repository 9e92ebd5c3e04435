"""Training over several environments in worker processes (train.actors.kind: process): per-environment replay
streams, the configured update count, exact resume for N > 1, and errors that stay with their environment."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import yaml

from tiny_run import TINY_RUN

from jtd3.cli import train_main

TINY = [*TINY_RUN, "--set", "train.progress_bar=false", "--actors", "process", "--num-envs", "2"]


def run(tmp_path, name, steps, *extra):
    return train_main(["--max-timesteps", str(steps), "--logdir", str(tmp_path), "--run-name", name, *TINY, *extra])


def restore(run_dir):
    from jtd3 import agent
    from jtd3.checkpoint import CheckpointStore
    from jtd3.envs import make_env
    from jtd3.replay import ReplayBuffer
    from jtd3.run_config import load_config

    config = load_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    env = make_env(config.env)
    template = agent.create(config.agent, env.observation_space, env.action_space, config.train.seed)
    replay = ReplayBuffer.from_config(config.train.replay, env.observation_space, env.action_space, seed=0,
                                      streams=config.train.actors.num_envs)
    env.close()
    with CheckpointStore(run_dir / "checkpoints", "read") as store:
        return store.restore(template, replay=replay), replay


@pytest.mark.slow
def test_two_process_envs_fill_two_streams_and_resume_exactly(tmp_path):
    """Two environments in worker processes: each writes its own replay stream (the buffer checks every step's
    stack against the previous one of the same stream, so a mixed stack would have failed the run), the update
    calls are the config's (one per train_freq env steps past learning_starts), and a run stopped mid-episode
    and resumed ends bit-for-bit where the uninterrupted run does."""
    assert run(tmp_path, "full", 200) == 0
    assert run(tmp_path, "part", 130) == 0  # stops with both envs mid-episode (episodes last at most 50 steps)
    assert train_main(["--resume", str(tmp_path / "part"), "--max-timesteps", "200",
                       "--set", "train.progress_bar=false"]) == 0
    a, replay_a = restore(tmp_path / "full")
    b, replay_b = restore(tmp_path / "part")
    assert a.step == b.step == 200
    assert a.loop_state["updates"] == 2 * ((200 - 60) // 4)  # gradient_steps 2 per call
    region = replay_a.region
    for i in (0, 1):  # both streams hold their own environment's steps
        assert replay_a.valid[i * region:(i + 1) * region].sum() > 80
    for key in ("env_steps", "episodes", "updates", "np_rng", "loop_key", "envs", "pending_update_calls"):
        assert a.loop_state[key] == b.loop_state[key], key
    for name in ("frames", "kinematics", "action", "reward", "terminated", "truncated", "valid", "ep_pos"):
        np.testing.assert_array_equal(getattr(replay_a, name), getattr(replay_b, name), err_msg=name)
    for x, y in zip(jax.tree.leaves(a.train_state), jax.tree.leaves(b.train_state)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_an_environment_error_names_its_environment_and_leaves_the_others_working():
    from jtd3.envs import EnvConfig
    from jtd3.training.workers import EnvWorkers, WorkerError

    cfg = EnvConfig(scenario=0, max_episode_steps=20)
    workers = EnvWorkers([cfg, cfg])
    try:
        obs = [workers.reset(i, seed=i) for i in (0, 1)]
        assert obs[0]["camera"].shape == workers.observation_space["camera"].shape
        workers.step_async(np.array([[0.0, 0.5], [np.nan, 0.5]], np.float32), [7, 8])
        with pytest.raises(WorkerError, match="environment 1: ValueError"):
            workers.step_wait()
        workers.step_async(np.zeros((2, 2), np.float32), [7, 8])  # both workers still serve
        results = workers.step_wait()
        assert all(r.next_obs["camera"].dtype == np.uint8 for r in results)
        # the same seed gives the same episode in any worker
        np.testing.assert_array_equal(workers.reset(0, seed=5)["camera"], workers.reset(1, seed=5)["camera"])
    finally:
        workers.close()


def test_parallel_actor_settings_are_checked(tmp_path, capsys):
    assert train_main(["--logdir", str(tmp_path), "--num-envs", "2"]) != 0
    assert "train.actors.num_envs" in capsys.readouterr().err
    assert train_main(["--logdir", str(tmp_path), "--actors", "process", "--num-envs", "2",
                       "--carla-servers", "a:2000"]) != 0
    assert "train.actors.carla_servers" in capsys.readouterr().err


def test_carla_environments_get_one_server_each_and_evaluation_another():
    from jtd3.config import from_dict
    from jtd3.run_config import Config
    from jtd3.training.parallel import parallel_env_configs

    def cfg(kind, servers, port=2000):
        return from_dict(Config, {"env": {"backend": "carla", "carla": {"host": "evalhost", "port": port}},
                                  "train": {"actors": {"kind": kind, "num_envs": 2, "carla_servers": servers}}})

    envs, evaluation = parallel_env_configs(cfg("process", ["a:2000", "b:2000"]))
    assert [(e.carla.host, e.carla.port, e.carla.tm_port) for e in envs] == [("a", 2000, 8000), ("b", 2000, 8001)]
    assert (evaluation.carla.host, evaluation.carla.tm_port, evaluation.route_start) == ("evalhost", 8002, "beginning")
    with pytest.raises(ValueError, match="needs train.actors.carla_servers"):
        parallel_env_configs(cfg("process", []))
    with pytest.raises(ValueError, match="evaluation server"):
        parallel_env_configs(cfg("process", ["evalhost:2000", "b:2000"]))
    # Ray actors without a server list drive the server on their own machine
    envs, _ = parallel_env_configs(cfg("ray", [], port=2100))
    assert [(e.carla.host, e.carla.port) for e in envs] == [("localhost", 2100)] * 2
