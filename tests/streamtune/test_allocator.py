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
_STEPS = """
import json, resource, sys
from streamtune.allocator import keep_freed_memory
applied = keep_freed_memory(int(sys.argv[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for step in range(12):
    buffers = [b"\\x01" * ((size % 8 + 1) << 20) for size in range(step, step + 16)]
    del buffers
print(json.dumps({"applied": applied, "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _steps(keep_freed_mb: int) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _STEPS, str(keep_freed_mb)], check=True, capture_output=True, text=True, timeout=120
    )
    result: dict[str, int] = json.loads(done.stdout)
    return result


@glibc
def test_kept_memory_is_reused_instead_of_faulted_in_again() -> None:
    glibc_defaults, kept = _steps(0), _steps(256)
    assert glibc_defaults["applied"] is False and kept["applied"] is True
    # 12 steps of 72 MiB: glibc's defaults trim it and fault it in again every step (210k faults here, 18k
    # a step); kept, only the first step's pages are new (18k in all).
    assert kept["page_faults"] * 4 < glibc_defaults["page_faults"], (kept, glibc_defaults)


def test_elsewhere_than_glibc_nothing_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    allocator._glibc.cache_clear()
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    try:
        assert allocator.keep_freed_memory(256) is False
        allocator.release_freed_memory()  # a no-op there, not an error
    finally:
        allocator._glibc.cache_clear()
