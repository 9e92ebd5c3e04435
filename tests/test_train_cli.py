"""scripts/train.py as a user runs it (real subprocesses): the run directory, SIGKILL at a random moment, SIGTERM.

One short run writes a run directory whose contents are checked; then a resume of it is killed with SIGKILL at
a random moment after it has written a checkpoint, and a second resume must load the latest checkpoint and
go on, with no TensorBoard step logged twice, until a SIGTERM makes it save a checkpoint and exit with 143.
(20 kills and an exact comparison with an uninterrupted run: scripts/kill_resume_trials.py.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tiny_run import TINY_RUN

from jtd3.checkpoint import CheckpointStore
from jtd3.cli import split_passthrough
from jtd3.logging import read_scalars

REPO = Path(__file__).resolve().parent.parent
SCRIPT = str(REPO / "scripts" / "train.py")

# both encoders' statistics (the in-process tests run the default, shared)
SMALL = [*TINY_RUN, "--encoder", "separate"]

EXPECTED_TAGS = [
    "train/episode_reward", "train/episode_length", "train/speed_kmh", "train/collisions", "train/lane_invasions",
    "train/route_completion", "rewards/progress", "rewards/collision", "rewards/lane_keeping",
    "losses/critic_loss", "losses/actor_loss", "losses/q1_mean", "losses/q2_mean", "losses/target_q_mean",
    "losses/td_error", "grad_norm/actor_cnn", "grad_norm/actor_mlp", "grad_norm/critic_cnn", "grad_norm/critic_mlp",
    "debug/actor_cnn_features_l2_norm", "debug/actor_cnn_features_mean", "debug/actor_cnn_features_std",
    "debug/actor_cnn_features_min", "debug/actor_cnn_features_max", "debug/critic_cnn_features_l2_norm",
    "debug/critic_cnn_features_l2_norm_max", "debug/critic_cnn_features_dead_fraction",
    "eval/success_rate", "eval/route_completion", "eval/return_mean", "eval/avg_speed_kmh",
    "charts/steps_per_second", "charts/warmup_mean_speed_kmh",
]


def _train(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, SCRIPT, *args], cwd=REPO, env=env, **kw)


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, f"training did not reach {path}"
        time.sleep(0.2)


@pytest.mark.slow
def test_cli_run_directory_then_sigkill_and_resume(tmp_path):
    # 1. a complete short run
    proc = _train("--max-timesteps", "160", "--logdir", str(tmp_path), "--run-name", "r", *SMALL,
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    run = tmp_path / "r"
    assert f"checkpoints        {run / 'checkpoints'}" in out and "tensorboard --logdir" in out, out

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train"]["max_timesteps"] == 160 and config["train"]["batch_size"] == 8
    assert config["agent"]["norm"] == "layernorm" and config["env"]["backend"] == "sim"
    scalars = read_scalars(run)
    missing = [t for t in EXPECTED_TAGS if t not in scalars]
    assert not missing, f"missing TensorBoard tags: {missing}"
    rows = (run / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("env_steps,updates,success_rate,route_completion") and len(rows) == 3, rows
    store = CheckpointStore(run / "checkpoints", "read")
    assert store.all_steps() == [80, 160]
    store.close()

    # 2. resume for longer, SIGKILL at a random moment after its first checkpoint
    proc = _train("--resume", str(run), "--max-timesteps", "2000", "--set", "train.progress_bar=false",
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "240").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, "resumed run did not reach step 240"
        time.sleep(0.2)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 4.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    # 3. the latest checkpoint loads and the run goes on, until a SIGTERM (a job scheduler's stop): it saves a
    #    checkpoint at the step it reached and exits with 143, without a traceback
    store = CheckpointStore(run / "checkpoints", "read")
    latest = store.latest_step()
    store.close()
    assert latest is not None and latest >= 240
    proc = _train("--resume", str(run), "--max-timesteps", "100000", "--set", "train.progress_bar=false",
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "checkpoints" / str((latest // 80 + 1) * 80), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err, err
    line = next(x for x in err.splitlines() if x.startswith("jtd3: stopped by SIGTERM at env step "))
    stopped_at = int(line.split("env step ")[1].split(";")[0])
    assert f"checkpoint saved: {run / 'checkpoints' / str(stopped_at)}" in line
    store = CheckpointStore(run / "checkpoints", "read")
    assert store.latest_step() == stopped_at > latest
    store.close()
    scalars = read_scalars(run)
    for tag in ("losses/critic_loss", "charts/steps_per_second", "train/episode_reward"):
        steps = [s for s, _ in scalars[tag]]
        assert steps == sorted(set(steps)), (tag, steps)



def test_split_passthrough_keeps_everything_after_the_first_double_dash_for_training():
    assert split_passthrough(["--stage", "smoke", "--", "--seed", "3", "--", "x"]) == (
        ["--stage", "smoke"], ["--seed", "3", "--", "x"])
    assert split_passthrough(("--stage", "smoke")) == (["--stage", "smoke"], [])


# ----------------------------------------------------------------------------------------------------------
# train.jax_compilation_cache


def test_compilation_cache_setting_creates_the_directory_and_sets_it_for_jax_and_child_processes(
    tmp_path, monkeypatch
):
    import jax

    from jtd3.cli import use_compilation_cache
    from jtd3.machine import cpu_kind

    updates = {}
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.__setitem__(name, value))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    directory = use_compilation_cache("~/cache/jax")
    # one subdirectory per CPU kind: a compiled program uses the instruction set of the CPU it was compiled on
    expected = str(tmp_path / "cache" / "jax" / cpu_kind())
    assert directory == expected
    assert Path(expected).is_dir()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == expected  # inherited by workers and Ray actors
    # JAX is imported in this process: its config is set as well, every compilation cached
    assert updates == {"jax_compilation_cache_dir": expected, "jax_persistent_cache_min_compile_time_secs": 0.0}


def test_compilation_cache_the_callers_directory_wins_and_null_is_off(tmp_path, monkeypatch):
    from jtd3.cli import use_compilation_cache

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "callers"))
    assert use_compilation_cache(str(tmp_path / "configured")) == str(tmp_path / "callers")
    assert not (tmp_path / "configured").exists()
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    assert use_compilation_cache(None) is None
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ


def test_compilation_cache_bad_values_are_errors_naming_the_key(tmp_path, monkeypatch):
    from jtd3.cli import use_compilation_cache
    from jtd3.config import ConfigError, from_dict
    from jtd3.run_config import Config

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="train.jax_compilation_cache"):
        use_compilation_cache(str(blocker / "jax"))
    with pytest.raises(ConfigError, match="train.jax_compilation_cache"):
        from_dict(Config, {"train": {"jax_compilation_cache": ""}})
    assert from_dict(Config, {"train": {"jax_compilation_cache": None}}).train.jax_compilation_cache is None


def test_compilation_cache_is_filled_when_set_before_jax_is_imported(tmp_path):
    """The CLI's own path: JAX not imported yet, so the environment alone must reach it."""
    code = (
        "import os, sys\n"
        "from jtd3.cli import use_compilation_cache\n"
        "assert 'jax' not in sys.modules\n"
        f"use_compilation_cache({str(tmp_path / 'jaxcache')!r})\n"
        "import jax, jax.numpy as jnp\n"
        "jax.block_until_ready(jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert any((tmp_path / "jaxcache").iterdir()), "nothing was written to the compilation cache"
