"""configs/original.yaml (the original's hyperparameters) and scripts/validate.py (the seed's validation plan).

The end-to-end test runs a tiny smoke stage (the original wiring without normalization, 200 steps, small heads)
under read tracking: every key of the preset reaches the code, the report has a verdict per criterion, and the
original wiring's actor-side Q runs away from the critic-side Q. The criteria and the report are checked on
synthetic runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pytest

from jtd3 import validate
from jtd3.config import from_dict, leaf_keys, load_yaml, track_reads
from jtd3.logging import RunLogger, append_csv_row
from jtd3.run_config import Config
from jtd3.training.exploration import noise_scale

REPO = Path(__file__).resolve().parent.parent


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_preset_has_the_originals_effective_hyperparameters():
    cfg = from_dict(Config, load_yaml(str(validate.PRESET)))
    a, t = cfg.agent, cfg.train
    assert (a.encoder, a.norm, a.activation) == ("original", "layernorm", "leaky_relu")
    assert a.cnn_lr == a.mlp_lr == 3e-4
    assert (a.weight_decay, a.weight_decay_mode) == (1e-4, "coupled")
    assert (a.actor_grad_clip, a.critic_grad_clip, a.cnn_grad_clip, a.mlp_grad_clip) == (1.0, 10.0, None, None)
    assert (a.gamma, a.tau, a.policy_noise, a.noise_clip, a.policy_delay) == (0.99, 0.005, 0.2, 0.5, 2)
    assert (t.batch_size, t.replay.capacity, t.learning_starts, t.train_freq, t.gradient_steps) == (
        256, 100_000, 10_000, 1, 1)
    # exploration std 0.1 + 0.2 exp(-(step - 10000) / 4000) at absolute env steps
    for step in (10_000, 14_000, 30_000, 200_000):
        expected = 0.1 + 0.2 * math.exp(-(step - 10_000) / 4_000)
        assert noise_scale(t.exploration, step - t.learning_starts) == pytest.approx(expected, rel=1e-12)


def _write_run(run_dir: Path, *, actor_l2: float, actor_q: float, nan: bool = False) -> None:
    """A synthetic run: 8 logged windows after learning starts at step 100, episodes every 50 steps."""
    log = RunLogger(run_dir)
    for i in range(8):
        step = 150 + 50 * i
        log.scalars({
            "losses/critic_loss": 50.0 - 5.0 * i, "losses/td_error": 4.0 - 0.4 * i,
            "losses/actor_loss": -actor_q * (i + 1) / 8, "losses/actor_q": actor_q * (i + 1) / 8,
            "losses/q1_mean": -20.0, "debug/actor_q_on_critic_features": -19.0,
            "debug/critic_cnn_features_l2_norm": 15.0, "debug/critic_cnn_features_l2_norm_max": 17.0,
            "debug/critic_cnn_features_mean": 0.3, "debug/critic_cnn_features_std": 0.6,
            "debug/actor_cnn_features_l2_norm": actor_l2 * (i + 1) / 8,
            "debug/actor_cnn_features_l2_norm_max": actor_l2 * (i + 1) / 8 * 1.2,
            "debug/actor_cnn_features_mean": 0.3, "debug/actor_cnn_features_std": 0.6,
            "grad_norm/critic_cnn": 2.0, "grad_norm/actor_cnn": 1.0 + i,
            "param_norm/actor_cnn": 150.0 + i,
        }, step)
        log.scalars({"train/episode_reward": float(i)}, step)
    if nan:
        log.scalars({"alerts/losses/critic_loss": float("nan")}, 600)
    log.close()
    append_csv_row(run_dir / "eval.csv", {"env_steps": 500, "success_rate": 0.6, "route_completion": 0.9})


def test_criteria_and_report_on_synthetic_runs(tmp_path):
    stage = validate.STAGES["5k"]
    stage = dataclasses.replace(stage, learning_starts=100)
    runs = validate.plan_runs(stage, ["original", "shared"], ["none"], [0], 64, tmp_path)
    _write_run(Path(runs[0]["run_dir"]), actor_l2=5e5, actor_q=1e6, nan=True)
    _write_run(Path(runs[1]["run_dir"]), actor_l2=20.0, actor_q=-19.0)
    validate.summarise(stage, runs)
    bad, good = runs[0]["criteria"], runs[1]["criteria"]
    assert bad["feature_l2"]["passed"] is False and "actor 6.00e+05" in bad["feature_l2"]["measured"]
    assert good["feature_l2"]["passed"] is True
    assert bad["actor_q_scale"]["passed"] is False and good["actor_q_scale"]["passed"] is True
    assert bad["no_nan"]["passed"] is False and good["no_nan"]["passed"] is True
    for r in (bad, good):
        assert r["critic_loss"]["passed"] is True and r["td_error"]["passed"] is True  # decreasing, below bounds
        assert r["rewards_improving"]["passed"] is True  # returns 0..7 rise
        assert r["actor_loss"]["passed"] is False  # neither -1e6 nor +19 lies in [-1e4, -1e3]
    assert good["grad_explosion"]["passed"] is True  # the actor CNN gradient grew 8x, below 100x
    assert set(bad) == {c.key for c in validate.CRITERIA if "5k" in c.stages}
    fifty = validate.evaluate_criteria("50k", runs[1]["measurement"])
    assert fifty["eval_success"] == {"measured": "final 0.60 (best 0.60)", "passed": True}
    assert fifty["td_error_end"]["passed"] is False  # 1.2 at the end

    info = validate.machine()
    report = validate.write_report(tmp_path, stage, runs, "cmd", "plan", info).read_text()
    assert "| feature L2 < 100 throughout | < 100" in report
    assert "| original/none | shared/none |" in report
    assert "## Ill-posed criteria" in report and "reward" in report
    paths = validate.plot(tmp_path, runs)
    assert all(p.stat().st_size > 10_000 for p in paths)
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["label"] for r in results["runs"]] == ["original/none", "shared/none"]
    assert results["runs"][0]["criteria"]["feature_l2"]["passed"] is False


def _load_script():
    spec = importlib.util.spec_from_file_location("validate_script", REPO / "scripts" / "validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_the_cpu_plan(capsys, tmp_path):
    assert _load_script().main(["--stage", "5k", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("python scripts/train.py --config") == 8
    assert "--set agent.encoder=original" in out and "--set agent.encoder=shared" in out
    if validate.machine()["backend"] == "cpu":
        assert "CPU plan: batch 64 instead of the preset's 256" in out


def test_smoke_stage_end_to_end_reads_every_preset_key(tmp_path):
    """The smoke stage for the original wiring without normalization, tiny (CI: one compile, 100 updates)."""
    argv = ["--stage", "smoke", "--wirings", "original", "--norms", "none", "--out", str(tmp_path), "--",
            "--set", "agent.actor_hidden=[32, 32]", "--set", "agent.critic_hidden=[32, 32]",
            "--set", "train.max_timesteps=200", "--set", "train.learning_starts=100",
            "--set", "train.eval_freq=200", "--set", "train.checkpoint_freq=200", "--set", "env.max_episode_steps=100"]
    with track_reads() as reads:
        assert _load_script().main(argv) == 0
    keys = leaf_keys(Config)
    unread = sorted(k for k in _flatten(load_yaml(str(validate.PRESET))) if keys[k] not in reads)
    assert not unread, f"keys of configs/original.yaml no code read: {unread}"

    report = (tmp_path / "report.md").read_text()
    assert "| CNN L2 < 100 |" in report and "| no NaN |" in report and "| original/none |" in report
    assert (tmp_path / "validate_command.txt").read_text().startswith("python scripts/validate.py --stage smoke")
    results = json.loads((tmp_path / "results.json").read_text())
    (run,) = results["runs"]
    assert set(run["criteria"]) == {"cnn_l2", "feature_mean", "feature_std", "no_nan"}
    assert run["exit_code"] == 0 and run["criteria"]["no_nan"]["passed"] is True
    # The original wiring's actor encoder learns features that inflate Q: within a hundred updates its actor-side
    # Q leaves the critic's scale and its features the seed's bound (jtd3's wirings: tests/test_agent.py).
    info = run["info"]
    assert info["max abs actor-side Q"] > 100 * max(info["max abs critic-side Q"], 1.0), info
    assert run["criteria"]["cnn_l2"]["passed"] is False, run["criteria"]["cnn_l2"]
    assert (tmp_path / "q.png").stat().st_size > 10_000 and (tmp_path / "features.png").stat().st_size > 10_000
