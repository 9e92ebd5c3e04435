"""Two training environments on two CARLA servers, evaluation on a third (train.actors.kind: process), with the real
carla client in each worker process against jtd3's CARLA-protocol server (three child processes)."""

from __future__ import annotations

import json

import pytest

from tiny_run import TINY_RUN

pytest.importorskip("carla")

from carla_protocol_fixtures import free_port  # noqa: E402

from jtd3.carla_server.process import ServerProcess, shutdown_traffic_manager  # noqa: E402
from jtd3.cli import train_main  # noqa: E402


@pytest.mark.slow
def test_process_actors_train_on_two_servers_and_evaluate_on_a_third(tmp_path):
    tm = free_port()
    with ServerProcess() as a, ServerProcess() as b, ServerProcess() as evaluation:
        try:
            code = train_main([
                "--env", "carla", "--actors", "process", "--num-envs", "2",
                "--carla-servers", f"{a.host}:{a.port},{b.host}:{b.port}", "--carla-host", evaluation.host,
                "--carla-port", str(evaluation.port), "--set", f"env.carla.tm_port={tm}",
                "--set", "env.scenario_vehicles=[2, 2, 2]", "--max-timesteps", "120", "--logdir", str(tmp_path),
                "--run-name", "carla2", *TINY_RUN, "--set", "train.progress_bar=false",
            ])
        finally:
            for k, srv in enumerate((a, b, evaluation)):  # env i's Traffic Manager is on tm + i
                shutdown_traffic_manager(srv.host, srv.port, tm + k)
    assert code == 0
    report = json.loads((tmp_path / "carla2" / "final_report.json").read_text())
    assert report["env_steps"] == 120 and report["updates"] == 2 * ((120 - 60) // 4) and report["lost_episodes"] == 0
    assert report["final_eval"]["route_completion"] > 0
