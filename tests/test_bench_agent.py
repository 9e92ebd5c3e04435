"""The agent benchmark's efficiency arithmetic (benchmarks/bench_agent.py): the encoder's products as matmuls
must be the NatureCNN's own, or every reported efficiency is off."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_agent import encoder_products, with_efficiency, with_rate  # noqa: E402
from matmul_flops import matmul_flops  # noqa: E402

from jtd3.agent.networks import NatureCNN  # noqa: E402


def test_encoder_products_count_the_flops_xla_counts_for_the_nature_cnn():
    batch = 3
    net = NatureCNN(norm="none", conv_impl="xla")
    cam = jnp.zeros((batch, 4, 84, 84), jnp.uint8)
    params = net.init(jax.random.key(0), cam, train=False)
    compiled = jax.jit(lambda p: net.apply(p, cam, train=False)).lower(params).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    products = 2.0 * sum(m * k * n for _, m, k, n in encoder_products(batch))
    # XLA also counts the elementwise work (scaling, biases, activations): a few percent on top of the products
    assert products <= cost["flops"] <= 1.05 * products, (cost["flops"], products)
    assert [p[0] for p in encoder_products(batch)] == ["conv1", "conv2", "conv3", "dense"]


def test_efficiency_is_the_gemm_bound_over_the_measured_time():
    bound = {"gflop_fwd": 1.0, "gflop_fwd_bwd": 3.0, "bound_fwd_ms": 5.0, "bound_fwd_bwd_ms": 20.0}
    row = with_efficiency({"fwd_ms": 10.0, "fwd_bwd_ms": 40.0}, bound)
    assert row["fwd_gflop_s"] == pytest.approx(100.0) and row["fwd_efficiency"] == pytest.approx(0.5)
    assert row["fwd_bwd_gflop_s"] == pytest.approx(75.0) and row["fwd_bwd_efficiency"] == pytest.approx(0.5)
    assert "fwd_efficiency" not in with_efficiency({"fwd_ms": None}, bound)


def test_rate_is_the_flops_per_step_at_the_clean_rate_when_there_is_one():
    bound = {"gemm_gflop_s_fwd_bwd": 100.0}
    row = with_rate({"steps_per_s": 9.0, "steps_per_s_clean": 8.0}, 7.5, bound)
    assert (row["gflop_per_step"], row["gflop_s"], row["efficiency_vs_gemm"]) == (7.5, 60.0, 0.6)
    assert with_rate({"steps_per_s": 9.0, "steps_per_s_clean": None}, 7.5, bound)["gflop_s"] == 67.5


def test_profile_update_sums_the_traced_ops_per_step():
    import json
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "benchmarks/profile_update.py", "--batch", "4", "--k", "2", "--calls", "1",
                          "--top", "3", "--encoder", "shared", "--norm", "none"],
                         cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    meta, update, summary = rows[:3]
    assert meta["meta"] == "profile_update" and "cpu" in meta
    assert update["batch"] == 4 and update["steps_per_s"] > 0
    assert summary["leaf_ms_per_step"] > 0 and summary["wall_ms_per_step"] > 0
    categories = [r for r in rows if "category" in r]
    ops = [r for r in rows if "op" in r]
    assert categories and sum(r["share"] for r in categories) == pytest.approx(1.0, abs=0.01)
    assert not any(r["category"].startswith(("while", "cond", "ThunkExecutor")) or "::" in r["category"] for r in categories)
    assert len(ops) == 3 and all(r["ms_per_step"] > 0 for r in ops)
    assert any(r["output"] for r in ops), ops  # the op names are found in the compiled HLO
    # Per stage: the named scopes of train_step are found in the ops' metadata (a renamed scope would leave
    # them all in "other")
    stages = {r["stage"]: r["share"] for r in rows if "stage" in r and "op" not in r}
    assert sum(stages.values()) == pytest.approx(1.0, abs=0.01)
    assert {"td_target", "critic_grad", "critic_adam", "actor_grad"} <= set(stages), stages
    # most of the time is inside the named scopes (a share, not a ranking of two stages: under load the
    # loop's own ops can take a quarter of a tiny B = 4 trace)
    assert stages.get("other", 0.0) < 0.5, stages
    assert all(r["stage"] in stages for r in ops)


def test_stage_of_reads_the_named_scope_from_an_ops_name_stack():
    from profile_update import stage_of

    critic_conv1 = "jit(update_many)/while/body/closed_call/critic_grad/jvp(NatureCNN)/conv1/dot_general"
    assert stage_of(critic_conv1) == "critic_grad"
    assert stage_of("jit(update_many)/while/body/closed_call/cond/branch_1_fun/actor_adam/add") == "actor_adam"
    # a scope name inside another word is not that scope
    assert stage_of("jit(update_many)/while/body/my_td_target_thing/add") == "other"
    assert stage_of("jit(update_many)/while/body/closed_call/cond/branch_0_fun/copy") == "skipped_policy_step"
    assert stage_of(None) == "other"


def _onednn_available() -> bool:
    from jtd3.agent.onednn import unavailable_reason

    reason = unavailable_reason()
    assert reason is None or not os.environ.get("CI"), reason  # the README's test command installs oneDNN
    return reason is None


def test_matmul_flops_counts_the_nature_cnns_products_forward_and_backward():
    """The same FLOPs as the encoder's products as matmuls (what PyTorch's FlopCounterMode counts for the same
    network): forward; forward + backward w.r.t. the weights = weight gradients of every layer and input
    gradients of all but the first (XLA's convolutions transpose into dilated and padded convolutions whose
    zeros must not count)."""
    batch = 2
    cam = jnp.zeros((batch, 4, 84, 84), jnp.uint8)
    fwd = 2 * sum(m * k * n for _, m, k, n in encoder_products(batch))
    bwd = sum(2 * m * k * n * (1 if layer == "conv1" else 2) for layer, m, k, n in encoder_products(batch))
    counts = {}
    for impl in ("xla", "im2col", "onednn"):
        if impl == "onednn" and not _onednn_available():
            continue
        net = NatureCNN(norm="layernorm", conv_impl=impl)
        params = net.init(jax.random.key(0), cam, train=False)["params"]
        f = matmul_flops(lambda p, net=net: net.apply({"params": p}, cam, train=False), params)
        g = matmul_flops(jax.grad(lambda p, net=net: jnp.sum(net.apply({"params": p}, cam, train=True))), params)
        counts[impl] = (f["flops"], g["flops"])
    assert counts["xla"] == (fwd, fwd + bwd)
    assert counts.get("onednn", (fwd, fwd + bwd)) == (fwd, fwd + bwd)  # one FFI call per convolution pass
    # im2col's first layer multiplies on the output side: 21x21 instead of 20x20 positions (its forward and
    # weight gradient); its input gradient, computed by the custom VJP and dropped by autodiff, is not counted
    extra = 2 * 2 * batch * (21 * 21 - 20 * 20) * 256 * 32
    assert counts["im2col"] == (fwd + extra // 2, fwd + bwd + extra)


def test_matmul_flops_skips_dead_products_and_weighs_loops_and_branches():
    a, b = jnp.ones((4, 5)), jnp.ones((5, 6))

    def fn(a, b, flag):
        unused = a @ a.T  # noqa: F841 (dead: must not count)
        loop = jax.lax.scan(lambda c, _: (c @ jnp.ones((6, 6)), None), a @ b, None, length=3)[0]
        return jax.lax.cond(flag, lambda x: x @ jnp.ones((6, 2)), lambda x: x[:, :2], loop)

    count = matmul_flops(fn, a, b, True)
    first, per_iter, branch = 2 * 4 * 5 * 6, 2 * 4 * 6 * 6, 2 * 4 * 6 * 2
    assert count["flops"] == first + 3 * per_iter + branch
    assert count["cond_branches"] == [0, branch]
    assert count["while_bodies"] == 0
