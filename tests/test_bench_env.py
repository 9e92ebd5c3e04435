"""A tiny smoke of the environment-step benchmark (benchmarks/bench_env.py): its JSON lines and their fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_env_writes_meta_speed_and_profile_lines():
    out = subprocess.run([sys.executable, "benchmarks/bench_env.py", "--steps", "30", "--scenarios", "0",
                          "--profile", "3", "--ab-camera"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    meta, speed, *profile, ab = rows
    assert meta["kind"] == "meta" and meta["cpu"] and "cpu_flags" in meta
    assert speed["kind"] == "env_step" and speed["scenario"] == 0 and speed["vehicles"] == 20
    assert speed["steps"] == 30 and speed["steps_per_s"] > 0
    assert abs(speed["ticks_per_s"] - speed["steps_per_s"] * speed["action_repeat"]) < 1.0
    assert [p["kind"] for p in profile] == ["profile"] * 3
    shares = [p["own_share"] for p in profile]
    assert shares == sorted(shares, reverse=True) and all(0 < s <= 1 for s in shares)
    assert all(p["calls"] > 0 and p["cum_share"] >= p["own_share"] for p in profile)
    assert ab["kind"] == "ab_camera" and ab["scenario"] == 0
    assert ab["last_tick_steps_per_s"] > 0 and ab["every_tick_steps_per_s"] > 0 and ab["ratio"] > 0
