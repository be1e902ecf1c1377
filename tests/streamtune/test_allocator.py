"""``memory.keep_freed_mb``: freed memory is reused instead of faulted in again, counted in page faults of a
fresh process (glibc's allocator state is per process)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from streamtune import allocator

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# What a torch step does to the allocator: buffers of many sizes up to tens of MiB, written, all freed, again.
# On a thread (the ingest job encodes on its operator's own), the thread's arena is first made and left empty
# before the setting is applied: the setting must reach arenas that exist already.
_STEPS = """
import json, resource, sys, threading
from streamtune.allocator import keep_freed_memory

def steps():
    for step in range(24):
        buffers = [b"\\x01" * ((size % 8 + 1) << 20) for size in range(step, step + 16)]
        del buffers

def on_thread():
    first = b"\\x01" * (64 << 10)  # below glibc's mmap threshold: from this thread's own arena
    del first
    applied.set()
    go.wait()
    steps()

applied, go = threading.Event(), threading.Event()
where = sys.argv[2]
worker = threading.Thread(target=on_thread)
if where == "thread":
    worker.start()
    applied.wait()
result = {"applied": keep_freed_memory(int(sys.argv[1]))}
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
if where == "thread":
    go.set()
    worker.join()
else:
    steps()
result["page_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps(result))
"""


def _steps(keep_freed_mb: int, where: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _STEPS, str(keep_freed_mb), where],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result: dict[str, int] = json.loads(done.stdout)
    return result


@glibc
@pytest.mark.parametrize("where", ["main", "thread"])
def test_kept_memory_is_reused_instead_of_faulted_in_again(where: str) -> None:
    glibc_defaults, kept = _steps(0, where), _steps(256, where)
    assert glibc_defaults["applied"] is False and kept["applied"] is True
    # 24 steps of 72 MiB: glibc's defaults trim it (main: 413k faults here) or unmap the thread's emptied heaps
    # (thread: 98k), faulting it in again every step; kept, only the first step's pages are new (18-19k). On the
    # thread, the trim threshold alone left 46k: the arena's top pad is what keeps a thread's heaps.
    assert kept["page_faults"] * 4 < glibc_defaults["page_faults"], (kept, glibc_defaults)


def test_elsewhere_than_glibc_nothing_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    allocator._glibc.cache_clear()
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    try:
        assert allocator.keep_freed_memory(256) is False
        allocator.release_freed_memory()  # a no-op there, not an error
    finally:
        allocator._glibc.cache_clear()
