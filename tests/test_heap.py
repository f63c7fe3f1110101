"""enclave/heap.py: freed C-heap pages go back to the OS (what keeps the LLM server's RSS down)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from enclave.heap import release_free_heap

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


def _rss_kib() -> int:
    status = Path("/proc/self/status").read_text(encoding="ascii")
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


@glibc_only
def test_freed_pages_below_a_live_chunk_are_returned() -> None:
    # 80 MiB in 4 KiB chunks (malloc'd below the mmap threshold, and touched), all freed but the last: the
    # live last chunk stops glibc from trimming the heap top on free, as the LLM's load leaves it
    blocks = [bytearray(4096) for _ in range(20_000)]
    keep = blocks[-1]
    del blocks
    before = _rss_kib()
    assert release_free_heap()
    after = _rss_kib()
    assert before - after > 40 * 1024, (before, after)
    assert len(keep) == 4096
