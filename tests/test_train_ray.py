"""Training with Ray actors on a local Ray cluster (train.actors.kind: ray): two embedded-simulator actors fill
their own replay streams with whole episodes, and a killed actor loses only its episode in flight."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest

from tiny_run import TINY_RUN

from jtd3.cli import train_main

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_two_ray_actors_train_and_a_killed_actor_loses_only_its_episode_in_flight(tmp_path, monkeypatch):
    """Actor 0 is killed while the learner holds part of its episode; the run goes on with actor 1 until Ray has
    restarted actor 0 and it delivers again, then the test stops the run (SIGTERM: checkpoint, exit 143)."""
    from jtd3.training import ray_actors

    accept = ray_actors.RayTrainer._accept
    killed, back = [], []

    def accept_then_kill(self, i, chunk):
        accept(self, i, chunk)
        if killed and i == 0 and chunk["incarnation"] != killed[0]:
            back.append(chunk["episode"])  # the restarted actor 0 delivers
        if len(back) >= 3 or (killed and time.monotonic() - killed[1] > 180):
            self.request_stop(signal.SIGTERM)
        if not killed and i == 0 and self.pending[0]:
            ray.kill(self.env.actors[0], no_restart=False)
            killed.extend([chunk["incarnation"], time.monotonic()])

    monkeypatch.setattr(ray_actors.RayTrainer, "_accept", accept_then_kill)
    code = train_main(["--max-timesteps", "100000", "--logdir", str(tmp_path), "--run-name", "r", *TINY_RUN,
                       "--set", "train.progress_bar=false", "--actors", "ray", "--num-envs", "2",
                       "--set", "train.actors.chunk_steps=10", "--set", "train.checkpoint_freq=100000",
                       "--set", "train.eval_freq=100000"])
    assert code == 128 + signal.SIGTERM and killed and len(back) >= 3  # Ray restarted actor 0, the run used it

    from test_train_parallel import restore

    restored, replay = restore(tmp_path / "r")
    assert restored.loop_state["lost_episodes"] == 1 and restored.loop_state["updates"] > 0
    assert not replay.is_episode_open(0) and not replay.is_episode_open(1)
    assert replay.valid[replay.region:].sum() > 40  # actor 1's episodes, in stream 1
    # only whole episodes: every stored step that does not end its episode is followed by the next one
    s = replay.valid_indices()
    ends = replay.terminated[s] | replay.truncated[s]
    assert replay.valid[replay._advance(s[~ends], 1)].all()
    # the stacks are those the actors saw: frame j of a stack is frame j + 1 of the stack before
    batch = replay.gather(s[~ends])
    np.testing.assert_array_equal(batch["next_obs"]["camera"][:, :-1], batch["obs"]["camera"][:, 1:])


@pytest.mark.slow
def test_a_ray_run_resumes_with_new_episodes_and_says_so(tmp_path, capsys):
    args = ["--logdir", str(tmp_path), "--run-name", "r", *TINY_RUN, "--set", "train.progress_bar=false",
            "--actors", "ray", "--num-envs", "2", "--set", "train.actors.chunk_steps=10"]
    assert train_main(["--max-timesteps", "160", *args]) == 0
    capsys.readouterr()
    assert train_main(["--resume", str(tmp_path / "r"), "--max-timesteps", "260",
                       "--set", "train.progress_bar=false"]) == 0
    assert "Ray actors start new episodes on resume" in capsys.readouterr().err
    report = json.loads((tmp_path / "r" / "final_report.json").read_text())
    assert report["env_steps"] >= 260 and report["updates"] >= 2 * ((260 - 60) // 4)
