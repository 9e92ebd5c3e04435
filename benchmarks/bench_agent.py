"""Gradient steps per second of the jtd3 TD3 update, side by side with Stable-Baselines3 TD3.

Prints one JSON line per measurement (not a test). Run it alone on the machine:

    flock /tmp/jtd3_heavy.lock python benchmarks/bench_agent.py

jtd3 rows: ``update_many`` with K gradient steps per call on pre-built device batches (replay sampling is
not included), every norm x encoder topology, B = 64 and 256, plus the jit compile time of ``update_many``
(first call). ``--conv-impls im2col,xla`` adds rows with XLA's own convolution; ``--single`` also times K
plain ``update`` calls per window (``update_steps_per_s``, no ``lax.scan``). ``--cnn`` times one NatureCNN
forward and forward+backward instead (im2col vs XLA convolutions, and PyTorch in the worker when installed),
each with its GFLOP/s and its efficiency against the encoder's GEMM bound: the time its own matmul shapes take
as single float32 products on this machine (a ``gemm-bound`` row lists them).

SB3 rows: ``TD3("MultiInputPolicy")`` with the same shapes (4x84x84 uint8 camera + K kinematics, NatureCNN
with 512 features, SB3's default separate actor/critic encoders, [256, 256] heads), timed through
``model.train(gradient_steps=K, batch_size=B)`` on a filled replay buffer, so SB3's own replay sampling is
part of its step (timed alone as ``sample_ms``). SB3 runs in a separate worker process (torch and XLA thread
pools do not share a process) and **its timing windows alternate with jtd3's**: each jtd3 row carries the
SB3 rate measured in the windows interleaved with it and the median of the per-pair ratios, which is robust
to the load changes of a shared machine. Every window also records the CPU cores other processes used
meanwhile (``other_cpu_cores_windows``, from /proc/stat); ``ratio_vs_sb3_clean`` is the median ratio over the
pairs where both windows were clean (< 0.15 cores of other load); pairs are measured until ``--repeats`` of
them were clean (at most 3x as many), and the targets are judged on clean pairs only: under load SB3's
OpenMP threads collapse (measured 0.6 steps/s instead of 18 with one core busy) while XLA slows ~2x, so
contended pairs say nothing about the implementations. Without SB3/torch installed, a ``{"impl": "sb3", "skipped": ...}``
line says so and no ratios are printed. Targets from the issue (ratio jtd3/SB3): B=64 separate >= 1.3,
shared >= 2.5; B=256 separate >= 1.1.

Work and rate: each batch size starts with a ``gemm-bound`` row (the encoder's products as single float32
matmuls, see :func:`gemm_bound`); every jtd3 and SB3 row carries its matmul FLOPs per gradient step
(``gflop_per_step``: jtd3's counted on the update's jaxpr by ``benchmarks/matmul_flops.py``, averaged over a
policy period; SB3's by PyTorch's ``FlopCounterMode`` over one policy period of ``model.train``), the rate it
achieved (``gflop_s``) and that rate over the products' own rate (``efficiency_vs_gemm``). The ratio lines
split the speed ratio into ``work_ratio`` (SB3's FLOPs per step over jtd3's) times ``rate_ratio`` (jtd3's
GFLOP/s over SB3's), and give the ``rate_ratio_needed`` for the target.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

import numpy as np

from machine_info import cpu_info  # benchmarks/, the script's directory
from matmul_flops import matmul_flops

from jtd3.machine import reexec_with_huge_pages

TARGETS = {(64, "separate"): 1.3, (64, "shared"): 2.5, (256, "separate"): 1.1}
CLEAN_CORES = 0.15
"""A window is clean when other processes used less than this many CPU cores during it."""


def _rounded(values: list[float | None]) -> list[float | None]:
    return [None if v is None else round(v, 2) for v in values]


def _clean_median(rates: list[float], others: list[float | None]) -> float | None:
    clean = [r for r, o in zip(rates, others) if o is not None and o < CLEAN_CORES]
    return round(statistics.median(clean), 2) if clean else None


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


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes on the machine have been busy (Linux /proc/stat), else None."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def median_call_ms(fn, calls: int, attempts: int = 3) -> tuple[float, float | None]:
    """Median wall time of ``calls`` blocking calls of ``fn`` in ms, and the other processes' CPU cores
    meanwhile; repeated up to ``attempts`` times until clean (the cleanest attempt is returned)."""
    best = None
    for _ in range(attempts):
        busy0, own0, start = _busy_cpu_seconds(), sum(os.times()[:2]), time.perf_counter()
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        busy1, own1 = _busy_cpu_seconds(), sum(os.times()[:2])
        other = None if busy0 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / elapsed
        result = (1e3 * statistics.median(times), other)
        if best is None or (other is not None and (best[1] is None or other < best[1])):
            best = result
        if other is None or other < CLEAN_CORES:
            break
    return best


def timed_window(fn, steps_per_call: int, seconds: float) -> tuple[float, float | None]:
    """Call ``fn`` (blocking) until ``seconds`` have passed.

    Returns (gradient steps per second, CPU cores used by *other* processes meanwhile). The second number
    tells a clean window (~0) from one where something else competed for the 2 cores.
    """
    busy0, own0 = _busy_cpu_seconds(), sum(os.times()[:2])
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    busy1, own1 = _busy_cpu_seconds(), sum(os.times()[:2])
    other = None if busy0 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / elapsed
    return calls * steps_per_call / elapsed, other


# ----------------------------------------------------------------------------------------------------------
# SB3 in a worker process


def _sb3_worker(conn, kin_dim: int, buffer_size: int, k: int, device: str = "cpu") -> None:
    """Serve ("setup", B) / ("window", seconds) / ("flops",) / ("cnn", B, calls) / ("gemm", shapes, calls) /
    ("sample",) / ("exit",) requests over ``conn``; SB3 and the torch timings run on ``device``."""
    try:
        import gymnasium as gym
        import torch
        from stable_baselines3 import TD3
        from stable_baselines3.common.logger import configure
    except ImportError as e:  # torch / SB3 are optional (the `bench` extra)
        conn.send({"skipped": f"stable-baselines3/torch not installed ({e})"})
        return
    if device == "cuda" and not torch.cuda.is_available():
        conn.send({"skipped": "--sb3-device cuda: torch sees no CUDA device"})
        return
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # timings must wait for the GPU
    conn.send(
        {
            "torch_threads": torch.get_num_threads(),
            "sb3_device": device,
            "versions": {"torch": torch.__version__, "stable_baselines3": __import__("stable_baselines3").__version__},
        }
    )
    obs_space, act_space = spaces_for(kin_dim)

    class _Env(gym.Env):
        observation_space = obs_space
        action_space = act_space

        def reset(self, *, seed=None, options=None):
            return obs_space.sample(), {}

        def step(self, action):
            return obs_space.sample(), 0.0, False, False, {}

    model, batch = None, 0
    while True:
        cmd = conn.recv()
        if cmd[0] == "exit":
            return
        if cmd[0] == "setup":
            batch = cmd[1]
            torch.manual_seed(0)
            model = TD3(
                "MultiInputPolicy",
                _Env(),
                buffer_size=buffer_size,
                batch_size=batch,
                learning_starts=0,
                policy_kwargs={"net_arch": [256, 256], "features_extractor_kwargs": {"cnn_output_dim": 512}},
                device=device,
                seed=0,
                verbose=0,
            )
            model.set_logger(configure(None, []))  # train() records to a logger; keep it silent
            rng = np.random.default_rng(0)
            for _ in range(buffer_size):
                b = random_batch(rng, (1,), kin_dim)
                model.replay_buffer.add(
                    b["obs"], b["next_obs"], b["action"], b["reward"], b["terminated"].astype(bool), [{}]
                )
            model.train(gradient_steps=2, batch_size=batch)  # warm-up
            conn.send("ready")
        elif cmd[0] == "window":
            conn.send(timed_window(lambda: (model.train(gradient_steps=k, batch_size=batch), sync()), k, cmd[1]))
        elif cmd[0] == "cnn":  # one NatureCNN (no norm) fwd+bwd w.r.t. its weights, median ms over cmd[2] calls
            cnn_batch, calls = cmd[1], cmd[2]
            nn = torch.nn
            net = nn.Sequential(
                nn.Conv2d(4, 32, 8, 4), nn.LeakyReLU(), nn.Conv2d(32, 64, 4, 2), nn.LeakyReLU(),
                nn.Conv2d(64, 64, 3, 1), nn.LeakyReLU(), nn.Flatten(), nn.Linear(3136, 512), nn.LeakyReLU(),
            )  # fmt: skip
            net = net.to(device)
            cam = torch.as_tensor(np.random.default_rng(0).integers(0, 256, (cnn_batch, 4, 84, 84), dtype=np.uint8))
            cam = cam.to(device)

            def fwd_bwd():
                net.zero_grad()
                (net(cam.float() / 127.5 - 1.0) ** 2).mean().backward()
                sync()

            def fwd():
                with torch.no_grad():
                    net(cam.float() / 127.5 - 1.0)
                sync()

            out = {}
            for name, fn in (("fwd_bwd_ms", fwd_bwd), ("fwd_ms", fwd)):
                fn()
                out[name], out[name.replace("_ms", "_other_cpu_cores")] = median_call_ms(fn, calls)
            conn.send(out)
        elif cmd[0] == "gemm":  # median ms of torch.mm on contiguous float32 operands, per (shape_a, shape_b)
            rng, out = np.random.default_rng(0), []
            for sa, sb in cmd[1]:
                a = torch.as_tensor(rng.standard_normal(sa, dtype=np.float32)).to(device)
                b = torch.as_tensor(rng.standard_normal(sb, dtype=np.float32)).to(device)
                torch.mm(a, b)
                sync()
                out.append(median_call_ms(lambda a=a, b=b: (torch.mm(a, b), sync()), cmd[2])[0])
            conn.send(out)
        elif cmd[0] == "flops":  # matmul/conv FLOPs per gradient step, counted by torch over one policy period
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter:
                model.train(gradient_steps=model.policy_delay, batch_size=batch)
            conn.send(counter.get_total_flops() / model.policy_delay)
        elif cmd[0] == "sample":
            times = []
            for _ in range(20):
                t = time.perf_counter()
                model.replay_buffer.sample(batch, env=None)
                times.append(time.perf_counter() - t)
            conn.send(statistics.median(times))


class SB3:
    """Handle on the SB3 worker process (``info["skipped"]`` set when SB3 is unavailable)."""

    def __init__(self, args):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_sb3_worker, args=(child, args.kin_dim, args.sb3_buffer, args.k, args.sb3_device), daemon=True
        )
        self.proc.start()
        self.info = self.conn.recv()

    @property
    def available(self) -> bool:
        return "skipped" not in self.info

    def ask(self, *cmd):
        self.conn.send(cmd)
        return self.conn.recv()

    def close(self) -> None:
        if self.available:
            self.conn.send(("exit",))
        self.proc.join(timeout=30)


# ----------------------------------------------------------------------------------------------------------
# jtd3


def jtd3_flops_per_step(state, batch: dict) -> float:
    """Matmul FLOPs of one jtd3 gradient step, averaged over a policy period: the critic step every time, the
    actor step (the costlier branch of the update's ``lax.cond``) once per ``policy_delay`` steps."""
    from jtd3.agent import learn

    count = matmul_flops(learn.train_step, state, batch)
    branches = count["cond_branches"] or [0.0]
    delay = state.spec.config.policy_delay
    critic_step = count["flops"] - max(branches)
    return critic_step + (max(branches) + (delay - 1) * min(branches)) / delay


def bench_jtd3(args, batch: int, norm: str, encoder: str, conv_impl: str, dtype: str, sb3: SB3 | None,
               conv_chunk: int | None = None) -> dict:
    import jax

    from jtd3 import agent

    obs_space, act_space = spaces_for(args.kin_dim)
    chunk = {} if conv_chunk is None else {"conv_chunk": conv_chunk}
    cfg = agent.AgentConfig(norm=norm, encoder=encoder, conv_impl=conv_impl, compute_dtype=dtype, **chunk)
    state = agent.create(cfg, obs_space, act_space, seed=0)
    batches = jax.device_put(random_batch(np.random.default_rng(0), (args.k, batch), args.kin_dim))
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
    # Alternate SB3 / jtd3 windows until `repeats` pairs were clean on both sides (at most 3x as many pairs).
    rates, others, sb3_rates, sb3_others = [], [], [], []
    clean_pairs = 0
    while clean_pairs < args.repeats and len(rates) < 3 * args.repeats:
        if sb3 is not None:
            rate, other = sb3.ask("window", args.seconds)
            sb3_rates.append(rate)
            sb3_others.append(other)
        rate, other = timed_window(step, args.k, args.seconds)
        rates.append(rate)
        others.append(other)
        sides = [other] + ([sb3_others[-1]] if sb3 is not None else [])
        clean_pairs += all(o is not None and o < CLEAN_CORES for o in sides)
    row = {
        "impl": "jtd3",
        "batch": batch,
        "norm": norm,
        "encoder": encoder,
        "conv_impl": state.spec.conv_impl,
        "compute_dtype": dtype,
        "conv_chunk": cfg.conv_chunk,
        "k_per_call": args.k,
        "compile_s": round(compile_s, 2),
        "steps_per_s": round(statistics.median(rates), 2),
        "steps_per_s_clean": _clean_median(rates, others),
        "steps_per_s_windows": [round(r, 2) for r in rates],
        "other_cpu_cores_windows": _rounded(others),
        "backend": jax.default_backend(),
        "finite": bool(all(np.isfinite(float(v)) for v in metrics.values())),
        "loadavg_1m": round(os.getloadavg()[0], 2),  # > ~2.2 on 2 cores: something else was running
    }
    one_batch = jax.tree.map(lambda x: x[0], batches)
    row["gflop_per_step"] = jtd3_flops_per_step(holder[0], one_batch) / 1e9
    if sb3_rates:
        row["sb3_steps_per_s_interleaved"] = [round(r, 2) for r in sb3_rates]
        row["sb3_other_cpu_cores_windows"] = _rounded(sb3_others)
        pairs = list(zip(rates, sb3_rates, others, sb3_others))
        row["ratio_vs_sb3"] = round(statistics.median(r / s for r, s, _, _ in pairs), 2)
        clean = [r / s for r, s, o, so in pairs if o is not None and so is not None and max(o, so) < CLEAN_CORES]
        row["clean_pairs"] = len(clean)
        if clean:
            row["ratio_vs_sb3_clean"] = round(statistics.median(clean), 2)
    if args.single:  # K plain `update` calls per window (no lax.scan)
        one = jax.tree.map(lambda x: x[0], batches)
        t0 = time.perf_counter()
        jax.block_until_ready(agent.update(holder[0], one))
        row["update_compile_s"] = round(time.perf_counter() - t0, 2)

        def step_single():
            s = holder[0]
            for _ in range(args.k):
                s, m = agent.update(s, one)
            jax.block_until_ready(m)
            holder[0] = s

        single = [timed_window(step_single, args.k, args.seconds)[0] for _ in range(args.repeats)]
        row["update_steps_per_s"] = round(statistics.median(single), 2)
    return row


def encoder_products(batch: int) -> list[tuple[str, int, int, int]]:
    """The NatureCNN's forward products as matmuls ``(layer, M, K, N)`` (a convolution as im2col: M output
    positions, K = kernel taps x input channels, N output channels), for a 4x84x84 camera."""
    return [("conv1", batch * 20 * 20, 8 * 8 * 4, 32), ("conv2", batch * 9 * 9, 4 * 4 * 32, 64),
            ("conv3", batch * 7 * 7, 3 * 3 * 64, 64), ("dense", batch, 7 * 7 * 64, 512)]


def gemm_bound(batch: int, calls: int, sb3: SB3 | None = None) -> dict:
    """How fast the encoder could be if it were only its matmuls, each as fast as this machine multiplies
    matrices of that exact shape: float32, contiguous operands, median of ``calls`` products, by XLA (one jitted
    ``jnp.dot``) and, with the SB3 worker, by PyTorch (``torch.mm``, oneDNN); the faster of the two counts.

    Forward: each layer's ``(M, K) @ (K, N)``. Forward+backward w.r.t. the weights adds the weight gradients
    ``(K, M) @ (M, N)`` (every layer) and the input gradients ``(M, N) @ (N, K)`` (all but the first layer,
    whose input is the camera). The ``efficiency`` of a measured time T is ``bound / T``: the share of T that
    an implementation doing nothing but those products would still need; the rest is data movement (layouts,
    im2col, normalisation, activations). Above 1: faster than the products as plain GEMMs (a direct
    convolution kernel avoids their im2col operand).
    """
    import jax
    import jax.numpy as jnp

    products = []
    for layer, m, k, n in encoder_products(batch):
        products += [(layer, "fwd", m, k, n, (m, k), (k, n)), (layer, "wgrad", m, k, n, (k, m), (m, n))]
        if layer != "conv1":
            products.append((layer, "dgrad", m, k, n, (m, n), (n, k)))
    rng = np.random.default_rng(0)
    dot = jax.jit(jnp.dot)
    xla_ms = []
    for *_, sa, sb in products:
        a = jnp.asarray(rng.standard_normal(sa, dtype=np.float32))
        b = jnp.asarray(rng.standard_normal(sb, dtype=np.float32))
        jax.block_until_ready(dot(a, b))
        xla_ms.append(median_call_ms(lambda a=a, b=b: jax.block_until_ready(dot(a, b)), calls)[0])
    torch_ms = sb3.ask("gemm", [(sa, sb) for *_, sa, sb in products], calls) if sb3 is not None else [None] * len(products)
    out: dict = {"impl": "gemm-bound", "batch": batch, "dtype": "float32", "products": []}
    total = {"fwd": [0.0, 0.0], "bwd": [0.0, 0.0]}  # [ms, flop]
    for (layer, kind, m, k, n, sa, sb), x_ms, t_ms in zip(products, xla_ms, torch_ms):
        flop = 2.0 * m * k * n
        ms = min(x_ms, t_ms) if t_ms is not None else x_ms
        out["products"].append({"layer": layer, "kind": kind, "a": list(sa), "b": list(sb),
                                "xla_gflop_s": round(flop / x_ms / 1e6, 1),
                                "torch_gflop_s": None if t_ms is None else round(flop / t_ms / 1e6, 1)})
        part = total["fwd" if kind == "fwd" else "bwd"]
        part[0] += ms
        part[1] += flop
    (f_ms, f_flop), (b_ms, b_flop) = total["fwd"], total["bwd"]
    out.update(gflop_fwd=round(f_flop / 1e9, 3), gflop_fwd_bwd=round((f_flop + b_flop) / 1e9, 3),
               bound_fwd_ms=round(f_ms, 2), bound_fwd_bwd_ms=round(f_ms + b_ms, 2),
               gemm_gflop_s_fwd=round(f_flop / f_ms / 1e6, 1),
               gemm_gflop_s_fwd_bwd=round((f_flop + b_flop) / (f_ms + b_ms) / 1e6, 1))
    return out


def with_efficiency(row: dict, bound: dict) -> dict:
    """``row`` (a --cnn timing) plus its GFLOP/s and its efficiency against :func:`gemm_bound`'s times."""
    for name in ("fwd", "fwd_bwd"):
        ms = row.get(f"{name}_ms")
        if ms:
            row[f"{name}_gflop_s"] = round(bound[f"gflop_{name}"] / ms * 1e3, 1)
            row[f"{name}_efficiency"] = round(bound[f"bound_{name}_ms"] / ms, 2)
    return row


def with_rate(row: dict, gflop_per_step: float, bound: dict) -> dict:
    """``row`` (a jtd3 or SB3 update timing) plus its matmul FLOPs per gradient step, the GFLOP/s it reached
    (at its clean median rate where it has one) and that rate over :func:`gemm_bound`'s forward+backward rate."""
    gflop_s = gflop_per_step * (row["steps_per_s_clean"] or row["steps_per_s"])
    row.update(gflop_per_step=round(gflop_per_step, 3), gflop_s=round(gflop_s, 1),
               efficiency_vs_gemm=round(gflop_s / bound["gemm_gflop_s_fwd_bwd"], 2))
    return row


def bench_cnn(args, batch: int, sb3: SB3 | None) -> list[dict]:
    """One NatureCNN (norm none and layernorm) fwd and fwd+bwd (grads w.r.t. its params), per implementation and
    dtype, and LayerNorm's share of the fwd+bwd: the two norms are timed in alternation, ``repeats`` rounds of
    ``calls`` calls each, so that the VM's drift between them does not land in the share."""
    import jax
    import jax.numpy as jnp

    from jtd3.agent.conv import DEFAULT_CHUNK
    from jtd3.agent.networks import NatureCNN

    cam = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, 4, 84, 84), dtype=np.uint8))
    calls = max(5, args.repeats * 3)
    bound = gemm_bound(batch, calls, sb3)
    rows = [bound]
    impls = ("im2col", "xla") if args.conv_impls == "auto" else args.conv_impls.split(",")
    for impl, dtype in itertools.product(impls, args.compute_dtypes.split(",")):
        fns = {}
        for norm in ("none", "layernorm"):
            net = NatureCNN(norm=norm, conv_impl=impl, conv_chunk=_chunks(args)[0] or DEFAULT_CHUNK,
                            compute_dtype=dtype)
            params = net.init(jax.random.key(0), cam[:1], train=False)["params"]
            fwd = jax.jit(lambda p, net=net: net.apply({"params": p}, cam, train=False))
            fwd_bwd = jax.jit(jax.grad(lambda p, net=net: jnp.mean(net.apply({"params": p}, cam, train=True) ** 2)))
            for name, fn in (("fwd_bwd_ms", fwd_bwd), ("fwd_ms", fwd)):
                jax.block_until_ready(fn(params))
                fns[norm, name] = lambda fn=fn, params=params: jax.block_until_ready(fn(params))
        times = {key: [] for key in fns}
        for _ in range(max(1, args.repeats)):
            for key, fn in fns.items():
                times[key].append(median_call_ms(fn, calls))
        for norm in ("none", "layernorm"):
            row = {"impl": "jtd3-cnn", "batch": batch, "norm": norm, "conv_impl": impl, "compute_dtype": dtype}
            for name in ("fwd_bwd_ms", "fwd_ms"):
                ms = [t for t, _ in times[norm, name]]
                others = [o for _, o in times[norm, name] if o is not None]
                row[name] = round(statistics.median(ms), 2)
                row[name.replace("_ms", "_other_cpu_cores")] = round(max(others), 2) if others else None
            rows.append(with_efficiency(row, bound))
        # (with - without) / with, per round (adjacent windows), then the median over rounds.
        pairs = zip(times["layernorm", "fwd_bwd_ms"], times["none", "fwd_bwd_ms"])
        shares = [(ln - no) / ln for (ln, _), (no, _) in pairs]
        rows.append({"layernorm_share": "fwd_bwd", "batch": batch, "conv_impl": impl, "compute_dtype": dtype,
                     "value": round(statistics.median(shares), 3), "rounds": [round(v, 3) for v in shares]})
    if sb3 is not None:
        torch_row = sb3.ask("cnn", batch, calls)
        rows.append(with_efficiency(
            {"impl": "torch-cnn", "batch": batch, "norm": "none", **{k: _rounded([v])[0] for k, v in torch_row.items()}},
            bound))
    return rows


