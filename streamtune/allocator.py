"""glibc's allocator, set for the processes that run torch: freed memory is reused, not handed back and faulted in
again.

By default glibc serves every allocation above its (adaptive) mmap threshold with fresh pages from the kernel and
returns them on free, and it trims free memory at the top of the heap beyond twice that threshold (which adapts
up to 32 MiB). torch on CPU allocates and
frees the same activation-sized buffers at every encode batch and every training step, so each of them is paid
for again in page faults: 1.1-2.5 million per benchmark run here. Kept, encoding ran 15-20 % and training 8-11 %
faster (BENCHMARKS.md, "Allocator").

With ``memory.keep_freed_mb`` > 0, allocations up to glibc's largest mmap threshold (32 MiB on 64-bit) come from
the heap and up to that many MiB of freed heap are kept for reuse; ``release_freed_memory`` gives it back (after a
refresh, in a process that lives on). Threads other than the main one allocate from arenas of their own, which
glibc unmaps whenever one of their heaps empties, whatever the trim threshold says; the ingest job encodes on such
a thread (its operator's), so the same amount is kept at the top of every arena too (M_TOP_PAD), which applies to
arenas that exist already: 71,000-222,000 page faults per 384 documents encoded on a thread before, 27-6,600 after
the first pass (BENCHMARKS.md). The arithmetic is untouched: the same adapter bytes either way (a test).

Only glibc has these knobs (``mallopt``); elsewhere (musl, macOS) nothing is changed and a debug line says so.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from functools import cache

__all__ = ["keep_freed_memory", "release_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
"""glibc's ceiling for M_MMAP_THRESHOLD (DEFAULT_MMAP_THRESHOLD_MAX): 32 MiB on 64-bit."""


@cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)  # the running process's own symbols: its C library


def keep_freed_memory(mb: int) -> bool:
    """Keep up to ``mb`` MiB of freed memory for reuse (in each arena: the main one and those of threads), and
    serve allocations up to 32 MiB from it (process-wide, from now on). 0: glibc's defaults, left alone. True
    when applied."""
    if mb <= 0:
        return False
    libc = _glibc()
    if libc is None:
        log.debug("memory.keep_freed_mb: not glibc (%s), allocator left as it is", platform.libc_ver()[0] or "?")
        return False
    kept = mb * 1024 * 1024
    options = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, kept), (_M_TOP_PAD, kept))
    applied = all([libc.mallopt(option, value) == 1 for option, value in options])  # a list: every one is set
    if not applied:  # mallopt refuses only values outside its range, which settings.py does not let through
        log.warning("memory.keep_freed_mb=%d: glibc's mallopt refused it; allocator left at its defaults", mb)
    return applied


def release_freed_memory() -> None:
    """Hand the freed memory that ``keep_freed_memory`` kept back to the kernel (glibc's ``malloc_trim``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
