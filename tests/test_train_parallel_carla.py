"""Two training environments on two CARLA servers, evaluation on a third, with the real carla client against jtd3's
CARLA-protocol server (three child processes): worker processes (train.actors.kind: process) and Ray actors placed
by a "carla" resource (kind: ray)."""

from __future__ import annotations

import json

import pytest

from tiny_run import TINY_RUN

pytest.importorskip("carla")

from carla_protocol_fixtures import free_port  # noqa: E402

from jtd3.carla_server.process import ServerProcess, shutdown_traffic_manager  # noqa: E402
from jtd3.cli import train_main  # noqa: E402


def train_on_three_servers(tmp_path, name: str, actors: str, *extra: str) -> dict:
    """Train 120 steps with two environments on two servers, evaluating on a third; the final report."""
    tm = free_port()
    with ServerProcess() as a, ServerProcess() as b, ServerProcess() as evaluation:
        try:
            code = train_main([
                "--env", "carla", "--actors", actors, "--num-envs", "2",
                "--carla-servers", f"{a.host}:{a.port},{b.host}:{b.port}", "--carla-host", evaluation.host,
                "--carla-port", str(evaluation.port), "--set", f"env.carla.tm_port={tm}",
                "--set", "env.scenario_vehicles=[2, 2, 2]", "--max-timesteps", "120", "--logdir", str(tmp_path),
                "--run-name", name, *TINY_RUN, "--set", "train.progress_bar=false", *extra,
            ])
        finally:
            # Only the evaluation's Traffic Manager (tm + 2) runs in this process. Env i's (tm + i) runs in its worker
            # process or Ray actor, which closes its own; asked here for a port that process still holds, the carla
            # client would try to start a new Traffic Manager on it and fail to bind (a flaky failure on CI).
            shutdown_traffic_manager(evaluation.host, evaluation.port, tm + 2)
    assert code == 0
    return json.loads((tmp_path / name / "final_report.json").read_text())


@pytest.mark.slow
def test_process_actors_train_on_two_servers_and_evaluate_on_a_third(tmp_path):
    report = train_on_three_servers(tmp_path, "carla2", "process")
    assert report["env_steps"] == 120 and report["updates"] == 2 * ((120 - 60) // 4) and report["lost_episodes"] == 0
    assert report["final_eval"]["route_completion"] > 0


@pytest.mark.slow
def test_ray_actors_are_placed_by_the_carla_resource_and_drive_their_servers(tmp_path):
    """A local Ray cluster offering two "carla" resources (as two server machines would): two Ray actors, each
    needing one (an actor without a free one would never start), train on two servers; evaluation on a third."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, resources={"carla": 2}, include_dashboard=False, log_to_driver=False)
    try:
        report = train_on_three_servers(tmp_path, "carla_ray", "ray", "--set", "train.actors.chunk_steps=20")
    finally:
        ray.shutdown()
    assert report["env_steps"] >= 120 and report["lost_episodes"] == 0 and report["updates"] > 0
