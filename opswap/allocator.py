"""Keep freed tensor memory in the process on glibc, so CPU training steps stop page-faulting.

PyTorch allocates CPU tensors with the C library's malloc and has no caching allocator for
them. glibc serves blocks above its mmap threshold (128 KiB at start, raised dynamically) with
fresh `mmap`s and returns freed heap tops to the kernel above its trim threshold, so every
training step maps, zero-fills (a page fault per 4 KiB page) and unmaps its activations again.
On the 2-core machine of docs/training.md a WRN-10-1 epoch spent 10–20 % of its CPU time in the
kernel that way. `keep_freed_memory()` raises both thresholds (`mallopt`): blocks up to 32 MiB
come from the heap, and freed memory stays there for the next step — what jemalloc or tcmalloc
under `LD_PRELOAD` give, without asking the user to install one. It cut the page faults by a
quarter to a half and made epochs 3–5 % faster (median of 3; benchmarks/allocator.py,
docs/training.md). The price is that the process keeps its
peak heap until it exits, which a training process reaches again at every step anyway.

Only glibc is touched (musl, macOS and Windows keep their allocator); `OPSWAP_KEEP_FREED_MEMORY=0`
turns it off. Setting both thresholds matters: setting the trim threshold alone disables
glibc's dynamic mmap threshold and leaves it at 128 KiB, which is much slower.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 1024 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they were set."""
    if os.environ.get("OPSWAP_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap first: trim alone would switch off the dynamic mmap threshold at its 128 KiB start
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
