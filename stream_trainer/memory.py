"""Give freed memory back to the operating system (glibc's ``malloc_trim``).

A periodic checkpoint copies the whole state (tens of MB), and a challenger is a whole
second model while it races: both are freed again, but glibc keeps freed chunks of the
heap, and after a large block has been freed it raises its mmap threshold, so the next
blocks of that size come from the heap too. The daemon's RSS then steps up to its peak
and stays there (``make soak``: +29 MB after the second challenger of a 10-minute run).
Trimming after each checkpoint returns what is free. Elsewhere than glibc: nothing.

>>> release_free_memory() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any


@cache
def _trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; True when some were (glibc only)."""
    trim = _trim()
    return bool(trim(0)) if trim is not None else False
