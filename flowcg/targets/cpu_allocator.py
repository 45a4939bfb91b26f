"""Keep freed heap memory in the process, so that large CPU tensors do not page-fault on every use.

glibc's ``malloc`` serves blocks above ``M_MMAP_THRESHOLD`` (128 kB by default, raised dynamically
up to 32 MB) with fresh ``mmap`` pages and returns heap memory above ``M_TRIM_THRESHOLD`` to the
kernel on ``free``. A batched force-field pass allocates and frees hundreds of 0.1–2 MB
temporaries, so every pass touches fresh pages again: about 10⁴ minor page faults (≈ 40 MB zeroed
by the kernel) per batch of 1024 alanine-dipeptide configurations, which more than doubled its CPU
time. Raising both thresholds once keeps those blocks on the heap and reuses them; the price is
that the process keeps its peak heap size instead of shrinking after it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: mallopt parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

#: Largest block served from the heap (glibc's own upper limit for the dynamic threshold).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the top of the heap that is kept rather than returned to the kernel.
TRIM_THRESHOLD = 256 * 1024 * 1024


@functools.cache
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); False where libc is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
