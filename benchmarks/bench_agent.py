"""Gradient steps per second of the jtd3 TD3 update, side by side with Stable-Baselines3 TD3.

Prints one JSON line per measurement (not a test). Run it alone on the machine:

    flock /tmp/jtd3_heavy.lock python benchmarks/bench_agent.py

jtd3 rows: ``update_many`` with K gradient steps per call on pre-built device batches (replay sampling is
not included), every norm x encoder topology, B = 64 and 256, plus the jit compile time of ``update_many``
(first call). ``--conv-impls im2col,xla`` adds rows with XLA's own convolution for comparison.
SB3 rows: ``TD3("MultiInputPolicy")`` with the same shapes (4x84x84 uint8 camera + K kinematics, NatureCNN
with 512 features, separate actor/critic encoders as SB3's default, [256, 256] heads), timed through
``model.train(gradient_steps, batch_size)`` on a filled replay buffer; SB3's own replay sampling is part of
its step and is also timed alone (``sample_ms``). When SB3/torch are not installed an ``{"impl": "sb3",
"skipped": ...}`` line says so and the ratios are omitted. Ratio lines compare each jtd3 row with SB3 at the
same batch size against the issue's targets (B=64: separate >= 1.3x, shared >= 2.5x; B=256: separate >= 1.0x).

Timings are medians over ``--repeats`` windows of ``--seconds`` each; the machine is shared, so compare rows
from the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

TARGETS = {(64, "separate"): 1.3, (64, "shared"): 2.5, (256, "separate"): 1.0}


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def spaces_for(kin_dim: int):
    from gymnasium import spaces

    obs = spaces.Dict(
        {
            "camera": spaces.Box(0, 255, (4, 84, 84), np.uint8),
            "kinematics": spaces.Box(-np.inf, np.inf, (kin_dim,), np.float32),
        }
    )
    return obs, spaces.Box(-1.0, 1.0, (2,), np.float32)


def random_batch(rng: np.random.Generator, lead: tuple[int, ...], kin_dim: int) -> dict:
    def obs():
        return {
            "camera": rng.integers(0, 256, (*lead, 4, 84, 84), dtype=np.uint8),
            "kinematics": rng.standard_normal((*lead, kin_dim)).astype(np.float32),
        }

    return {
        "obs": obs(),
        "action": rng.uniform(-1, 1, (*lead, 2)).astype(np.float32),
        "reward": rng.standard_normal(lead).astype(np.float32),
        "next_obs": obs(),
        "terminated": (rng.random(lead) < 0.05).astype(np.float32),
    }


def timed_windows(fn, steps_per_call: int, seconds: float, repeats: int) -> list[float]:
    """Run ``fn`` (blocking) repeatedly; return gradient steps/s of ``repeats`` windows of ~``seconds``."""
    rates = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        rates.append(calls * steps_per_call / elapsed)
    return rates


def bench_jtd3(args, batch: int, norm: str, encoder: str, conv_impl: str) -> dict:
    import jax

    from jtd3 import agent

    obs_space, act_space = spaces_for(args.kin_dim)
    cfg = agent.AgentConfig(norm=norm, encoder=encoder, conv_impl=conv_impl)
    state = agent.create(cfg, obs_space, act_space, seed=0)
    rng = np.random.default_rng(0)
    batches = jax.device_put(random_batch(rng, (args.k, batch), args.kin_dim))
    t0 = time.perf_counter()
    state, metrics = agent.update_many(state, batches)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    holder = [state]

    def step():
        s, m = agent.update_many(holder[0], batches)
        jax.block_until_ready(m)
        holder[0] = s

    step()  # one more warm call
    rates = timed_windows(step, args.k, args.seconds, args.repeats)
    return {
        "impl": "jtd3",
        "batch": batch,
        "norm": norm,
        "encoder": encoder,
        "conv_impl": state.spec.conv_impl,
        "k_per_call": args.k,
        "compile_s": round(compile_s, 2),
        "steps_per_s": round(statistics.median(rates), 2),
        "steps_per_s_windows": [round(r, 2) for r in rates],
        "backend": jax.default_backend(),
        "finite": bool(all(np.isfinite(float(v)) for v in metrics.values())),
    }


def bench_sb3(args, batch: int) -> dict:
    try:
        import gymnasium as gym
        import torch
        from stable_baselines3 import TD3
        from stable_baselines3.common.logger import configure
    except ImportError as e:  # torch / SB3 are optional (the `bench` extra)
        return {"impl": "sb3", "batch": batch, "skipped": f"stable-baselines3/torch not installed ({e})"}

    obs_space, act_space = spaces_for(args.kin_dim)

    class _Env(gym.Env):
        observation_space = obs_space
        action_space = act_space

        def reset(self, *, seed=None, options=None):
            return obs_space.sample(), {}

        def step(self, action):
            return obs_space.sample(), 0.0, False, False, {}

    torch.manual_seed(0)
    model = TD3(
        "MultiInputPolicy",
        _Env(),
        buffer_size=args.sb3_buffer,
        batch_size=batch,
        learning_starts=0,
        policy_kwargs={"net_arch": [256, 256], "features_extractor_kwargs": {"cnn_output_dim": 512}},
        device="cpu",
        seed=0,
        verbose=0,
    )
    model.set_logger(configure(None, []))  # train() records to a logger; keep it silent
    rng = np.random.default_rng(0)
    buf = model.replay_buffer
    for _ in range(args.sb3_buffer):
        b = random_batch(rng, (1,), args.kin_dim)
        buf.add(b["obs"], b["next_obs"], b["action"], b["reward"], b["terminated"].astype(bool), [{}])
    model.train(gradient_steps=2, batch_size=batch)  # warm-up
    rates = timed_windows(lambda: model.train(gradient_steps=args.k, batch_size=batch), args.k, args.seconds, args.repeats)
    sample = []
    for _ in range(20):
        t = time.perf_counter()
        buf.sample(batch, env=None)
        sample.append(time.perf_counter() - t)
    return {
        "impl": "sb3",
        "batch": batch,
        "encoder": "separate",
        "steps_per_s": round(statistics.median(rates), 2),
        "steps_per_s_windows": [round(r, 2) for r in rates],
        "sample_ms": round(1e3 * statistics.median(sample), 2),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "stable_baselines3": __import__("stable_baselines3").__version__},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="64,256")
    p.add_argument("--norms", default="none,layernorm,batchnorm,hybrid")
    p.add_argument("--encoders", default="separate,shared")
    p.add_argument("--conv-impls", default="auto", help="comma list of auto|im2col|xla (auto: im2col on CPU)")
    p.add_argument("--k", type=int, default=8, help="gradient steps per update_many call / SB3 train call")
    p.add_argument("--seconds", type=float, default=3.0, help="length of one timing window")
    p.add_argument("--repeats", type=int, default=3, help="timing windows per row (median reported)")
    p.add_argument("--kin-dim", type=int, default=9)
    p.add_argument("--sb3-buffer", type=int, default=1000)
    p.add_argument("--no-sb3", action="store_true")
    args = p.parse_args(argv)

    emit(
        {
            "meta": "bench_agent",
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": sys.version.split()[0],
            "argv": sys.argv[1:] if argv is None else argv,
        }
    )
    sb3: dict[int, dict] = {}
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        if not args.no_sb3:
            sb3[batch] = bench_sb3(args, batch)
            emit(sb3[batch])
        for encoder in args.encoders.split(","):
            for norm in args.norms.split(","):
                for conv_impl in args.conv_impls.split(","):
                    row = bench_jtd3(args, batch, norm, encoder, conv_impl)
                    emit(row)
                    base = sb3.get(batch)
                    if base and "steps_per_s" in base:
                        ratio = row["steps_per_s"] / base["steps_per_s"]
                        target = TARGETS.get((batch, encoder))
                        emit(
                            {
                                "ratio": "jtd3/sb3",
                                "batch": batch,
                                "norm": norm,
                                "encoder": encoder,
                                "conv_impl": row["conv_impl"],
                                "value": round(ratio, 2),
                                "target": target,
                                "met": None if target is None else bool(ratio >= target),
                            }
                        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
