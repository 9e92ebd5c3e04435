"""Resume safety and early errors of the training CLI (in-process, tiny runs on the embedded simulator).

A resume never writes before its checks pass (a refused resume leaves the run directory byte for byte as it
was), never deletes the only replay, falls back from a damaged checkpoint to the newest intact one (naming the
damaged file), loads ``--resume-step N`` and keeps the explosion alarm's checkpoint apart. Bad input for a new
run fails before the environment is built and before anything is created.
"""

from __future__ import annotations

import gc
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest
import yaml

from tiny_run import TINY_RUN

from jtd3.checkpoint import CheckpointStore, committed_steps
from jtd3.cli import MEMORY_HEADROOM_GB, train_main
from jtd3.logging import read_scalars

TINY = [*TINY_RUN, "--set", "train.progress_bar=false"]


def run(root: Path, name: str, steps: int, *extra: str) -> tuple[int, Path]:
    code = train_main(["--max-timesteps", str(steps), "--logdir", str(root), "--run-name", name, *TINY, *extra])
    return code, root / name


def resume(run_dir: Path, *extra: str) -> int:
    return train_main(["--resume", str(run_dir), "--set", "train.progress_bar=false", *extra])


def listing(run_dir: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(run_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*"))


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished 160-step run with checkpoints at 80 and 160, both with their replay."""
    code, run_dir = run(tmp_path_factory.mktemp("base"), "base", 160)
    assert code == 0
    with CheckpointStore(run_dir / "checkpoints", "read") as store:
        assert store.all_steps() == [80, 160] and store.steps_with_replay() == [80, 160]
    return run_dir


@pytest.fixture
def copy(base, tmp_path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "r"))


@pytest.fixture
def no_env(monkeypatch):
    """Building an environment fails the test: the checks must come first."""
    import jtd3.envs

    def refuse(*args, **kwargs):
        raise AssertionError("an environment was built before the checks failed")

    monkeypatch.setattr(jtd3.envs, "make_env", refuse)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "5"], "cannot change train.seed (was 0, now 5)"),
        (["--set", "train.replay.capacity=3000"], "cannot change train.replay.capacity (was 2000, now 3000)"),
        (["--norm", "none"], "cannot change agent.norm"),
        (["--set", "env.max_episode_steps=60"], "cannot change env.max_episode_steps"),
        (["--set", "train.explosion_l2_threshold=.inf"], "'train.explosion_l2_threshold' = inf: must be a finite"),
        (["--resume-step", "999"], "--resume-step 999: no committed checkpoint at step 999"),
        (["--set", "train.replay.memory_limit_gb=0.001"], "the largest capacity that fits is 137"),
    ],
)
def test_refused_resume_writes_nothing(copy, capsys, no_env, argv, message):
    before = listing(copy)
    assert resume(copy, *argv) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines[0], lines
    assert listing(copy) == before  # config.yaml included: a later plain --resume still works


def test_hand_edited_state_key_is_refused_against_the_checkpoint(copy, capsys, no_env):
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["agent"]["gamma"] = 0.5
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = listing(copy)
    assert resume(copy) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert f"differs from the config recorded in checkpoint {copy / 'checkpoints' / '160'}" in lines[0]
    assert "agent.gamma (was 0.99, now 0.5)" in lines[0], lines
    assert listing(copy) == before


def test_turning_save_replay_off_never_deletes_the_saved_replays(copy, capsys):
    assert resume(copy, "--max-timesteps", "240", "--set", "train.checkpoint.save_replay=false") == 0
    with CheckpointStore(copy / "checkpoints", "read") as store:
        assert store.all_steps() == [80, 160, 240]
        assert store.steps_with_replay() == [80, 160]
    # the next resume loads 240 (no replay) and says so
    capsys.readouterr()
    assert resume(copy, "--max-timesteps", "260") == 0
    assert "holds no replay buffer; the replay starts empty" in capsys.readouterr().err


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


# Reading the truncated array leaves orbax's per-shard read coroutines unfinished; Python reports them when they
# are collected ("Exception ignored in: <coroutine object _read_array_index_and_device_put ...>"), which the test
# makes happen inside it. That is orbax cleaning up after the damage this test makes on purpose; the fallback
# itself is asserted below.
@pytest.mark.filterwarnings("ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "item, named",
    [("train_state", "train_state"), ("replay", "replay/frames.npy")],  # every item: test_checkpoint.py
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(copy, capsys, item, named):
    latest = copy / "checkpoints" / "160"
    target = _largest_file(latest / item)
    with open(target, "r+b") as fh:
        fh.truncate(target.stat().st_size // 2)
    assert resume(copy, "--max-timesteps", "200") == 0
    gc.collect()  # orbax's abandoned read coroutines are collected (and their report filtered) here
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warning = [line for line in err.splitlines() if line.startswith("warning:") and "is damaged" in line]
    assert warning and f"{latest} is damaged" in warning[0] and named in warning[0], err
    assert "trying checkpoint 80" in warning[0], warning
    assert (copy / "damaged_checkpoints" / "160").is_dir()  # kept for inspection, out of the way
    assert committed_steps(copy / "checkpoints") == [80, 160, 200]  # 160 was trained again from 80
    report = json.loads((copy / "final_report.json").read_text())
    assert report["env_steps"] == 200
    steps = [s for s, _ in read_scalars(copy)["losses/critic_loss"]]
    assert steps == sorted(set(steps)) and max(steps) == 200


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(base, tmp_path, capsys):
    run_dir = tmp_path / "early"
    run_dir.mkdir()
    shutil.copy(base / "config.yaml", run_dir / "config.yaml")  # what a kill during start-up leaves
    assert resume(run_dir, "--max-timesteps", "80") == 0
    assert "has no checkpoint yet" in capsys.readouterr().err
    assert committed_steps(run_dir / "checkpoints") == [80]


def test_resume_step_loads_that_checkpoint_and_moves_newer_ones_aside(copy, capsys):
    assert resume(copy, "--resume-step", "80", "--max-timesteps", "120") == 0
    assert committed_steps(copy / "checkpoints") == [80, 120]
    assert committed_steps(copy / "superseded_checkpoints") == [160]
    assert f"moved checkpoint {copy / 'checkpoints' / '160'}" in capsys.readouterr().err


def test_alarm_checkpoint_is_kept_apart_and_resumed_only_on_request(tmp_path, capsys):
    code, run_dir = run(tmp_path, "boom", 200, "--set", "train.explosion_l2_threshold=1e-3")
    assert code == 3
    capsys.readouterr()
    assert resume(run_dir) == 2  # no regular checkpoint: a plain resume must not load the alarm's state
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "the explosion alarm saved step(s) [64]" in lines[0] and "--resume-step" in lines[0]
    assert resume(run_dir, "--resume-step", "64", "--max-timesteps", "80",
                  "--set", "train.explosion_l2_threshold=1e6") == 0
    err = capsys.readouterr().err
    assert "resuming from the checkpoint the explosion alarm saved at env step 64" in err, err
    assert "cnn_features_l2_norm" in err  # what fired it
    assert committed_steps(run_dir / "checkpoints") == [80]
    assert committed_steps(run_dir / "alarms" / "64") == [64]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "train.explosion_l2_threshold=.inf"], "'train.explosion_l2_threshold' = inf: must be a finite"),
        (["--set", "train.explosion_l2_threshold=-1"], "'train.explosion_l2_threshold' = -1.0: must be a finite"),
        (["--run-name", "../outside"], "'train.run_name' = '../outside': must be one directory name"),
        (["--run-name", "a/b"], "'train.run_name' = 'a/b': must be one directory name"),
        (["--set", "train.replay.capacity=1000000000"], f"minus {MEMORY_HEADROOM_GB:g} GB headroom"),
        (["--set", "train.replay.memory_limit_gb=0.001"], "train.replay.memory_limit_gb = 0.001"),
        (["--resume-step", "3"], "--resume-step needs --resume"),
    ],
)
def test_bad_new_run_fails_in_one_line_before_building_anything(tmp_path, capsys, no_env, argv, message):
    logdir = tmp_path / "logs"
    assert train_main(["--logdir", str(logdir), "--run-name", "x", *TINY, *argv]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines[0], lines
    assert not logdir.exists() and not (tmp_path / "outside").exists()


def test_a_program_that_is_not_carla_is_one_line_and_leaves_no_run_directory(tmp_path, capsys):
    pytest.importorskip("carla")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def answer_nonsense():
        conn, _ = srv.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    t = threading.Thread(target=answer_nonsense, daemon=True)
    t.start()
    try:
        code = train_main(["--env", "carla", "--carla-port", str(port), "--logdir", str(tmp_path), "--run-name", "c",
                           *TINY])
    finally:
        t.join(timeout=10)
        srv.close()
    assert code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "not a CARLA server" in lines[0], lines
    assert not (tmp_path / "c").exists()
