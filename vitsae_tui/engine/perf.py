"""Process-level speed settings that a plain `pip install` user gets without doing anything."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Iterator

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


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run a few tiny ops on one CPU thread: in a process with other busy threads (the app's), waking the OpenMP
    pool stalled each op by ~120 ms on 2 cores, while one thread runs the demo model from the hook in ~1 ms."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
