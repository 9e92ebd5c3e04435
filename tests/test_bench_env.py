"""A tiny smoke of the environment-step benchmark (benchmarks/bench_env.py): its JSON lines and their fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_env_writes_meta_speed_and_profile_lines():
    out = subprocess.run([sys.executable, "benchmarks/bench_env.py", "--steps", "30", "--scenarios", "0",
                          "--profile", "3", "--against", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=300)
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
    # the same process timed HEAD's package (imported as jtd3_<sha>) beside the working tree's
    assert ab["kind"] == "against" and ab["scenario"] == 0 and ab["rev"] == "HEAD"
    assert ab["this_steps_per_s"] > 0 and ab["old_steps_per_s"] > 0 and ab["speedup"] > 0


def test_import_revision_gives_a_separate_package_of_that_commit():
    # the old package and everything it imports must come from the extracted copy, never from the working tree
    code = """
import importlib, sys
sys.path.insert(0, "benchmarks")
from revision import import_revision
old = import_revision("HEAD")
envs = importlib.import_module(old.__name__ + ".envs")
config = importlib.import_module(old.__name__ + ".config")
env = envs.make_env(config.from_dict(envs.EnvConfig, {"scenario": 0}), seed=0)
env.reset(seed=0)
env.step(env.action_space.sample())
print(old.__name__, envs.__file__, sorted(m for m in sys.modules if m == "jtd3" or m.startswith("jtd3.")))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    name, path, current = out.stdout.split(maxsplit=2)
    assert name.startswith("jtd3_") and not Path(path).is_relative_to(REPO)
    assert current.strip() == "[]"
