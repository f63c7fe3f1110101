"""Hand the C heap's free pages back to the OS after a large load.

Loading the LLM parses its ~117 MB ONNX protobuf and builds onnxruntime's prepacked weights; the parse
buffers are freed afterwards, but glibc returns only the top of its heap to the OS, so freed chunks below
a live one stay resident (about 27 MiB here, measured with /proc/self/smaps_rollup); so do the buffers a
batch of requests freed. `malloc_trim(0)` gives back every whole free page, wherever it is. The LLM engine
calls it after its load and whenever its last request has left (under a millisecond), never per step.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

__all__ = ["release_free_heap"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the symbols already in the process: glibc's, where it is the C library
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only: musl and macOS have none
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_free_heap() -> bool:
    """True if the C library gave pages back; False if there were none or it cannot (not glibc)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
