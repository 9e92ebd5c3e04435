"""Episode runner, report aggregation and the evaluation CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from env_double import ScriptedBackend
from jtd3.baselines.policy import ConstantPolicy
from jtd3.envs import DrivingEnv, EnvConfig
from jtd3.envs.reward import COMPONENTS
from jtd3.evaluate import EpisodeResult, evaluate, run_episode, summarise

ROOT = Path(__file__).resolve().parent.parent


def result(seed, distance_m, steps, collisions=0, invasions=0, ret=1.0, success=False, reason="time_limit"):
    return EpisodeResult(seed, steps, ret, 0.5 * ret, success, reason, 0.5, distance_m, steps * 0.05, collisions,
                         invasions, -1.0, 2.0, dict.fromkeys(COMPONENTS, ret / len(COMPONENTS)))


def test_summary_rates_and_speeds():
    rep = summarise([result(0, 500.0, 400, collisions=1, ret=10.0, success=True, reason="route_completed"),
                     result(1, 1500.0, 1000, invasions=3, ret=30.0)], policy="x")
    assert rep.success_rate == 0.5
    assert rep.collisions_per_km == pytest.approx(0.5)
    assert rep.lane_invasions_per_km == pytest.approx(1.5)
    assert rep.avg_speed_kmh == pytest.approx(3.6 * 2000.0 / 70.0)  # total distance over total time
    assert rep.return_mean == 20.0 and rep.return_std == 10.0
    assert rep.episode_length_mean == 700.0
    assert rep.termination_reasons == {"route_completed": 1, "time_limit": 1}
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["results"][0]["avg_speed_kmh"] == pytest.approx(3.6 * 500.0 / 20.0)
    md = rep.to_markdown()
    assert "| collisions / km | 0.50 |" in md and "| success rate | 0.50 |" in md


def test_per_km_rates_are_undefined_without_distance():
    rep = summarise([result(0, 0.0, 10)])
    assert rep.collisions_per_km is None and "n/a" in rep.to_markdown()


def test_run_episode_sums_what_the_env_reports():
    env = DrivingEnv(EnvConfig(max_episode_steps=30, route_start="beginning", action_repeat=1,
                               longitudinal_action="pedals"), backend=ScriptedBackend(), render_mode="rgb_array")
    frames = []
    r = run_episode(env, ConstantPolicy((0.0, 0.6)), seed=4, frames=frames, frame_every=10)
    assert r.steps == 30 and r.termination_reason == "time_limit" and not r.success
    assert sum(r.components.values()) == pytest.approx(r.episode_return)
    assert r.reward_min <= r.episode_return / r.steps <= r.reward_max
    assert r.distance_m == pytest.approx(0.5 * 1.8 * 1.5**2, rel=0.1)  # the double: 3 m/s^2 * 0.6 for 1.5 s
    assert len(frames) == 1 + 3 and frames[0].dtype == np.uint8
    rep, rec = evaluate(env, ConstantPolicy((0.0, 0.6)), episodes=2, seed=4, record=1)
    assert [x.seed for x in rep.results] == [4, 5] and len(rec) == 1
    assert rep.results[0].episode_return == r.episode_return  # same seed, same episode


def test_evaluation_refuses_random_starts():
    env = DrivingEnv(EnvConfig(route_start="random"), backend=ScriptedBackend())
    with pytest.raises(ValueError, match="route_start='random'.*route_start='beginning'"):
        evaluate(env, ConstantPolicy((0.0, 0.6)), episodes=1)


def test_cli_writes_reports_and_a_gif(tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--policy", "offroad", "--episodes", "2",
         "--gif", "1", "--gif-every", "5", "--out", str(out), "--set", "max_episode_steps=200"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["episodes"] == 2 and rep["config"]["max_episode_steps"] == 200
    assert all(r["termination_reason"] in ("off_route", "collision") for r in rep["results"])
    assert "| success rate | 0.00 |" in (out / "report.md").read_text()
    assert (out / "episode_0.gif").stat().st_size > 1000 and (out / "episode_0_2.png").exists()
    assert not (out / "episode_1.gif").exists()


def test_cli_rejects_bad_keys_with_the_key_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--set", "reward.weights.progres=2",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "reward.weights.progres" in proc.stderr
