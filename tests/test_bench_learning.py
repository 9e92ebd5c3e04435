"""A tiny smoke of the learning benchmark (benchmarks/bench_learning.py) and its statistics (jtd3.stats)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from jtd3.stats import bootstrap_iqm_interval, iqm, wilson_interval
from tiny_run import TINY_RUN

ROOT = Path(__file__).resolve().parent.parent


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(2, 3)
    assert (round(lo, 2), round(hi, 2)) == (0.21, 0.94)  # the interval the issue quotes for 2/3
    lo, hi = wilson_interval(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_iqm_trims_a_quarter_on_each_side_and_the_bootstrap_brackets_it():
    assert iqm([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0]) == pytest.approx(3.5)  # 0, 1 and 6, 100 trimmed
    assert iqm([0.2, 0.4, 0.9]) == pytest.approx(0.5)  # fewer than 4: the mean
    rng = np.random.default_rng(0)
    groups = [rng.random(50) < p for p in (0.9, 0.8, 0.95, 0.85)]
    lo, hi = bootstrap_iqm_interval(groups, reps=400)
    point = iqm([g.mean() for g in groups])
    assert lo <= point <= hi and hi - lo < 0.3
    assert bootstrap_iqm_interval([[1, 1, 1], [1, 1]], reps=50) == (1.0, 1.0)


@pytest.mark.slow
def test_benchmark_smoke_trains_evaluates_and_reports(tmp_path, monkeypatch):
    # imported by name, as the --jobs workers (spawned processes) import it to unpickle their task
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.delitem(sys.modules, "bench_learning", raising=False)
    bench = importlib.import_module("bench_learning")
    out = tmp_path / "bench"
    args = ["--seeds", "0", "--episodes", "2", "--other-scenarios", "--out", str(out),
            "--", *TINY_RUN, "--max-timesteps", "120"]
    assert bench.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    seed = res["seeds"][0]
    for which in ("final", "selected"):
        ev = seed[which]
        assert ev["episodes"] == 2 and 0 <= ev["successes"] <= 2
        assert ev["episode_seeds"][0] == bench.BENCH_SEED_BASE
        lo, hi = ev["success_ci95"]
        assert 0.0 <= lo <= ev["successes"] / 2 <= hi <= 1.0
        assert len(ev["outcomes"]) == 2 and len(ev["failures"]) == 2 - ev["successes"]
    assert seed["final"]["step"] == 120 and seed["training"]["env_steps"] == 120
    assert seed["training"]["wall_s"] > 0 and seed["curve"]["env_steps"][-1] == 120
    report = (out / "report.md").read_text()
    assert "| 0 | final (120) |" in report and "IQM" in report
    assert (out / "learning_curves.png").stat().st_size > 0 and (out / "failures.png").stat().st_size > 0
    assert (out / "runs" / "seed0" / "bench_eval.json").is_file()
    # run again: the finished run is reused, not retrained, and its evaluations are not redone
    mtime = (out / "runs" / "seed0" / "final_report.json").stat().st_mtime
    assert bench.main(args) == 0
    assert (out / "runs" / "seed0" / "final_report.json").stat().st_mtime == mtime
    assert math.isclose(json.loads((out / "results.json").read_text())["seeds"][0]["training"]["wall_s"],
                        seed["training"]["wall_s"])
    # --jobs 2: seed 1 trains and is evaluated in a worker process beside seed 0 (reused); seeds keep their order
    jobs_args = ["--seeds", "1", "0", "--jobs", "2", *args[2:]]
    assert bench.main(jobs_args) == 0
    res2 = json.loads((out / "results.json").read_text())
    assert [s["seed"] for s in res2["seeds"]] == [1, 0] and res2["jobs"] == 2
    assert res2["seeds"][1]["final"] == seed["final"] and res2["seeds"][1]["selected"] == seed["selected"]
    assert res2["seeds"][0]["final"]["step"] == 120 and (out / "runs" / "seed1" / "bench_eval.json").is_file()
    assert "## Training runs (this command: --jobs 2; reused runs keep their own wall clock)" in (out / "report.md").read_text()


def test_failure_positions_count_a_checkpoint_once():
    """When the selected checkpoint is the final one, its failed episodes are one set, not two."""
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "benchmarks" / "bench_learning.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def ev(step, *failures):
        return {"step": step, "failures": [{"reason": r, "route_s": x} for r, x in failures]}

    same = ev(20000, ("off_route", 223.0), ("time_limit", 235.0))
    per_seed = [
        {"seed": 0, "final": same, "selected": same},
        {"seed": 1, "final": ev(20000, ("collision", 205.0)), "selected": ev(15000, ("off_route", 224.0))},
    ]
    assert bench.failure_positions(per_seed) == {
        "collision": [205.0], "off_route": [223.0, 224.0], "time_limit": [235.0]
    }
