"""Replay buffer benchmark: memory per transition, sampling time vs one learning update, checkpoint I/O.

Prints one JSON line per measurement. Run on a quiet machine (the project's machines are shared: wrap it
in ``flock /tmp/jtd3_heavy.lock``):

    python benchmarks/bench_replay.py                 # defaults below
    python benchmarks/bench_replay.py --fill 20000 --repeats 5   # quick

Measurements
- ``memory``: bytes per slot of a real 1M-slot buffer, from its arrays' ``nbytes`` (NumPy maps the pages
  lazily, so nothing is touched). One slot holds one transition; each episode also spends one slot on its
  final observation, so the bytes per *stored transition* are ``bytes_per_slot * (L + 1) / L`` for
  episodes of L steps (reported for a few L; that part is arithmetic, not a measurement).
- ``sample``: ``sample(B)`` and ``sample_many(K, B)`` on a buffer filled through ``add`` with
  ``--fill`` transitions (84x84 frames), with and without moving the batch to the JAX device, next to a
  per-sample Python loop gather (the naive implementation) for the ratio.
- ``update_reference``: the agent (``jtd3.agent``) did not exist when this was written, so the reference is
  one NatureCNN forward + backward pass in plain JAX (B=256, VALID padding 84->20->9->7, dense 512),
  jitted. A TD3 update does at least this much (critic encoder forward+backward, target encoder forward,
  actor pass), so the ratio sample/update is an upper bound of the sampling share.
- ``checkpoint``: ``CheckpointStore.save``/``restore`` of the filled buffer plus a small train state.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import numpy as np

# Issue 4's default kinematic vector: speed, distance and angle to the next waypoint (3), the next 25
# route waypoints (x, y) in the vehicle frame (50), lateral offset and heading error (2).
DEFAULT_K = 3 + 2 * 25 + 2


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def timeit(fn, repeats: int) -> dict:
    fn()  # warm-up (JIT, page faults of first-touch outputs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def fill(buf, n: int, seed: int) -> None:
    """Add n steps of 200-step episodes (the last one truncated) with random frames."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (64, *buf.frame_shape), dtype=np.uint8)  # reused pool: cheap to make
    k = buf.kinematics_dim
    first = frames[0]
    obs = {"camera": np.repeat(first[None], buf.stack, 0), "kinematics": np.zeros(k, np.float32)}
    for t in range(n):
        frame = frames[t % 64][None]
        nxt = {"camera": np.concatenate([obs["camera"][1:], frame]), "kinematics": np.full(k, t % 7, np.float32)}
        truncated = t % 200 == 199
        buf.add(obs, rng.uniform(-1, 1, 2), 0.5, nxt, False, truncated)
        obs = {"camera": np.repeat(frame, buf.stack, 0), "kinematics": nxt["kinematics"]} if truncated else nxt


def naive_gather(buf, idx: np.ndarray) -> dict:
    """Per-sample Python loop: the implementation the vectorised gather replaces."""
    out_obs, out_next = [], []
    for i in idx:
        pos = int(buf.ep_pos[i])
        out_obs.append(np.stack([buf.frames[(i - min(j, pos)) % buf.capacity] for j in range(buf.stack - 1, -1, -1)]))
        npos = min(pos + 1, buf.stack - 1)
        out_next.append(np.stack([buf.frames[(i + 1 - min(j, npos)) % buf.capacity] for j in range(buf.stack - 1, -1, -1)]))
    return {"obs": np.stack(out_obs), "next": np.stack(out_next)}


