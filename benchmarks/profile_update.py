"""Where the time of one TD3 update goes: a JAX profiler trace of ``update_many``, summed per XLA op.

    flock /tmp/jtd3_heavy.lock python benchmarks/profile_update.py --batch 64 --encoder separate --norm layernorm

Prints JSON lines: a ``meta`` line, one ``update`` line (gradient steps/s outside the trace), one ``category``
line per kind of op (the op name without its ``.N`` suffix: ``ynn_fusion`` = products run by YNNPACK,
``copy_bitcast_fusion`` = layout copies, ``concatenate_bitcast_fusion`` = im2col stacks, ``multiply_add_fusion``
and the like = normalisation and activation arithmetic), one ``stage`` line per stage of the update (the named
scopes of ``jtd3.agent.learn.train_step``, read from each op's metadata in the compiled HLO: ``td_target``,
``critic_grad``, ``critic_adam``, ``actor_grad``, ``actor_adam``, ``target_update``; ``other`` = metrics and the
loop) and ``--top`` ``op`` lines with each op's output shape and stage from the compiled HLO. Times are per
gradient step and summed over the ops' own intervals: XLA runs independent ops on both cores at once, so the
sum exceeds the wall time (``leaf_ms_per_step`` vs ``wall_ms_per_step``). Control-flow ops (``while``,
``cond``) and the executor's own events are left out: their time is the time of the ops inside them.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import numpy as np

from bench_agent import random_batch, spaces_for  # benchmarks/, the script's directory
from machine_info import cpu_info

from jtd3.machine import reexec_with_huge_pages

STAGES = ("td_target", "critic_grad", "critic_adam", "actor_grad", "actor_adam", "target_update")
"""The named scopes of ``jtd3.agent.learn.train_step``, in the order they run."""

_NOT_LEAF = ("ThunkExecutor", "$", "while", "cond", "call", "PjitFunction", "ParseArguments", "AllocateOutputBuffers", "end: ")


def op_times(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
    """Total microseconds and call counts per event name in the trace written under ``trace_dir``."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise SystemExit(f"profile_update: the profiler wrote no trace under {trace_dir}")
    with gzip.open(files[0]) as fh:
        events = json.load(fh)["traceEvents"]
    us, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            us[e["name"]] += e["dur"]
            calls[e["name"]] += 1
    return us, calls


def stage_of(op_name: str | None) -> str:
    """The :data:`STAGES` scope an op's ``op_name`` metadata (its JAX name stack) lies in; ops outside them:
    ``skipped_policy_step`` (the ``lax.cond`` branch of a step without an actor update), ``other``."""
    for stage in STAGES:
        if op_name and f"/{stage}/" in f"/{op_name}/":
            return stage
    if op_name and "/branch_0_fun/" in op_name:
        return "skipped_policy_step"
    return "other"


def op_meta(hlo: str, name: str) -> tuple[str | None, str | None]:
    """``(output shape, op_name metadata)`` of the instruction ``name`` in the compiled HLO text."""
    m = re.search(rf"^\s*%?{re.escape(name)} = (\S+) .*$", hlo, re.M)
    if not m:
        return None, None
    op_name = re.search(r'op_name="([^"]*)"', m.group(0))
    return m.group(1), op_name.group(1) if op_name else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--encoder", default="separate")
    p.add_argument("--norm", default="layernorm")
    p.add_argument("--compute-dtype", default="float32")
    p.add_argument("--conv-impl", default="auto", help="agent.conv_impl (auto|im2col|xla|onednn)")
    p.add_argument("--k", type=int, default=4, help="gradient steps per update_many call")
    p.add_argument("--calls", type=int, default=3, help="update_many calls inside the trace")
    p.add_argument("--top", type=int, default=15, help="how many single ops to list")
    args = p.parse_args(argv)

    import jax

    from jtd3 import agent

    print(json.dumps({"meta": "profile_update", **cpu_info(), "argv": sys.argv[1:] if argv is None else argv,
                      "backend": jax.default_backend()}), flush=True)
    obs_space, act_space = spaces_for(9)
    cfg = agent.AgentConfig(norm=args.norm, encoder=args.encoder, compute_dtype=args.compute_dtype,
                            conv_impl=args.conv_impl)
    state = agent.create(cfg, obs_space, act_space, seed=0)
    batches = jax.device_put(random_batch(np.random.default_rng(0), (args.k, args.batch), 9))
    # compiled once, ahead of time: the same executable is timed, traced and its HLO read for the op shapes
    update_many = agent.update_many.lower(state, batches).compile()
    for _ in range(3):  # warm up
        state, metrics = update_many(state, batches)
        jax.block_until_ready(metrics)
    walls = []
    for _ in range(5):
        t = time.perf_counter()
        state, metrics = update_many(state, batches)
        jax.block_until_ready(metrics)
        walls.append(time.perf_counter() - t)
    wall_ms = 1e3 * float(np.median(walls)) / args.k
    print(json.dumps({"update": "update_many", "batch": args.batch, "encoder": args.encoder, "norm": args.norm,
                      "conv_impl": state.spec.conv_impl, "steps_per_s": round(1e3 / wall_ms, 2)}), flush=True)

    with tempfile.TemporaryDirectory(prefix="jtd3-profile-") as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(args.calls):
            state, metrics = update_many(state, batches)
            jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        us, calls = op_times(trace_dir)
    steps = args.calls * args.k
    # XLA's ops; the runtime's own events have spaces or "::" in their names
    leaf = {n: t for n, t in us.items() if not n.startswith(_NOT_LEAF) and " " not in n and "::" not in n}
    total = sum(leaf.values())
    by_kind: collections.Counter = collections.Counter()
    for name, t in leaf.items():
        by_kind[re.sub(r"\.\d+$", "", name)] += t
    print(json.dumps({"summary": "ops", "leaf_ms_per_step": round(total / 1e3 / steps, 2),
                      "wall_ms_per_step": round(wall_ms, 2)}), flush=True)
    rest = 0.0
    for kind, t in by_kind.most_common():
        if t < 0.002 * total:  # the long tail of tiny fusions: one line
            rest += t
            continue
        print(json.dumps({"category": kind, "ms_per_step": round(t / 1e3 / steps, 2), "share": round(t / total, 3)}))
    print(json.dumps({"category": "(others under 0.2 % each)", "ms_per_step": round(rest / 1e3 / steps, 2),
                      "share": round(rest / total, 3)}))
    hlo = update_many.as_text()
    meta = {name: op_meta(hlo, name) for name in leaf}
    by_stage: collections.Counter = collections.Counter()
    for name, t in leaf.items():
        by_stage[stage_of(meta[name][1])] += t
    for stage, t in by_stage.most_common():
        print(json.dumps({"stage": stage, "ms_per_step": round(t / 1e3 / steps, 2), "share": round(t / total, 3)}))
    for name, t in sorted(leaf.items(), key=lambda kv: -kv[1])[: args.top]:
        print(json.dumps({"op": name, "ms_per_step": round(t / 1e3 / steps, 2), "share": round(t / total, 3),
                          "calls_per_step": round(calls[name] / steps, 2), "output": meta[name][0],
                          "stage": stage_of(meta[name][1])}))
    return 0


if __name__ == "__main__":
    reexec_with_huge_pages()  # as training runs (jtd3.machine)
    sys.exit(main())
