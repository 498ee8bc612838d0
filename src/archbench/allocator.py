"""Keep freed memory in the process, so that the next batch does not page-fault it back in.

On Linux, PyTorch's CPU tensors come from the C library's ``malloc``. glibc's ``malloc``
gives large blocks back to the kernel: a block above its mmap threshold (128 KiB at
start, raised as such blocks are freed, at most 32 MiB) is a mapping of its own, unmapped
on free, and the top of the heap is trimmed whenever more than the trim threshold is free
there. A forward pass frees its activations at the end, so the next one gets fresh pages,
and the kernel takes one page fault per 4 KiB page to zero-fill each of them again. On
the 2-core Xeon of ``docs/performance.md`` a 224x224 batch-8 forward of timm's or
archbench's mambaout_femto took 16,000-41,000 minor faults (65-165 MB), resnet50 about
62,000 and mixer_b16_224 about 112,000, at about 2 us each: 10-20% of the forward, and
different from one process to the next (which blocks land at the heap's top depends on
the order of earlier allocations).

:func:`retain_freed_memory` sets glibc's ``M_MMAP_MAX`` to 0 (every block comes from the
heap) and ``M_TRIM_THRESHOLD`` to its maximum (the heap is never trimmed): memory freed
by one batch is reused by the next without a fault. The cost is that the process keeps
its peak heap: resident memory stays at the high-water mark (peak resident memory 0-66 MB
higher on those models) instead of falling between batches. It is process-wide, so it is opt-in:
``archbench bench --retain-heap``, or one call before serving. ``retain_freed_memory(False)``
puts glibc's default limits back and trims the heap (glibc's dynamic raising of the mmap
threshold stays off after any ``mallopt``).

Why here and not a library: the allocators that keep memory by design (jemalloc,
tcmalloc; PyTorch's ``torch.backends.xeon.run_cpu`` launcher preloads one) must be loaded
with ``LD_PRELOAD`` before the process starts and are not installed with PyTorch; glibc's
own ``mallopt`` works in a running process and needs nothing installed, but Python has no
binding for it, so it is called through ``ctypes``. Under another allocator (``LD_PRELOAD``
of jemalloc or tcmalloc, musl, macOS, Windows) nothing is changed and the result says why.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

__all__ = ["freed_memory_retained", "retain_freed_memory"]

# glibc's malloc.h parameter numbers and defaults
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_INT_MAX = 2**31 - 1  # mallopt takes an int

_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")
_retained = False


def _glibc() -> tuple[Any, str] | tuple[None, str]:
    """(the C library, its version) when glibc's malloc is the process's malloc, else
    (None, the reason)."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        version = None
    if not version or not version.startswith("glibc"):
        return None, "the C library is not glibc; only glibc's malloc is tuned here"
    preload = os.environ.get("LD_PRELOAD", "")
    other = next((name for name in _PRELOADED if name in preload), None)
    if other:
        return None, f"malloc is {other} (LD_PRELOAD={preload}), not glibc's; nothing changed"
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError) as err:
        return None, f"glibc's mallopt could not be loaded: {err}"
    return libc, version


def retain_freed_memory(enable: bool = True) -> dict[str, Any]:
    """Keep (``enable=True``) or give back (``False``) the memory that freed tensors leave.

    Returns ``{"applied": bool, "allocator": ..., "reason": ...}``: ``applied`` is False,
    with the reason, where the process's malloc is not glibc's. Process-wide: it changes
    every later allocation of the process, not only archbench's.
    """
    global _retained
    libc, info = _glibc()
    if libc is None:
        return {"applied": False, "allocator": None, "reason": info}
    if enable:
        settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX)]
    else:
        settings = [
            (_M_MMAP_MAX, _DEFAULT_MMAP_MAX),
            (_M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD),
        ]
    failed = [param for param, value in settings if libc.mallopt(param, value) != 1]
    if failed:
        return {"applied": False, "allocator": info, "reason": f"mallopt refused {failed}"}
    if not enable:
        libc.malloc_trim(0)
    _retained = enable
    return {
        "applied": True,
        "allocator": info,
        "reason": "freed memory is kept for reuse (no mmap, no trim)"
        if enable
        else "glibc's default limits are back; the heap was trimmed",
    }


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` is in effect in this process."""
    return _retained
