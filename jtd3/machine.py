"""The machine this process runs on: the CPU from /proc/cpuinfo (Linux; empty answers elsewhere), which run
reports and benchmark meta lines record and which keeps compiled programs of different CPUs apart; the memory
an accelerator reports in use; the installed oneDNN's version (:func:`onednn_version`); and huge pages for
XLA:CPU's buffers (:func:`reexec_with_huge_pages`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import platform
import sys
from collections.abc import Mapping

__all__ = [
    "HUGE_PAGES_OPT_OUT",
    "HUGE_PAGES_TUNABLE",
    "cpu_flags",
    "cpu_kind",
    "cpu_model",
    "device_memory_mb",
    "huge_pages_env",
    "malloc_huge_pages",
    "onednn_version",
    "reexec_with_huge_pages",
    "running_libc",
    "transparent_huge_pages_mode",
]

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
"""glibc (>= 2.35) tunable: malloc marks the memory it maps with ``madvise(MADV_HUGEPAGE)``."""

HUGE_PAGES_OPT_OUT = "JTD3_HUGE_PAGES"
"""Environment variable: ``0`` keeps :func:`reexec_with_huge_pages` from re-executing the process."""


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


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int), ("hash", ctypes.c_char_p)]


@functools.cache
def onednn_version() -> str | None:
    """The installed oneDNN's version (``"2.6.3"``), ``None`` where no ``libdnnl`` is found (``agent.conv_impl:
    onednn`` needs one)."""
    name = ctypes.util.find_library("dnnl")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).dnnl_version
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.POINTER(_Version)
    v = fn().contents
    return f"{v.major}.{v.minor}.{v.patch}"


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


def transparent_huge_pages_mode(path: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> str:
    """The kernel's transparent-huge-page mode, the bracketed word of ``path`` (``always``, ``madvise`` or
    ``never``); "" where the file is missing (not Linux, or a kernel without THP)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else ""


def malloc_huge_pages(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process's malloc asks for huge pages (:data:`HUGE_PAGES_TUNABLE` is in ``GLIBC_TUNABLES``;
    glibc reads it once, at the start of the process)."""
    environ = os.environ if environ is None else environ
    return HUGE_PAGES_TUNABLE in environ.get("GLIBC_TUNABLES", "").split(":")


def huge_pages_env(
    environ: Mapping[str, str], libc: tuple[str, str], thp_mode: str, system: str
) -> dict[str, str] | None:
    """The environment :func:`reexec_with_huge_pages` restarts the process with, or None when it should not:
    the user opted out (``JTD3_HUGE_PAGES=0``), ``GLIBC_TUNABLES`` already sets ``glibc.malloc.hugetlb`` (which
    also ends the re-execution), the system is not Linux, the C library is not glibc >= 2.35 (``libc`` as
    :func:`running_libc` gives it), or the kernel's THP mode is not ``madvise`` (``always`` gives huge
    pages without asking, ``never`` refuses them). Other tunables in ``GLIBC_TUNABLES`` are kept."""
    if environ.get(HUGE_PAGES_OPT_OUT, "1") == "0" or system != "Linux" or thp_mode != "madvise":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if any(t.startswith("glibc.malloc.hugetlb=") for t in tunables.split(":")):
        return None
    name, version = libc
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except ValueError:
        return None
    if name != "glibc" or (major, minor) < (2, 35):
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE
    return env


def running_libc() -> tuple[str, str]:
    """``("glibc", "2.36")`` for the C library this process runs on, ``("", "")`` where it does not say (musl,
    not Linux). Read from ``confstr``: :func:`platform.libc_ver` reads the interpreter's file and reports the
    oldest glibc the binary was linked for, not the one it runs on."""
    try:
        name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
    except (AttributeError, ValueError, OSError):
        return "", ""
    return name, version


def reexec_with_huge_pages() -> None:
    """Restart this program once with :data:`HUGE_PAGES_TUNABLE` set, where :func:`huge_pages_env` says it applies.

    Why: XLA:CPU allocates the temporary buffers of every call of a compiled update afresh (74-92 MB at
    B = 64, more at 256); glibc serves such sizes with new mappings of 4 KiB pages, which the update then
    faults in and walks with many TLB misses. With huge pages the TD3 update with LayerNorm runs 7-9 % faster
    on the CI's Xeon (docs/agent.md, "Huge pages"). glibc reads its tunables only when a process starts, so
    the entry points (``scripts/train.py``, ``jtd3-train``, the validation and benchmark scripts) call this
    first: it replaces the process (same PID, same arguments, ``sys.orig_argv``) and returns only when nothing
    is to be done. ``JTD3_HUGE_PAGES=0`` turns it off.
    """
    env = huge_pages_env(os.environ, running_libc(), transparent_huge_pages_mode(), platform.system())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
