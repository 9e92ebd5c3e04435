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
