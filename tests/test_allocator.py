"""retain_freed_memory: the kernel's own page-fault counter shows freed memory reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from archbench import allocator
from archbench.allocator import retain_freed_memory

GLIBC = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


def _thp_always() -> bool:
    """Transparent huge pages for every mapping: a fault maps 2 MiB, and the counts below
    (one fault per 4 KiB page) do not hold."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


# Faults taken by each of six fills of a 64 MiB tensor, allocated and freed each time:
# with glibc's defaults a block that large is a fresh mapping every time (16,384 faults of
# 4 KiB pages); with the memory retained the heap grows to its high-water mark in the
# first fills (a small allocation left in the freed block can make it grow once more) and
# its pages are reused after that.
SCRIPT = r"""
import resource, sys, torch
from archbench.allocator import retain_freed_memory
for step in sys.argv[1:]:
    if step in ("on", "off"):
        assert retain_freed_memory(step == "on")["applied"]
        continue
    faults = []
    for _ in range(6):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(16 << 20).fill_(1.0)  # 64 MiB, freed at once
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(",".join(map(str, faults)))
"""
PAGES = (64 << 20) // 4096


def _faults(*steps: str) -> list[list[int]]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *steps],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LD_PRELOAD": ""},
    ).stdout
    return [[int(n) for n in line.split(",")] for line in out.split()]


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.skipif(_thp_always(), reason="transparent huge pages on every mapping")
def test_freed_memory_is_reused_without_page_faults_and_given_back_when_switched_off():
    default, retained, restored = _faults("fill", "on", "fill", "off", "fill")
    assert min(default) >= PAGES * 0.9  # a fresh mapping per tensor
    assert max(retained[-3:]) < PAGES * 0.01  # the heap's pages, already mapped
    assert max(restored) >= PAGES * 0.9  # given back again


def test_other_allocators_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.os, "confstr", lambda name: "musl 1.2")
    result = retain_freed_memory()
    assert result["applied"] is False and "not glibc" in result["reason"]
    monkeypatch.setattr(allocator.os, "confstr", lambda name: "glibc 2.36")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    result = retain_freed_memory()
    assert result["applied"] is False and "jemalloc" in result["reason"]


def test_bench_retain_heap_is_applied_and_recorded(tmp_path, monkeypatch):
    """The CLI flag calls retain_freed_memory (a spy here: the real call is process-wide)
    before measuring, and the records say so."""
    from archbench.cli import main
    from archbench.commands import bench

    calls = []

    def spy(enable=True):
        calls.append(enable)
        monkeypatch.setattr(allocator, "_retained", enable)
        return {"applied": True, "allocator": "glibc", "reason": ""}

    monkeypatch.setattr(bench, "retain_freed_memory", spy)
    from archbench.bench import environment

    assert environment()["freed_memory_retained"] is False
    out = tmp_path / "bench.json"
    args = ["bench", "resnet_pico", "--img-size", "16", "--batch", "2", "--repeats", "2"]
    assert main([*args, "--retain-heap", "--out", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    assert record["environment"]["freed_memory_retained"] is True
    assert calls == [True]
