"""Giving freed memory back to the operating system.

glibc's malloc keeps the pages of freed blocks in its arenas (one per thread that allocates, up to 8 per core)
for reuse. A server that allocates and frees in several threads for days (decoded images on the decode thread,
batches on the model thread, uploads on helpers) accumulates such pages: its RSS creeps up although what it
holds does not (docs/reliability.md shows the measurement). `malloc_trim(0)` walks every arena and returns the
free pages (madvise), which costs milliseconds; the server calls it every `--malloc-trim-interval-s`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


def _libc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _libc_trim()


def trim_allocator() -> bool:
    """Return the C allocator's free pages to the OS; False where that is not available (not glibc)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