def _chunks(args) -> list[int | None]:
    """``--conv-chunks`` as a list; ``[None]`` (the agent's default) when empty."""
    return [int(c) for c in args.conv_chunks.split(",")] if args.conv_chunks else [None]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="64,256")
    p.add_argument("--norms", default="none,layernorm,batchnorm,hybrid")
    p.add_argument("--encoders", default="separate,shared")
    p.add_argument("--conv-impls", default="auto", help="comma list of auto|im2col|xla|onednn (auto: im2col on CPU; with --cnn: im2col,xla)")
    p.add_argument("--compute-dtypes", default="float32", help="comma list of float32|bfloat16 (agent.compute_dtype)")
    p.add_argument("--k", type=int, default=8, help="gradient steps per update_many call / SB3 train call")
    p.add_argument("--seconds", type=float, default=2.0, help="length of one timing window")
    p.add_argument("--repeats", type=int, default=5, help="timing windows per row (median reported)")
    p.add_argument("--kin-dim", type=int, default=9)
    p.add_argument("--sb3-buffer", type=int, default=1000)
    p.add_argument("--no-sb3", action="store_true")
    p.add_argument("--sb3-device", choices=("cpu", "cuda"), default="cpu", help="where SB3 (torch) runs")
    p.add_argument("--single", action="store_true", help="also time plain `update` calls (one step per call)")
    p.add_argument("--cnn", action="store_true", help="time one NatureCNN (im2col vs xla vs torch) instead")
    p.add_argument("--conv-chunks", default="", help="comma list of agent.conv_chunk values (im2col batch "
                   "chunk; default: the agent's default; --cnn uses the first)")
    args = p.parse_args(argv)

    emit(
        {
            "meta": "bench_agent",
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            **cpu_info(),
            "python": sys.version.split()[0],
            "argv": sys.argv[1:] if argv is None else argv,
        }
    )
    sb3 = None if args.no_sb3 else SB3(args)
    if sb3 is not None and not sb3.available:
        emit({"impl": "sb3", **sb3.info})
        sb3.close()
        sb3 = None
    try:
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            if args.cnn:
                for row in bench_cnn(args, batch, sb3):
                    emit(row)
                continue
            bound = gemm_bound(batch, max(5, args.repeats * 3), sb3)
            emit(bound)
            sb3_gflop = None
            if sb3 is not None:
                sb3.ask("setup", batch)
                alone = [sb3.ask("window", args.seconds) for _ in range(args.repeats)]
                sb3_gflop = sb3.ask("flops") / 1e9
                emit(with_rate(
                    {
                        "impl": "sb3",
                        "batch": batch,
                        "encoder": "separate",
                        "steps_per_s": round(statistics.median(r for r, _ in alone), 2),
                        "steps_per_s_clean": _clean_median([r for r, _ in alone], [o for _, o in alone]),
                        "steps_per_s_windows": [round(r, 2) for r, _ in alone],
                        "other_cpu_cores_windows": _rounded([o for _, o in alone]),
                        "sample_ms": round(1e3 * sb3.ask("sample"), 2),
                        **sb3.info,
                    },
                    sb3_gflop, bound))
            for encoder in args.encoders.split(","):
                for norm in args.norms.split(","):
                    for conv_impl, dtype, chunk in itertools.product(
                        args.conv_impls.split(","), args.compute_dtypes.split(","), _chunks(args)
                    ):
                        row = bench_jtd3(args, batch, norm, encoder, conv_impl, dtype, sb3, chunk)
                        with_rate(row, row["gflop_per_step"], bound)
                        emit(row)
                        if "ratio_vs_sb3" in row:
                            target = TARGETS.get((batch, encoder))
                            emit(
                                {
                                    "ratio": "jtd3/sb3",
                                    "batch": batch,
                                    "norm": norm,
                                    "encoder": encoder,
                                    "conv_impl": row["conv_impl"],
                                    "conv_chunk": row["conv_chunk"],
                                    "compute_dtype": dtype,
                                    "value_clean_windows": row.get("ratio_vs_sb3_clean"),
                                    "clean_pairs": row["clean_pairs"],
                                    "value_all_windows": row["ratio_vs_sb3"],
                                    # ratio = work_ratio x rate_ratio: SB3's matmul FLOPs per step over jtd3's,
                                    # times jtd3's achieved GFLOP/s over SB3's
                                    "work_ratio": round(sb3_gflop / row["gflop_per_step"], 3),
                                    "rate_ratio": round((row.get("ratio_vs_sb3_clean") or row["ratio_vs_sb3"])
                                                        * row["gflop_per_step"] / sb3_gflop, 2),
                                    "target": target,
                                    "rate_ratio_needed": None if target is None
                                    else round(target * row["gflop_per_step"] / sb3_gflop, 2),
                                    # judged on clean windows only (SB3's OpenMP collapses under other load)
                                    "met": None
                                    if target is None or "ratio_vs_sb3_clean" not in row
                                    else bool(row["ratio_vs_sb3_clean"] >= target),
                                }
                            )
    finally:
        if sb3 is not None:
            sb3.close()
    return 0


if __name__ == "__main__":
    reexec_with_huge_pages()  # as training runs (jtd3.machine); the SB3 worker inherits the environment
    raise SystemExit(main())
