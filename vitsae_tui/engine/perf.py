"""Process-level speed settings that a plain `pip install` user gets without doing anything."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


@functools.cache
def tune_allocator(trim_threshold_bytes: int = 1 << 30) -> bool:
    """Stop glibc from returning each large temporary to the OS (and page-faulting it back in on the next step).

    glibc serves allocations of 32 MiB and more with fresh mmaps (its mmap threshold cannot be raised past 32 MiB),
    so every step's (batch, d_sae) temporaries would cost page faults; with mmap off and a high trim threshold
    they stay in the heap for reuse. Linux/glibc only; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold_bytes))
    except (OSError, AttributeError):
        return False
