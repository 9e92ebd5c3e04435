"""Helper process for tests/test_checkpoint.py: saves checkpoints in a loop until it is killed.

usage: python tests/ckpt_kill_worker.py DIRECTORY CAPACITY

Resumes from the latest checkpoint in DIRECTORY when there is one (checking it is consistent, exit code 3
if not), otherwise starts a run and fills a replay buffer of CAPACITY slots. Then, forever: add 50
transitions, print ``saving <step>``, save, print ``saved <step> <seconds>``. Every value in a checkpoint
is derived from its step, so a reader can tell a torn checkpoint from a good one (see ``expected``).
"""

from __future__ import annotations

import sys
import time

import numpy as np

FRAME = (84, 84)
KIN = 8
ADDS_PER_SAVE = 50


def train_state(step: int):
    import jax
    import jax.numpy as jnp

    return {
        "params": {"w": jnp.full((256, 256), step, jnp.float32), "b": jnp.full((256,), -step, jnp.bfloat16)},
        "key": jax.random.fold_in(jax.random.key(0), step),
        "step": jnp.asarray(step, jnp.int32),
    }


def consistency_errors(restored, buffer) -> list[str]:
    """Problems in a restored checkpoint (empty when step, train state, loop state and replay agree)."""
    import jax

    step = restored.step
    want = train_state(step)
    errors = []
    ts = restored.train_state
    if not (np.asarray(ts["params"]["w"]) == step).all() or int(ts["step"]) != step:
        errors.append("train_state params/step differ from the step")
    if not np.array_equal(jax.random.key_data(ts["key"]), jax.random.key_data(want["key"])):
        errors.append("train_state key differs")
    loop = restored.loop_state
    if loop.get("step") != step:
        errors.append(f"loop_state step {loop.get('step')} != {step}")
    if buffer is not None and restored.replay_restored:
        if buffer.steps_added != loop.get("replay_steps_added"):
            errors.append(f"replay steps_added {buffer.steps_added} != loop_state {loop.get('replay_steps_added')}")
        if int(buffer.frames[buffer._head, 0, 0]) != step % 256:
            errors.append("replay newest frame does not belong to this step")
    return errors


def make_buffer(capacity: int):
    from jtd3.replay import ReplayBuffer

    return ReplayBuffer(capacity, frame_shape=FRAME, stack=4, kinematics_dim=KIN, action_dim=2, seed=0)


def open_store(directory: str, mode: str):
    from jtd3.checkpoint import CheckpointStore

    return CheckpointStore(directory, mode, keep_last=2, keep_best=1, replay_keep_last=1)


def main() -> int:
    directory, capacity = sys.argv[1], int(sys.argv[2])
    from jtd3.checkpoint import CheckpointStore  # noqa: F401  (import cost before the first print)

    buffer = make_buffer(capacity)
    try:
        store = open_store(directory, "resume")
    except FileNotFoundError:
        store = None
    if store is not None:
        restored = store.restore(train_state(0), replay=buffer)
        errors = consistency_errors(restored, buffer)
        if errors:
            print("inconsistent:", "; ".join(errors), flush=True)
            return 3
        step = restored.step
        rng = np.random.default_rng()
        rng.bit_generator.state = restored.loop_state["rng"]
    else:
        store = open_store(directory, "new")
        step = 0
        rng = np.random.default_rng(0)
    frame = np.zeros((4, *FRAME), np.uint8)
    obs = {"camera": frame, "kinematics": np.zeros(KIN, np.float32)}
    buffer.start_new_episode()
    while True:
        step += 1
        for i in range(ADDS_PER_SAVE if buffer.steps_added else capacity):
            nxt = {
                "camera": np.concatenate([obs["camera"][1:], np.full((1, *FRAME), step % 256, np.uint8)]),
                "kinematics": np.full(KIN, i, np.float32),
            }
            buffer.add(obs, rng.uniform(-1, 1, 2), 0.0, nxt, False, False)
            obs = nxt
        metrics = {"success_rate": float(rng.random()), "route_completion": float(rng.random())}
        loop_state = {"step": step, "replay_steps_added": buffer.steps_added, "rng": rng.bit_generator.state}
        print(f"saving {step}", flush=True)
        t0 = time.perf_counter()
        store.save(step, train_state(step), loop_state, replay=buffer, metrics=metrics)
        print(f"saved {step} {time.perf_counter() - t0:.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
