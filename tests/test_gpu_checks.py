"""benchmarks/gpu_checks.py: the prepared GPU run must refuse a CPU backend (its numbers would be filed as GPU
numbers) and turn the benchmark's rows into the README's table."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from gpu_checks import main, table  # noqa: E402


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the refusal is for machines without a GPU")
def test_full_checks_refuse_a_cpu_backend(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 2
    assert "not a GPU" in capsys.readouterr().err
    assert (tmp_path / "meta.json").is_file() and not (tmp_path / "bench_agent.jsonl").exists()


def test_table_has_one_row_per_jtd3_row_with_its_sb3_rate_and_the_training_run():
    rows = [
        {"impl": "gemm-bound", "batch": 64},
        {"impl": "sb3", "batch": 64, "steps_per_s": 50.0},
        {"impl": "jtd3", "batch": 64, "encoder": "shared", "compute_dtype": "bfloat16", "conv_impl": "xla",
         "steps_per_s": 123.456, "sb3_steps_per_s_interleaved": [40.0, 60.0, 50.0], "ratio_vs_sb3": 2.47,
         "compile_s": 7.5},
        {"ratio": "jtd3/sb3", "batch": 64},
    ]
    train = {"argv": ["scripts/train.py", "--norm", "layernorm", "--max-timesteps", "4000"],
             "env_steps_per_s_after_warmup": 210.5, "wall_s": 61.0, "device_memory_peak_mb": 812.3}
    text = table(rows, train)
    assert "| 64 | shared | bfloat16 | xla | 123.46 | 50.00 | 2.47 | 7.5 |" in text
    assert text.count("| 64 |") == 1  # the sb3, gemm-bound and ratio lines are not jtd3 rows
    assert "| --norm layernorm --max-timesteps 4000 | 210.5 | 61.0 | 812.3 | - |" in text
    main_job = {"run": "main job", "env_steps_per_s_after_warmup": 190.0, "wall_s": 161.0,
                "device_memory_peak_mb": 136.1, "eval_success_rates": [[2500, 0.0], [5000, 0.8], [7500, 1.0]]}
    assert "| main job | 190.0 | 161.0 | 136.1 | 0, 0.8, 1 |" in table(rows, train, main_job)


@pytest.mark.slow
def test_smoke_main_job_reports_its_evaluations_and_speed(tmp_path):
    """The pipeline of ``--main-job`` at a tiny size: a real training run whose evaluations and env steps/s are
    read back from its TensorBoard events (a renamed scalar would leave them empty)."""
    from gpu_checks import SMOKE_MAIN_JOB, train_check

    result = train_check(tmp_path / "runs", SMOKE_MAIN_JOB, 300, "main job (smoke size)")
    assert result["exit_code"] == 0, result["tail"]
    steps = [step for step, _ in result["eval_success_rates"]]
    assert steps == [200, 400], result  # eval_freq 200 over 400 env steps
    assert all(0.0 <= v <= 1.0 for _, v in result["eval_success_rates"])
    assert result["env_steps_per_s_after_warmup"] > 0
    assert result["run"] == "main job (smoke size)"
