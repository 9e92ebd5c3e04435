"""The training pipeline end to end on the embedded simulator: run directory, exact resume, alarm, bad input.

Runs are tiny (a few hundred steps, batch 8, 50-step episodes) and in-process where possible, so the jitted
update compiles once per test session.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from tiny_run import TINY_RUN

from jtd3.checkpoint import CheckpointStore, committed_steps
from jtd3.cli import train_main
from jtd3.config import to_dict
from jtd3.logging import read_scalars

REPO = Path(__file__).resolve().parent.parent

TINY = [*TINY_RUN, "--set", "train.progress_bar=false"]


def run(tmp_path: Path, name: str, steps: int, *extra: str) -> tuple[int, Path]:
    code = train_main(["--max-timesteps", str(steps), "--logdir", str(tmp_path), "--run-name", name, *TINY, *extra])
    return code, tmp_path / name


def restore(run_dir: Path):
    from jtd3 import agent
    from jtd3.envs import make_env
    from jtd3.replay import ReplayBuffer
    from jtd3.run_config import Config, load_config

    config = load_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    env = make_env(config.env)
    template = agent.create(config.agent, env.observation_space, env.action_space, config.train.seed)
    replay = ReplayBuffer.from_config(config.train.replay, env.observation_space, env.action_space, seed=0)
    env.close()
    store = CheckpointStore(run_dir / "checkpoints", "read")
    restored = store.restore(template, replay=replay)
    store.close()
    return restored, replay


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    code, full = run(tmp_path, "full", 240)
    assert code == 0
    code, part = run(tmp_path, "part", 130)  # stops mid-episode (episodes last at most 50 steps)
    assert code == 0
    assert train_main(["--resume", str(part), "--max-timesteps", "240", "--set", "train.progress_bar=false"]) == 0

    a, replay_a = restore(full)
    b, replay_b = restore(part)
    assert a.step == b.step == 240
    for key in ("env_steps", "episodes", "updates"):
        assert a.loop_state[key] == b.loop_state[key], key
    assert a.loop_state["np_rng"] == b.loop_state["np_rng"]
    assert a.loop_state["loop_key"] == b.loop_state["loop_key"]
    for name in ("frames", "kinematics", "action", "reward", "terminated", "truncated", "valid", "ep_pos"):
        np.testing.assert_array_equal(getattr(replay_a, name), getattr(replay_b, name), err_msg=name)
    leaves_a, leaves_b = jax.tree.leaves(a.train_state), jax.tree.leaves(b.train_state)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # TensorBoard: the resumed run's logs continue without any step logged twice.
    scalars = read_scalars(part)
    for tag in ("train/episode_reward", "losses/critic_loss", "charts/steps_per_second", "eval/success_rate"):
        steps = [s for s, _ in scalars[tag]]
        assert steps == sorted(set(steps)), (tag, steps)
    assert max(s for s, _ in scalars["losses/critic_loss"]) == 240


def test_n_step_training_samples_n_step_batches(tmp_path):
    """agent.n_step = 3 reaches the replay: the agent refuses 1-step batches under n_step > 1, so a run that
    trains at all sampled n-step ones."""
    code, run_dir = run(tmp_path, "nstep", 100, "--set", "agent.n_step=3")
    assert code == 0
    restored, _ = restore(run_dir)
    assert restored.loop_state["updates"] > 0


def test_explosion_alarm_on_feature_norm_writes_a_checkpoint_and_exits_3(tmp_path, capsys):
    code, run_dir = run(tmp_path, "boom", 200, "--set", "train.explosion_l2_threshold=1e-3")
    assert code == 3
    err = capsys.readouterr().err
    first_update = 64  # learning_starts 60, train_freq 4
    assert f"EXPLOSION ALARM at env step {first_update}" in err and "cnn_features_l2_norm" in err, err
    assert "there is no regular checkpoint yet" in err and f"--resume-step {first_update}" in err, err
    # the alarm's state is kept apart: never the "latest" of the regular checkpoints
    assert committed_steps(run_dir / "checkpoints") == []
    store = CheckpointStore(run_dir / "alarms" / str(first_update), "read")
    assert store.latest_step() == first_update
    store.close()
    scalars = read_scalars(run_dir)
    alerts = [t for t in scalars if t.startswith("alerts/")]
    assert alerts and all(scalars[t][0][0] == first_update for t in alerts), alerts


def test_explosion_alarm_on_injected_nan(tmp_path, capsys, monkeypatch):
    from jtd3 import train

    original_init = train.Trainer.__init__

    def poisoned_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        # one NaN in a Q-head kernel (not the encoder the actor reads): actions stay finite, the first
        # update's critic loss is NaN
        head = self.state.critic.params["head"]
        leaves, treedef = jax.tree.flatten(head)
        i = max(range(len(leaves)), key=lambda i: leaves[i].size)
        leaves[i] = leaves[i].at[(0,) * leaves[i].ndim].set(jax.numpy.nan)
        params = {**self.state.critic.params, "head": jax.tree.unflatten(treedef, leaves)}
        self.state = self.state.replace(critic=self.state.critic.replace(params=params))

    monkeypatch.setattr(train.Trainer, "__init__", poisoned_init)
    code, run_dir = run(tmp_path, "nan", 200)
    assert code == 3
    err = capsys.readouterr().err
    assert "EXPLOSION ALARM at env step 64" in err and "= nan" in err and "losses/critic_loss" in err, err
    assert (run_dir / "alarms" / "64" / "64").is_dir() and not (run_dir / "checkpoints" / "64").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "agent.normalisation=layernorm"], "unknown config key 'agent.normalisation'"),
        (["--set", "agent.norm=groupnorm"], "'agent.norm' = 'groupnorm'"),
        (["--set", "train.batch_size=0"], "train.batch_size"),
        (["--resume", "/nonexistent/run"], "no run there"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, argv, message):
    assert train_main(["--logdir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unknown_flag_value_and_existing_run_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--norm", "groupnorm"])
    assert e.value.code == 2
    assert "invalid choice: 'groupnorm'" in capsys.readouterr().err
    existing = tmp_path / "r"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    assert train_main(["--logdir", str(tmp_path), "--run-name", "r"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_resume_refuses_to_change_the_agent(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}")
    assert train_main(["--resume", str(tmp_path), "--norm", "none"]) == 2
    assert "cannot change agent.norm" in capsys.readouterr().err


def test_carla_unreachable_fails_fast_with_instructions(tmp_path, capsys):
    pytest.importorskip("carla")
    code = train_main(
        ["--env", "carla", "--carla-port", str(_closed_port()), "--logdir", str(tmp_path), "--run-name", "c",
         "--set", "train.progress_bar=false"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--env sim" in err, err
    assert not (tmp_path / "c").exists()  # a failed start leaves no run directory to block the name


def test_evaluate_script_loads_a_checkpoint(tmp_path, monkeypatch):
    import importlib.util
    import json

    import jtd3.envs

    made = []
    make_env = jtd3.envs.make_env

    def recording_make_env(config, *args, **kwargs):
        made.append(config.route_start)
        return make_env(config, *args, **kwargs)

    monkeypatch.setattr(jtd3.envs, "make_env", recording_make_env)
    code, run_dir = run(tmp_path, "ev", 80, "--set", "env.route_start=random")
    assert code == 0
    assert made == ["random", "beginning"]  # training env, evaluation env: evaluation starts at the beginning
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "report"
    assert script.main(["--checkpoint", str(run_dir), "--num-episodes", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["policy"] == "td3@80" and report["episodes"] == 2
    assert report["config"]["max_episode_steps"] == 50  # the run's own environment
    assert report["config"]["route_start"] == "beginning"  # whatever the training episodes did
    assert script.main(["--checkpoint", str(run_dir), "--best", "--num-episodes", "1", "--out", str(out)]) == 0
    assert script.main(["--checkpoint", str(tmp_path / "missing")]) == 2


def test_metric_window_averages_actor_metrics_over_policy_steps_only():
    from jtd3.training.bookkeeping import MetricWindow

    w = MetricWindow()
    # gradient_steps=1, policy_delay=2: every other call makes an actor update (its actor metrics are 0.0 otherwise)
    w.add({"losses/critic_loss": 1.0, "losses/actor_loss": 0.0, "losses/actor_updates": 0.0,
           "debug/actor_cnn_features_l2_norm_max": 0.0, "debug/critic_cnn_features_min": -1.0})
    w.add({"losses/critic_loss": 3.0, "losses/actor_loss": -4.0, "losses/actor_updates": 1.0,
           "debug/actor_cnn_features_l2_norm_max": 7.0, "debug/critic_cnn_features_min": -2.0})
    m = w.means()
    assert m["losses/critic_loss"] == 2.0 and m["losses/actor_loss"] == -4.0
    assert m["debug/actor_cnn_features_l2_norm_max"] == 7.0 and m["debug/critic_cnn_features_min"] == -2.0


def test_ctrl_c_during_an_evaluation_saves_a_checkpoint_and_exits_130(tmp_path, capsys, monkeypatch):
    import signal

    from jtd3 import train

    evaluate = train.Trainer._evaluate

    def interrupted_evaluate(self):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the evaluation runs: its next action stops it
        return evaluate(self)

    monkeypatch.setattr(train.Trainer, "_evaluate", interrupted_evaluate)
    code, run_dir = run(tmp_path, "int", 200)
    assert code == 130
    err = capsys.readouterr().err
    assert "SIGINT received: saving a checkpoint" in err and "stopped by SIGINT at env step 80" in err, err
    assert committed_steps(run_dir / "checkpoints") == [80]
    assert not (run_dir / "eval.csv").exists()  # the interrupted evaluation wrote nothing
    monkeypatch.undo()
    assert train_main(["--resume", str(run_dir), "--max-timesteps", "100", "--set", "train.progress_bar=false"]) == 0
    assert committed_steps(run_dir / "checkpoints") == [80, 100]


def test_a_second_ctrl_c_exits_at_once(tmp_path, capsys, monkeypatch):
    import signal

    from jtd3 import train

    def evaluate_interrupted_twice(self):
        os.kill(os.getpid(), signal.SIGINT)  # the first asks for a checkpoint at the next safe point ...
        os.kill(os.getpid(), signal.SIGINT)  # ... the second leaves at once, from here
        raise AssertionError("the second Ctrl-C did not interrupt")

    monkeypatch.setattr(train.Trainer, "_evaluate", evaluate_interrupted_twice)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when started in the background
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "int2", 200)
    assert e.value.code == 130
    assert committed_steps(tmp_path / "int2" / "checkpoints") == []  # nothing saved: it left at once
    assert signal.getsignal(signal.SIGINT) is before  # the CLI's handler is uninstalled, the previous one back