def nature_cnn_reference(batch_size: int):
    """Jitted forward+backward of one NatureCNN (+ a linear head) on a (B, 4, 84, 84) uint8 batch."""
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    ks = jax.random.split(key, 5)

    def he(k, shape, fan_in):
        return jax.random.normal(k, shape) * jnp.sqrt(2.0 / fan_in)

    params = {
        "c1": (he(ks[0], (8, 8, 4, 32), 8 * 8 * 4), jnp.zeros(32)),
        "c2": (he(ks[1], (4, 4, 32, 64), 4 * 4 * 32), jnp.zeros(64)),
        "c3": (he(ks[2], (3, 3, 64, 64), 3 * 3 * 64), jnp.zeros(64)),
        "fc": (he(ks[3], (3136, 512), 3136), jnp.zeros(512)),
        "out": (he(ks[4], (512, 1), 512), jnp.zeros(1)),
    }

    def forward(p, cam):
        x = cam.astype(jnp.float32) / 127.5 - 1.0
        x = jnp.transpose(x, (0, 2, 3, 1))
        for name, stride in (("c1", 4), ("c2", 2), ("c3", 1)):
            w, b = p[name]
            x = jax.lax.conv_general_dilated(x, w, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + b)
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(x @ p["fc"][0] + p["fc"][1])
        return (x @ p["out"][0] + p["out"][1])[:, 0]

    @jax.jit
    def step(p, cam, target):
        loss, grads = jax.value_and_grad(lambda q: jnp.mean((forward(q, cam) - target) ** 2))(p)
        return loss, grads

    cam = jnp.zeros((batch_size, 4, 84, 84), jnp.uint8)
    target = jnp.zeros((batch_size,), jnp.float32)

    def run():
        jax.block_until_ready(step(params, cam, target))

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinematics-dim", type=int, default=DEFAULT_K)
    ap.add_argument("--fill", type=int, default=100_000, help="transitions added before timing sampling")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--k", type=int, default=4, help="batches per sample_many call")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--skip-checkpoint", action="store_true")
    args = ap.parse_args()

    import jax

    from jtd3.replay import ReplayBuffer

    emit(
        bench="env",
        python=platform.python_version(),
        numpy=np.__version__,
        jax=jax.__version__,
        device=str(jax.devices()[0]),
        cpus=__import__("os").cpu_count(),
    )

    # Memory: a real 1M-slot buffer (pages are mapped lazily, so this does not touch 7 GB).
    big = ReplayBuffer(1_000_000, kinematics_dim=args.kinematics_dim, action_dim=2)
    per_slot = big.nbytes / big.capacity
    emit(
        bench="memory",
        capacity=big.capacity,
        kinematics_dim=args.kinematics_dim,
        nbytes=big.nbytes,
        total_gb=big.nbytes / 1e9,
        bytes_per_slot=per_slot,
        per_array_bytes={name: getattr(big, name).nbytes // big.capacity for name in ("frames", "kinematics", "action", "reward", "terminated", "truncated", "valid", "ep_pos")},
        bytes_per_transition_by_episode_length={str(L): per_slot * (L + 1) / L for L in (50, 200, 1000)},
        budget_bytes_per_transition=7300,
    )
    del big

    buf = ReplayBuffer(args.fill + args.fill // 100 + 16, kinematics_dim=args.kinematics_dim, action_dim=2, seed=0)
    t0 = time.perf_counter()
    fill(buf, args.fill, seed=0)
    add_s = (time.perf_counter() - t0) / args.fill
    emit(bench="add", transitions=args.fill, per_add_us=add_s * 1e6, len=len(buf))

    B, K = args.batch_size, args.k
    sample_1 = timeit(lambda: buf.sample(B), args.repeats)
    sample_k = timeit(lambda: buf.sample_many(K, B), args.repeats)
    sample_1_dev = timeit(lambda: jax.block_until_ready(jax.device_put(buf.sample(B))), args.repeats)
    sample_k_dev = timeit(lambda: jax.block_until_ready(jax.device_put(buf.sample_many(K, B))), args.repeats)
    idx = buf.sample_indices(B)
    vec = timeit(lambda: buf.gather(idx), args.repeats)
    naive = timeit(lambda: naive_gather(buf, idx), max(3, args.repeats // 4))
    check = naive_gather(buf, idx)
    got = buf.gather(idx)
    assert np.array_equal(check["obs"], got["obs"]["camera"]) and np.array_equal(check["next"], got["next_obs"]["camera"])
    emit(
        bench="sample",
        batch_size=B,
        k=K,
        sample_s=sample_1["median_s"],
        sample_many_s=sample_k["median_s"],
        sample_plus_device_put_s=sample_1_dev["median_s"],
        sample_many_plus_device_put_s=sample_k_dev["median_s"],
        gather_vectorised_s=vec["median_s"],
        gather_python_loop_s=naive["median_s"],
        python_loop_over_vectorised=naive["median_s"] / vec["median_s"],
    )

    ref = timeit(nature_cnn_reference(B), max(5, args.repeats // 2))
    emit(
        bench="update_reference",
        what="one NatureCNN forward+backward, plain JAX, jitted (jtd3.agent did not exist)",
        batch_size=B,
        median_s=ref["median_s"],
        sample_over_update=sample_1_dev["median_s"] / ref["median_s"],
        sample_many_over_k_updates=sample_k_dev["median_s"] / (K * ref["median_s"]),
    )

    if not args.skip_checkpoint:
        import jax.numpy as jnp

        from jtd3.checkpoint import CheckpointStore

        state = {"w": jnp.ones((3136, 512)), "key": jax.random.key(0), "step": jnp.asarray(1, jnp.int32)}
        replay_mb = sum(getattr(buf, n)[: buf._filled].nbytes for n in ("frames", "kinematics", "action", "reward", "terminated", "truncated", "valid", "ep_pos")) / 1e6
        with tempfile.TemporaryDirectory(dir=".") as d:
            store = CheckpointStore(d + "/ckpt", "new", keep_last=2)
            saves = []
            for step in (1, 2, 3):
                t0 = time.perf_counter()
                store.save(step, state, {"step": step}, replay=buf, metrics={"success_rate": 0.0, "route_completion": 0.0})
                saves.append(time.perf_counter() - t0)
            target = ReplayBuffer(buf.capacity, kinematics_dim=args.kinematics_dim, action_dim=2)
            t0 = time.perf_counter()
            store.restore(state, replay=target)
            restore_s = time.perf_counter() - t0
            store.close()
        emit(
            bench="checkpoint",
            replay_mb=replay_mb,
            save_s=statistics.median(saves),
            save_mb_per_s=replay_mb / statistics.median(saves),
            restore_s=restore_s,
            restore_mb_per_s=replay_mb / restore_s,
            note="page-cache speeds: the OS had not necessarily flushed the files to disk",
        )


if __name__ == "__main__":
    main()
