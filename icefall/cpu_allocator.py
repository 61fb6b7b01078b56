"""glibc's malloc set up for PyTorch's large, short-lived CPU tensors.

A training step on the CPU allocates and frees tensors of several MB many times over.
With glibc's defaults, memory freed at the top of the heap goes back to the kernel once
more than the trim threshold (a few tens of MB) is free, and the next step's tensors
fault it in again, page by page, zero-filled: on the demo's training this cost about a
fifth of each step (bench/train_e2e.py). :func:`keep_freed_cpu_memory` makes the
process keep up to ``trim_threshold`` bytes of freed memory for reuse instead (the
setting that jemalloc and tcmalloc, the allocators PyTorch's CPU tuning guide suggests,
have by design). It changes nothing but speed and the process's resident size.

Nothing happens where the allocator is not glibc's, or where the user already chose
(``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` / ``MALLOC_MMAP_THRESHOLD_`` in the
environment, or an allocator in ``LD_PRELOAD``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit systems
MAX_MMAP_THRESHOLD = 32 << 20
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_cpu_memory(trim_threshold: int = 1 << 30, top_pad: int = 64 << 20,
                          mmap_threshold: int = MAX_MMAP_THRESHOLD) -> bool:
    """Keeps up to ``trim_threshold`` bytes of freed heap memory for reuse, grows the heap
    ``top_pad`` bytes at a time, and serves blocks below ``mmap_threshold`` from the heap.

    Returns:
      True when glibc accepted the settings; False where they do not apply (not Linux,
      no glibc, or the user's own allocator settings).
    """
    if not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in _USER_SETTINGS) or "alloc" in os.environ.get(
            "LD_PRELOAD", ""):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, min(mmap_threshold, MAX_MMAP_THRESHOLD)),
                (M_TRIM_THRESHOLD, trim_threshold), (M_TOP_PAD, top_pad))
    accepted = all([mallopt(param, value) == 1 for param, value in settings])
    if accepted:
        logging.info(f"CPU allocator: keeping up to {trim_threshold >> 20} MiB of freed "
                     "memory for reuse (icefall/cpu_allocator.py)")
    return accepted
