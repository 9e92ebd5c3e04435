"""The machine this process runs on: the CPU from /proc/cpuinfo (Linux; empty answers elsewhere), which run
reports and benchmark meta lines record and which keeps compiled programs of different CPUs apart, and the
memory an accelerator reports in use."""

from __future__ import annotations

import functools
import hashlib
import platform

__all__ = ["cpu_flags", "cpu_kind", "cpu_model", "device_memory_mb"]


@functools.lru_cache(maxsize=1)
def _first_cpu() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor's block ends at the first blank line
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name, "" when /proc/cpuinfo does not say (callers pick their own fallback)."""
    return _first_cpu().get("model name", "")


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags (``avx512f``, ``amx_bf16``, ...); empty when /proc/cpuinfo does not say."""
    return frozenset(_first_cpu().get("flags", "").split())


def cpu_kind() -> str:
    """A short, stable name for the CPU model and its flags, e.g. ``x86_64-9b9f349f0b0a``: XLA compiles for the
    CPU it runs on, so machines that share a directory keep their compiled programs apart by it."""
    ident = f"{cpu_model()}\n{' '.join(sorted(cpu_flags()))}"
    if not ident.strip():
        ident = f"{platform.machine()} {platform.processor()}"
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def device_memory_mb() -> dict[str, float]:
    """``{"in_use": MiB, "peak": MiB}`` of the first JAX device's allocator (GPUs), ``{}`` where the backend
    reports none (XLA:CPU). With JAX's preallocation the pool is ``XLA_PYTHON_CLIENT_MEM_FRACTION`` of the card
    (``train.jax_memory_fraction``); these are the bytes the program actually holds inside it."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    names = {"in_use": "bytes_in_use", "peak": "peak_bytes_in_use"}
    return {key: stats[name] / 2**20 for key, name in names.items() if name in stats}
