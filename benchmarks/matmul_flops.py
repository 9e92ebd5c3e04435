"""Matmul FLOPs of a JAX function, counted on its jaxpr the way PyTorch's ``FlopCounterMode`` counts a step.

``matmul_flops(fn, *args)`` traces ``fn`` and sums ``2 * M * N * K`` over every ``dot_general`` (and the
equivalent over every ``conv_general_dilated`` and every oneDNN convolution and matmul of ``jtd3.agent.onednn``)
that contributes to an output: equations whose results are
never used are skipped (XLA removes them too, e.g. the input gradient of a network's first layer, which the
custom VJP of ``jtd3.agent.conv`` computes and autodiff then drops). Calls (``pjit``, ``custom_vjp_call``,
...) are followed with the liveness of their outputs; a ``scan`` body counts ``length`` times, a ``while``
body once (its trip count is not static; :func:`matmul_flops` reports such bodies in ``"while_bodies"``),
and a ``cond`` counts per branch: the result maps each branch index to its FLOPs (``"cond_branches"``) when
there is one top-level ``cond``, so a caller can weigh them (a TD3 update's critic-only and policy steps).

Elementwise work, reductions and layouts are not counted: this is the work a GEMM library would do, the
numerator of an efficiency against a measured GEMM rate (``benchmarks/bench_agent.py``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.extend import core as jcore

__all__ = ["matmul_flops"]


def _eqn_flops(eqn: Any) -> int:
    name = eqn.primitive.name
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        k = math.prod(lhs.shape[i] for i in lhs_contract)
        return 2 * math.prod(eqn.outvars[0].aval.shape) * k
    if name == "conv_general_dilated":
        lhs, rhs, out = eqn.invars[0].aval, eqn.invars[1].aval, eqn.outvars[0].aval
        out_spec, in_spec = eqn.params["dimension_numbers"].rhs_spec[:2]
        taps = math.prod(rhs.shape) // rhs.shape[out_spec] // rhs.shape[in_spec]
        # Two upper bounds on the multiply-adds: every output element times its window (counts the zeros of
        # padding and of an input dilation), every input element times the window positions it meets (counts
        # taps that fall outside a VALID output). The first is exact for a forward convolution, the second
        # for a transposed one (the input gradient of a strided or a VALID convolution).
        per_output = math.prod(out.shape) * taps * rhs.shape[in_spec]
        per_input = math.prod(lhs.shape) * taps * rhs.shape[out_spec]
        return 2 * min(per_output, per_input)
    if name == "ffi_call" and str(eqn.params.get("target_name", "")).startswith("jtd3_onednn_conv_"):
        # jtd3.agent.onednn: forward, input and weight gradient of one convolution all cost
        # 2 * (output elements) * kh * kw * C; the output side (B, Ho, Wo, O) is the forward's result or the
        # cotangent (its first operand, or the second for the weight gradient).
        target = eqn.params["target_name"]
        if target.endswith("_fwd"):
            out, kernel = eqn.outvars[0].aval, eqn.invars[1].aval
        elif target.endswith("_bwd_data"):
            out, kernel = eqn.invars[0].aval, eqn.invars[1].aval
        else:
            out, kernel = eqn.invars[1].aval, eqn.outvars[0].aval
        return 2 * math.prod(out.shape) * math.prod(kernel.shape[:3])
    if name == "ffi_call" and eqn.params.get("target_name") == "jtd3_onednn_matmul":
        # op(a) (M, K) @ op(b) (K, N) -> (M, N), transposed or not: K^2 = |a| * |b| / |out|.
        a, b, out = eqn.invars[0].aval, eqn.invars[1].aval, eqn.outvars[0].aval
        k = math.isqrt(math.prod(a.shape) * math.prod(b.shape) // math.prod(out.shape))
        return 2 * math.prod(out.shape) * k
    return 0


def _sub_jaxprs(eqn: Any) -> list[tuple[str, Any]]:
    out = []
    for key, value in eqn.params.items():
        items = value if isinstance(value, (tuple, list)) else [value]
        for item in items:
            if isinstance(item, jcore.ClosedJaxpr):
                out.append((key, item.jaxpr))
            elif isinstance(item, jcore.Jaxpr):
                out.append((key, item))
    return out


def _count(jaxpr: Any, live_out: list[bool], acc: dict) -> list[bool]:
    """Add the live matmul FLOPs of ``jaxpr`` to ``acc["flops"]``; return which invars are live."""
    live = {v for v, keep in zip(jaxpr.outvars, live_out) if keep and isinstance(v, jcore.Var)}
    for eqn in reversed(jaxpr.eqns):
        outs = [v in live for v in eqn.outvars]
        if not any(outs) and not eqn.effects:
            continue
        acc["flops"] += acc["mult"] * _eqn_flops(eqn)
        subs = _sub_jaxprs(eqn)
        name = eqn.primitive.name
        if name == "cond":
            branches = []
            for _, sub in subs:
                part = {"flops": 0, "mult": acc["mult"], "while_bodies": 0, "branches": []}
                _count(sub, [True] * len(sub.outvars), part)
                branches.append(part["flops"] + sum(max(b) for b in part["branches"]))
                acc["while_bodies"] += part["while_bodies"]
            acc["branches"].append(branches)
        elif name in ("scan", "while"):
            mult = eqn.params["length"] if name == "scan" else 1
            for key, sub in subs:
                if name == "while" and key != "body_jaxpr":
                    continue
                acc["while_bodies"] += name == "while"
                saved = acc["mult"]
                acc["mult"] = saved * mult
                _count(sub, [True] * len(sub.outvars), acc)
                acc["mult"] = saved
        elif len(subs) == 1 and len(subs[0][1].outvars) == len(eqn.outvars):
            # a call: its outputs are the equation's, so liveness maps through
            live_in = _count(subs[0][1], outs, acc)
            offset = len(eqn.invars) - len(live_in)
            for v, keep in zip(eqn.invars[offset:], live_in):
                if keep and isinstance(v, jcore.Var):
                    live.add(v)
            continue
        else:
            for _, sub in subs:
                _count(sub, [True] * len(sub.outvars), acc)
        live.update(v for v in eqn.invars if isinstance(v, jcore.Var))
    return [v in live for v in jaxpr.invars]


def matmul_flops(fn, *args, **kwargs) -> dict:
    """``{"flops": total, "cond_branches": [...] | None, "while_bodies": n}`` for ``fn(*args, **kwargs)``.

    ``flops`` counts each ``cond`` at its costliest branch; ``cond_branches`` lists every branch's own
    FLOPs (the rest of the function excluded) when the function has exactly one ``cond``.
    """
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    acc = {"flops": 0, "mult": 1, "while_bodies": 0, "branches": []}
    _count(closed.jaxpr, [True] * len(closed.jaxpr.outvars), acc)
    for branches in acc["branches"]:
        acc["flops"] += max(branches)
    return {
        "flops": acc["flops"],
        "cond_branches": acc["branches"][0] if len(acc["branches"]) == 1 else None,
        "while_bodies": acc["while_bodies"],
    }
