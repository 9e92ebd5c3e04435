"""What the benchmarks record about the machine they ran on (their meta lines)."""

from __future__ import annotations

import platform

from jtd3.machine import cpu_flags, cpu_model, malloc_huge_pages, onednn_version

__all__ = ["cpu_info"]

_SIMD = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The instruction-set flags that matter for the benchmarks' products."""


def cpu_info() -> dict[str, str | bool]:
    """Model name and the SIMD flags that matter here (:data:`_SIMD`), from /proc/cpuinfo (Linux), and whether
    malloc asks for huge pages (``malloc_huge_pages``; see :func:`jtd3.machine.reexec_with_huge_pages`), and the
    installed oneDNN's version (``onednn``, None without one; ``agent.conv_impl: onednn``)."""
    have = cpu_flags()
    return {"cpu": cpu_model() or platform.processor(), "cpu_flags": " ".join(f for f in _SIMD if f in have),
            "malloc_huge_pages": malloc_huge_pages(), "onednn": onednn_version()}
