"""What the benchmarks record about the machine they ran on (their meta lines)."""

from __future__ import annotations

import platform

__all__ = ["cpu_info"]


def cpu_info() -> dict[str, str]:
    """Model name and the SIMD flags that matter here, from /proc/cpuinfo (Linux)."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have)
                    break
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cpu_flags": flags}
