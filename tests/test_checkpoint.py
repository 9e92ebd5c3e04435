"""Orbax checkpoint layer: exact round trip, retention, bad input, and crash safety under SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from jtd3.checkpoint import CheckpointConfig, CheckpointStore, check_json_state
from jtd3.config import ConfigError
from jtd3.replay import ReplayBuffer

WORKER = Path(__file__).with_name("ckpt_kill_worker.py")
TMP_MARK = ".orbax-checkpoint-tmp"


@struct.dataclass
class TrainState:
    params: dict
    opt_state: optax.OptState
    batch_stats: dict
    key: jax.Array  # typed key (threefry)
    rbg_key: jax.Array  # typed key, another implementation
    raw_key: jax.Array  # legacy uint32 key
    step: jax.Array


def make_state(seed: int) -> TrainState:
    k = jax.random.key(seed)
    params = {
        "conv": {"kernel": jax.random.normal(k, (3, 3, 4, 8)), "bias": jnp.zeros(8)},
        "head": {"kernel": jax.random.normal(jax.random.fold_in(k, 1), (8, 2)).astype(jnp.bfloat16)},
    }
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-trivial moments and count
    return TrainState(
        params=params,
        opt_state=opt_state,
        batch_stats={"mean": jnp.arange(8, dtype=jnp.float32) * seed, "var": jnp.ones(8)},
        key=jax.random.split(jax.random.key(seed + 1), 2),
        rbg_key=jax.random.key(seed + 2, impl="rbg"),
        raw_key=jax.random.PRNGKey(seed + 3),
        step=jnp.asarray(seed * 10, jnp.int32),
    )


def assert_trees_identical(a, b) -> None:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def fill_buffer(buf: ReplayBuffer, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (buf.stack, *buf.frame_shape)
    obs = {"camera": np.zeros(shape, np.uint8), "kinematics": np.zeros(buf.kinematics_dim, np.float32)}
    buf.start_new_episode()
    for t in range(n):
        frame = rng.integers(0, 256, (1, *buf.frame_shape), dtype=np.uint8)
        nxt = {"camera": np.concatenate([obs["camera"][1:], frame]), "kinematics": rng.normal(size=buf.kinematics_dim).astype(np.float32)}
        done = t % 17 == 16
        buf.add(obs, rng.uniform(-1, 1, buf.action_dim), float(t), nxt, done, False)
        obs = {"camera": np.repeat(frame, buf.stack, 0), "kinematics": nxt["kinematics"]} if done else nxt


def small_buffer(seed: int = 0) -> ReplayBuffer:
    return ReplayBuffer(64, frame_shape=(6, 6), kinematics_dim=3, seed=seed)


def loop_state(step: int, rng: np.random.Generator) -> dict:
    return {"env_steps": step, "episodes": step // 7, "noise_scale": 0.1 * 0.99**step, "rng": rng.bit_generator.state, "recent": [1.5, None, "x"]}


def test_an_unknown_format_version_is_refused_naming_the_readable_ones(tmp_path, monkeypatch):
    from jtd3 import checkpoint

    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 99)
    with CheckpointStore(tmp_path / "ckpt", "new", save_replay=False) as store:
        store.save(10, make_state(1), {"x": 1})
    monkeypatch.undo()
    with CheckpointStore(tmp_path / "ckpt", "read") as store, pytest.raises(ValueError) as err:
        store.restore(make_state(0))
    assert "format_version 99" in str(err.value) and "reads (1, 2)" in str(err.value)
    # a format-1 checkpoint of a tree that is not the agent's state is read as it is (its layout never changed)
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 1)
    with CheckpointStore(tmp_path / "v1", "new", save_replay=False) as store:
        store.save(10, make_state(1), {"x": 1})
    monkeypatch.undo()
    with CheckpointStore(tmp_path / "v1", "read") as store:
        assert_trees_identical(store.restore(make_state(0)).train_state, make_state(1))


def test_round_trip_is_exact_and_resumes_the_same_future(tmp_path):
    state, rng, buf = make_state(3), np.random.default_rng(42), small_buffer(seed=7)
    fill_buffer(buf, 90, seed=1)  # wrapped (64 slots)
    buf.sample(8)
    with CheckpointStore(tmp_path / "ckpt", "new") as store:
        path = store.save(500, state, loop_state(500, rng), replay=buf, metrics={"success_rate": 0.5, "route_completion": 0.7})
        assert path == tmp_path / "ckpt" / "500" and path.is_dir()
        assert not [p for p in path.parent.iterdir() if TMP_MARK in p.name]  # committed when save returns
    expected_draws = rng.random(5)
    expected_batch = buf.sample_many(2, 16)

    with CheckpointStore(tmp_path / "ckpt", "resume") as store:
        buf2 = small_buffer(seed=0)
        r = store.restore(make_state(0), replay=buf2)
    assert r.step == 500 and r.replay_restored
    assert r.metrics == {"success_rate": 0.5, "route_completion": 0.7}
    assert isinstance(r.train_state, TrainState)
    assert_trees_identical(r.train_state, state)
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = r.loop_state["rng"]
    np.testing.assert_array_equal(rng2.random(5), expected_draws)
    assert r.loop_state["recent"] == [1.5, None, "x"] and r.loop_state["noise_scale"] == 0.1 * 0.99**500
    batch = buf2.sample_many(2, 16)
    jax.tree.map(np.testing.assert_array_equal, batch, expected_batch)

    # an abstract template (jax.eval_shape of the state constructor) works as well
    with CheckpointStore(tmp_path / "ckpt", "read") as store:
        r2 = store.restore(jax.eval_shape(lambda: make_state(0)))
    assert_trees_identical(r2.train_state, state)


def test_retention_keeps_the_newest_and_the_best(tmp_path):
    state, rng, buf = make_state(1), np.random.default_rng(0), small_buffer()
    fill_buffer(buf, 10, seed=0)
    metrics = {
        1: {"success_rate": 0.2, "route_completion": 0.1},
        2: {"success_rate": 0.6, "route_completion": 0.3},
        3: {"success_rate": 0.6, "route_completion": 0.8},  # ties 2 on success, wins on route completion
        4: None,  # no evaluation at this checkpoint
        5: {"success_rate": 0.6, "route_completion": 0.5},
        6: {"success_rate": 0.1, "route_completion": 0.9},
        7: None,
    }
    with CheckpointStore(tmp_path, "new", keep_last=2, keep_best=1) as store:
        for step, m in metrics.items():
            store.save(step, state, loop_state(step, rng), replay=buf, metrics=m)
        assert store.all_steps() == [3, 6, 7]
        assert store.best_step() == 3
        assert store.steps_with_replay() == [7]  # replay_keep_last=1: older checkpoints drop theirs
        assert store.metrics(3) == metrics[3] and store.metrics(7) is None
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or TMP_MARK in p.name]
        # the best checkpoint restores without its (removed) replay; asking for one is refused clearly
        assert store.restore(make_state(0), step=3).step == 3
        with pytest.raises(ValueError, match=r"/3 holds no replay buffer \(steps with one: \[7\]\)"):
            store.restore(make_state(0), step=3, replay=small_buffer())
    # a run without evaluation metrics has no best checkpoint
    with CheckpointStore(tmp_path / "noeval", "new", save_replay=False) as store:
        store.save(1, state, {"a": 1})
        assert store.best_step() is None and store.steps_with_replay() == []


def test_missing_or_occupied_directories_are_refused_without_writing(tmp_path):
    missing = tmp_path / "runs" / "nope"
    for mode in ("resume", "read"):
        with pytest.raises(FileNotFoundError, match=f"checkpoint directory {missing} does not exist"):
            CheckpointStore(missing, mode)
    assert not (tmp_path / "runs").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "3.orbax-checkpoint-tmp").mkdir()  # only an uncommitted save
    with pytest.raises(FileNotFoundError, match=rf"no committed checkpoint in {empty}"):
        CheckpointStore(empty, "resume")
    assert (empty / "3.orbax-checkpoint-tmp").is_dir()

    run = tmp_path / "run"
    with CheckpointStore(run, "new", save_replay=False) as store:
        store.save(10, make_state(0), {"a": 1})
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    with pytest.raises(FileExistsError, match=rf"{run} already holds checkpoints \(steps \[10\]\)"):
        CheckpointStore(run, "new")
    with CheckpointStore(run, "resume", save_replay=False) as store:
        with pytest.raises(FileNotFoundError, match=rf"no committed checkpoint at {run}/11 \(committed steps: \[10\]\)"):
            store.restore(make_state(0), step=11)
        with pytest.raises(ValueError, match="must be greater than the latest checkpoint step 10"):
            store.save(10, make_state(0), {"a": 1})
    with CheckpointStore(run, "read") as store:
        with pytest.raises(PermissionError, match="read-only"):
            store.save(11, make_state(0), {"a": 1})
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_bad_inputs_are_named(tmp_path):
    state = make_state(0)
    with CheckpointStore(tmp_path, "new") as store:
        with pytest.raises(TypeError, match=r"loop_state\[.episodes.\] = np.int64\(3\) is a int64"):
            store.save(1, state, {"episodes": np.int64(3)}, replay=small_buffer())
        with pytest.raises(TypeError, match=r"loop_state\['shape'\] = \(1, 2\) is a tuple.*use a list"):
            store.save(1, state, {"shape": (1, 2)}, replay=small_buffer())
        with pytest.raises(ValueError, match="no replay buffer was passed"):
            store.save(1, state, {})
        with pytest.raises(ValueError, match="metrics lack route_completion"):
            store.save(1, state, {}, replay=small_buffer(), metrics={"success_rate": 1.0})
        with pytest.raises(ValueError, match=r"metrics\['success_rate'\] = nan"):
            store.save(1, state, {}, replay=small_buffer(), metrics={"success_rate": float("nan"), "route_completion": 0.0})
        assert store.all_steps() == []
        store.save(1, state, {}, replay=small_buffer())
        # the template must match leaf by leaf (orbax alone would cast dtypes silently)
        wrong_dtype = state.replace(batch_stats={"mean": jnp.zeros(8, jnp.bfloat16), "var": jnp.ones(8)})
        with pytest.raises(ValueError, match=r"batch_stats\.mean: checkpoint float32\(8,\), template bfloat16\(8,\)"):
            store.restore(wrong_dtype)
        wrong_shape = state.replace(params={**state.params, "head": {"kernel": jnp.zeros((9, 2), jnp.bfloat16)}})
        with pytest.raises(ValueError, match=r"params\.head\.kernel: checkpoint bfloat16\(8, 2\), template bfloat16\(9, 2\)"):
            store.restore(wrong_shape)
        extra = state.replace(batch_stats={**state.batch_stats, "count": jnp.zeros(())})
        with pytest.raises(ValueError, match=r"batch_stats\.count: in the template, not in the checkpoint"):
            store.restore(extra)
        with pytest.raises(ValueError, match=r"checkpoint\.replay_keep_last' = 8: must be between 1 and keep_last \(3\)"):
            CheckpointStore(tmp_path, "resume", replay_keep_last=8)
        with pytest.raises(ValueError, match=r"mode = 'write': must be one of 'new', 'resume', 'read'"):
            CheckpointStore(tmp_path, "write")
    with pytest.raises(ConfigError, match="checkpoint.keep_last"):
        CheckpointConfig(keep_last=0)
    check_json_state({"a": [1, 2.5, None, True, {"b": "c"}]})


def test_leftovers_of_a_killed_save_are_ignored_and_cleaned(tmp_path):
    with CheckpointStore(tmp_path, "new", keep_last=3, save_replay=False) as store:
        for step in (1, 2, 3):
            store.save(step, make_state(step), {"step": step})
    # what a SIGKILL leaves: an uncommitted step, a half-deleted old step, a half-pruned replay
    junk = tmp_path / "4.orbax-checkpoint-tmp"
    (junk / "train_state").mkdir(parents=True)
    (junk / "train_state" / "garbage").write_bytes(b"\0" * 10)
    for p in sorted((tmp_path / "1").rglob("*"), reverse=True)[::2]:
        if p.is_file():
            p.unlink()
    (tmp_path / ".replay-trash-2-1-1").mkdir()
    with CheckpointStore(tmp_path, "read") as reader:  # readers never delete
        assert reader.latest_step() == 3
        assert_trees_identical(reader.restore(make_state(0)).train_state, make_state(3))
    assert junk.is_dir()
    with CheckpointStore(tmp_path, "resume", keep_last=3, save_replay=False) as store:
        assert not (tmp_path / ".replay-trash-2-1-1").exists()
        r = store.restore(make_state(0))
        assert r.step == 3 and r.loop_state == {"step": 3}
        store.save(5, make_state(5), {"step": 5})
        assert store.all_steps() == [2, 3, 5]
    assert not junk.exists()


def _read_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise AssertionError(f"worker exited with {proc.returncode} before printing; see its stderr file")
    return line.strip()


def test_sigkill_at_random_moments_never_leaves_a_broken_latest_checkpoint(tmp_path):
    """A real process saves checkpoints (train state, loop state, a 20k-slot replay of 84x84 frames,
    141 MB) back to back and is SIGKILLed at random points inside a save, five times; after every kill
    the latest checkpoint restores and is consistent, and the next process resumes from it."""
    from ckpt_kill_worker import consistency_errors, make_buffer, train_state  # tests/ is on sys.path (conftest.py)

    directory, capacity = tmp_path / "run", 20_000
    chooser = random.Random(1234)
    fractions = [0.1, 0.3, 0.5, 0.7, 0.9]
    chooser.shuffle(fractions)
    mid_save_kills = 0
    buffer = make_buffer(capacity)
    for i, fraction in enumerate(fractions):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent.parent), os.environ.get("PYTHONPATH", "")])}
        with open(tmp_path / f"worker{i}.err", "w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(directory), str(capacity)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
            try:
                last_saved, duration = None, None
                # let two saves commit in this process, then kill during the third, `fraction` into it
                while True:
                    line = _read_line(proc)
                    assert not line.startswith("inconsistent"), line
                    if line.startswith("saved"):
                        _, step, seconds = line.split()
                        last_saved, duration = int(step), float(seconds)
                    elif line.startswith("saving") and duration is not None and last_saved >= 2:
                        break
                time.sleep(fraction * duration + chooser.uniform(0, 0.002))
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                # the pipe may lag behind the worker: its last word is in what is left unread
                for line in proc.stdout.read().splitlines():
                    if line.startswith("saved"):
                        last_saved = int(line.split()[1])
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert proc.returncode == -signal.SIGKILL
        if any(TMP_MARK in p.name for p in directory.iterdir()):
            mid_save_kills += 1
        with CheckpointStore(directory, "read") as reader:
            restored = reader.restore(train_state(0), replay=buffer)
        assert restored.step in (last_saved, last_saved + 1), (restored.step, last_saved)
        assert consistency_errors(restored, buffer) == []
    assert mid_save_kills >= 1  # at least one kill interrupted a save in flight


@pytest.mark.parametrize(
    "item, file",
    [("train_state", None), ("loop_state", "loop_state/metadata"), ("meta", "meta/metadata"),
     ("replay", "replay/frames.npy")],
)
def test_a_damaged_item_is_one_line_naming_the_file(tmp_path, item, file):
    from jtd3.checkpoint import CheckpointDamagedError

    buf = small_buffer()
    fill_buffer(buf, 20, seed=0)
    with CheckpointStore(tmp_path, "new") as store:
        store.save(1, make_state(1), {"step": 1}, replay=buf, config={"train": {"seed": 0}})
        assert store.read_meta(1)["config"] == {"train": {"seed": 0}}
    target = tmp_path / "1" / file if file else max(
        (p for p in (tmp_path / "1" / "train_state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(target, "r+b") as fh:
        fh.truncate(target.stat().st_size // 2)
    with CheckpointStore(tmp_path, "read") as store, pytest.raises(CheckpointDamagedError) as e:
        store.restore(make_state(0), replay=small_buffer())
    message = str(e.value)
    assert "\n" not in message and e.value.step == 1 and e.value.item == item, message
    assert message.startswith(f"checkpoint {tmp_path / '1'} is damaged: ") and str(tmp_path / "1" / (file or item)) in message
