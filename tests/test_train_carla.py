"""The real Trainer on the CARLA backend over the fake server of tests/fake_carla.py (no CARLA needed).

Training, evaluation (on the training session: never a second session on the server), checkpoints and close
leave the server as it was: no violation recorded by the fake, asynchronous with its original settings, no
actor of ours, sensor queues bounded. Faults injected into a running training (a lost episode, a tick
timeout, a sensor timeout, a server gone and back, a server gone for good, a crashed server restarted with
carla.server_command) end their episode cleanly and training goes on, or the run saves and stops with one
line. The replay buffer checks at every ``add`` that each observation continues the stored episode, so a run
that completes proves the replay stayed consistent across the faults.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from fake_carla import FakeServer, make_carla
from tiny_run import TINY_RUN

from jtd3 import DATA_DIR
from jtd3.checkpoint import CheckpointStore
from jtd3.cli import train_main
from jtd3.backends.carla import session as carla_session

CARLA = [
    "--env", "carla",
    "--set", "env.carla.probe=false",
    "--set", "env.carla.reconnect_backoff_s=0",
    "--set", "env.carla.sensor_timeout_s=0.2",
    "--set", "env.scenario_vehicles=[2, 2, 2]",
    "--set", "env.action_repeat=1",  # one tick per env step: the faults below are placed by tick number
    "--set", "train.progress_bar=false",
]


@pytest.fixture
def server(monkeypatch):
    """A fake server with Town01 that every CarlaSession of the test connects to; sensor queue sizes are
    recorded (the largest backlog per queue name)."""
    srv = FakeServer(opendrive=(DATA_DIR / "Town01.xodr").read_text(encoding="utf-8"))
    srv.original_settings = dict(srv.settings)
    monkeypatch.setattr(carla_session, "import_carla", lambda: make_carla(srv))
    srv.backlog = defaultdict(int)
    put = carla_session.FrameQueue.put

    def recording_put(self, item):
        put(self, item)
        srv.backlog[self.name] = max(srv.backlog[self.name], self._queue.qsize() + len(self._ahead))

    monkeypatch.setattr(carla_session.FrameQueue, "put", recording_put)
    yield srv
    srv.join_timers()


def train(tmp_path: Path, name: str, steps: int, *extra: str) -> tuple[int, Path]:
    argv = ["--max-timesteps", str(steps), "--logdir", str(tmp_path), "--run-name", name, *TINY_RUN, *CARLA, *extra]
    return train_main(argv), tmp_path / name


def assert_server_left_clean(server: FakeServer) -> None:
    assert server.violations == []
    assert server.alive() == []  # no actor of ours left
    assert server.settings == server.original_settings  # asynchronous, as found
    assert all(not tm["sync"] for tm in server.tm.values())
    assert server.backlog and max(server.backlog.values()) <= 2, dict(server.backlog)


def connects(server: FakeServer) -> int:
    return sum(1 for e in server.log if e[0] == "load_world_if_different")


def lost_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("jtd3: CARLA ")]


def test_training_evaluation_checkpoint_and_close_on_one_session(tmp_path, server, capsys):
    code, run_dir = train(tmp_path, "clean", 100)
    assert code == 0
    assert connects(server) == 1  # evaluations ran on the training session: no second client
    rows = (run_dir / "eval.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["80", "100"]
    with CheckpointStore(run_dir / "checkpoints", "read") as store:
        assert store.all_steps() == [80, 100]
    assert lost_lines(capsys.readouterr().err) == []
    assert_server_left_clean(server)


def _drop_next_camera_frame(srv: FakeServer) -> None:
    def plan(frame):
        del srv.plans["camera"]
        return []  # this tick's image never arrives

    srv.plans["camera"] = plan


def test_lost_episode_sensor_timeouts_and_a_server_gone_and_back_during_training(tmp_path, server, capsys,
                                                                                    monkeypatch):
    from jtd3 import train as train_lib

    server.at_tick[40] = lambda s: s.fail.update({"tick": 1})  # tick timeout: the episode is lost
    server.at_tick[60] = _drop_next_camera_frame  # sensor timeout in a training episode
    server.at_tick[150] = lambda s: setattr(s, "down_rpcs", 8)  # gone for 8 RPCs, longer than the session retries
    evaluate = train_lib.Trainer._evaluate

    def evaluate_with_a_lost_frame(self):
        if self.env_steps == 80:
            server.at_tick[server.tick_rpcs + 10] = _drop_next_camera_frame  # ... and in the first evaluation
        return evaluate(self)

    monkeypatch.setattr(train_lib.Trainer, "_evaluate", evaluate_with_a_lost_frame)
    code, run_dir = train(tmp_path, "faults", 160)
    assert code == 0
    lines = lost_lines(capsys.readouterr().err)
    kinds = [line.split()[2] for line in lines]
    assert kinds == ["CarlaEpisodeLost", "CarlaSensorTimeout", "CarlaSensorTimeout", "CarlaUnavailableError"], lines
    assert "during the evaluation at env step 80" in lines[2] and "evaluation abandoned" in lines[2], lines
    report = json.loads((run_dir / "final_report.json").read_text())
    assert report["env_steps"] == 160 and report["lost_episodes"] == 3  # training episodes
    rows = (run_dir / "eval.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["160"]  # the abandoned evaluation wrote no row
    assert_server_left_clean(server)


def test_server_gone_for_good_saves_and_stops_then_resumes_when_it_is_back(tmp_path, server, capsys):
    server.at_tick[120] = lambda s: setattr(s, "down", True)
    code, run_dir = train(tmp_path, "gone", 400)
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CARLA failed 5 times in a row" in errors[0], err
    assert len(lost_lines(err)) == 5
    with CheckpointStore(run_dir / "checkpoints", "read") as store:
        stopped_at = store.latest_step()
        assert f"checkpoint saved at env step {stopped_at}" in errors[0]
        assert stopped_at in store.steps_with_replay()
    server.restart()  # the server is back (a fresh process)
    assert train_main(["--resume", str(run_dir), "--max-timesteps", str(stopped_at + 40)]) == 0
    assert json.loads((run_dir / "final_report.json").read_text())["env_steps"] == stopped_at + 40
    assert server.violations == [] and server.alive() == []


class FakeServerProcess:
    """Stands in for carla_session.ServerProcess: 'starting' the server restarts the fake one."""

    server: FakeServer
    started = 0

    def __init__(self, command, host, port, start_timeout_s):
        self.command = command

    def start(self):
        type(self).started += 1
        self.server.restart()

    def alive(self):
        return not self.server.down

    def stop(self):
        self.server.down = True


def test_server_command_starts_restarts_every_k_episodes_and_after_a_crash(tmp_path, server, monkeypatch, capsys):
    process = type("P", (FakeServerProcess,), {"server": server, "started": 0})
    monkeypatch.setattr(carla_session, "ServerProcess", process)
    server.down = True  # no server yet: the session starts one
    server.at_tick[130] = lambda s: setattr(s, "down", True)  # the server crashes
    code, _ = train(tmp_path, "cmd", 160, "--set", "env.carla.server_command=fake-carla --port 2000",
                    "--set", "env.carla.restart_every_episodes=2")
    assert code == 0
    restarts = [e for e in server.log if e[0] == "restart"]
    assert process.started == len(restarts) >= 3  # first start, every-2-episodes restarts, the crash
    assert [line.split()[2] for line in lost_lines(capsys.readouterr().err)] == ["CarlaEpisodeLost"]
    assert server.down  # close() stopped the server it started
    assert server.violations == []
