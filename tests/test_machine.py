"""The CPU description (jtd3/machine.py) that run reports, benchmark meta lines and the compilation cache use."""

from __future__ import annotations

import pytest

from jtd3 import machine

XEON = {"model name": "Intel(R) Xeon(R) Processor", "flags": "fpu sse2 avx2 avx512f amx_bf16"}


@pytest.fixture
def cpu(monkeypatch):
    """Replace what /proc/cpuinfo says with the dict the test sets."""
    fields = {}
    monkeypatch.setattr(machine, "_first_cpu", lambda: fields)
    return fields


def test_model_and_flags_come_from_the_first_processor(cpu):
    cpu.update(XEON)
    assert machine.cpu_model() == "Intel(R) Xeon(R) Processor"
    assert {"avx2", "avx512f", "amx_bf16"} <= machine.cpu_flags() and "avx" not in machine.cpu_flags()


def test_cpu_kind_tells_cpus_apart_by_model_and_flags(cpu):
    cpu.update(XEON)
    xeon = machine.cpu_kind()
    assert xeon == machine.cpu_kind()  # stable: a cache directory name
    cpu["flags"] = "fpu sse2 avx2"  # the same model without AVX-512: its compiled code must not be shared
    assert machine.cpu_kind() != xeon
    cpu.update(XEON, **{"model name": "AMD EPYC 9B14"})
    assert machine.cpu_kind() != xeon


def test_without_cpuinfo_the_answers_are_empty_and_the_kind_still_a_name(cpu):
    assert machine.cpu_model() == "" and machine.cpu_flags() == frozenset()
    kind = machine.cpu_kind()
    assert kind and "/" not in kind


def test_the_real_cpuinfo_is_read_up_to_the_first_processor():
    machine._first_cpu.cache_clear()
    fields = machine._first_cpu()
    if fields:  # Linux
        assert "processor" in fields and fields["processor"] == "0"


def test_device_memory_is_read_from_the_allocator_where_the_backend_reports_it(monkeypatch):
    import jax

    from jtd3.machine import device_memory_mb

    class FakeGpu:
        def memory_stats(self):
            return {"bytes_in_use": 3 * 2**20, "peak_bytes_in_use": 5 * 2**20, "bytes_limit": 2**30}

    if jax.default_backend() == "cpu":
        assert device_memory_mb() == {}  # XLA:CPU has no allocator statistics
    monkeypatch.setattr(jax, "local_devices", lambda: [FakeGpu()])
    assert device_memory_mb() == {"in_use": 3.0, "peak": 5.0}


# ----------------------------------------------------------------------------------------------------------
# Huge pages for XLA:CPU's buffers: the decision, and the re-execution itself

GLIBC = ("glibc", "2.36")


def test_thp_mode_is_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert machine.transparent_huge_pages_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert machine.transparent_huge_pages_mode(str(path)) == "always"
    assert machine.transparent_huge_pages_mode(str(tmp_path / "missing")) == ""


def test_running_libc_names_the_c_library_and_its_version():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    name, version = machine.running_libc()
    assert name == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 17)


def test_huge_pages_env_adds_the_tunable_and_keeps_the_others():
    env = machine.huge_pages_env({"PATH": "/bin"}, GLIBC, "madvise", "Linux")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = machine.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC, "madvise", "Linux")
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert machine.malloc_huge_pages(env) and not machine.malloc_huge_pages({"GLIBC_TUNABLES": "x=1"})


@pytest.mark.parametrize(
    "environ, libc, thp, system",
    [
        ({"JTD3_HUGE_PAGES": "0"}, GLIBC, "madvise", "Linux"),  # opted out
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, GLIBC, "madvise", "Linux"),  # done: no second exec
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise", "Linux"),  # the user's own choice
        ({}, ("glibc", "2.34"), "madvise", "Linux"),  # before the tunable existed
        ({}, ("", ""), "madvise", "Linux"),  # musl or unknown C library
        ({}, GLIBC, "always", "Linux"),  # huge pages come without asking
        ({}, GLIBC, "never", "Linux"),  # the kernel refuses them
        ({}, GLIBC, "", "Darwin"),
    ],
)
def test_huge_pages_env_is_none_where_it_cannot_help_or_is_done(environ, libc, thp, system):
    assert machine.huge_pages_env(environ, libc, thp, system) is None


def test_reexec_restarts_the_program_once_with_the_tunable(tmp_path):
    import os
    import platform
    import subprocess
    import sys

    plan = machine.huge_pages_env({}, machine.running_libc(), machine.transparent_huge_pages_mode(), platform.system())
    script = tmp_path / "prog.py"
    script.write_text(
        "import os, sys\n"
        "from jtd3.machine import reexec_with_huge_pages\n"
        "print('start', flush=True)\n"
        "reexec_with_huge_pages()\n"
        "print('run', os.getpid(), os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:], flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JTD3_HUGE_PAGES")}
    out = subprocess.run([sys.executable, str(script), "--a", "b c"], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    runs = [line for line in out if line.startswith("run")]
    assert len(runs) == 1 and runs[0].endswith("['--a', 'b c']")  # the program ran on once, arguments intact
    if plan is None:  # this machine cannot use it: the program just runs
        assert out.count("start") == 1 and "glibc.malloc.hugetlb=1" not in runs[0]
        return
    assert out.count("start") == 2 and "glibc.malloc.hugetlb=1" in runs[0]  # started again, once
    off = subprocess.run([sys.executable, str(script)], env={**env, "JTD3_HUGE_PAGES": "0"}, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert off.count("start") == 1 and "glibc.malloc.hugetlb=1" not in off[-1]
