"""glibc ``malloc`` settings for the ``classdiff`` command-line process: keep freed memory for reuse.

PyTorch's CPU tensors come from ``malloc``. With glibc's defaults, blocks above a (dynamic) threshold are fresh
``mmap`` mappings and the top of the heap is returned to the system after large frees, so every training step
touches new pages again and pays one minor page fault per 4 KiB. Measured on this project's 2-core VM:
``classdiff train experiments/fashion_cpu.toml --evaluate`` took 7.0 and 8.8 million minor faults and 141.9 s and
141.4 s wall; with the settings below, 0.23 and 0.24 million faults and 129.5 s and 131.6 s (-8 %), peak resident
memory 0.88-0.91 GB -> 0.97-0.98 GB.

:func:`tune_allocator` is called by the console entry point (:func:`classdiff.cli.entry`) only, never on import:
the library does not change the allocator of a process that imports it. It does nothing when the environment sets
``CLASSDIFF_MALLOC_TUNING=0``, when any ``MALLOC_*`` variable is set (the user's own glibc tuning wins), off Linux,
or when the C library has no working ``mallopt`` (e.g. musl). The Dask workers of ``classdiff sweep`` (local
cluster or batch system) are separate processes and keep glibc's defaults; its ``synchronous`` scheduler runs in
the command's own, tuned process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["M_MMAP_THRESHOLD", "M_TOP_PAD", "M_TRIM_THRESHOLD", "tune_allocator"]

# mallopt parameter numbers of glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of free memory at the top of the heap
TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time
MMAP_THRESHOLD = 32 << 20  # blocks below 32 MiB (glibc's maximum) come from the reusable heap


def tune_allocator(environ: dict[str, str] | None = None) -> bool:
    """Apply the settings above to this process's glibc allocator; True if they were applied.

    ``environ`` (default ``os.environ``) is where the opt-out and the user's ``MALLOC_*`` variables are looked up.
    """
    env = os.environ if environ is None else environ
    if env.get("CLASSDIFF_MALLOC_TUNING", "1") == "0" or any(k.startswith("MALLOC_") for k in env):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
