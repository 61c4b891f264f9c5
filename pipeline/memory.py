"""Giving memory back between the groups of a stage, so the process's size follows one group, not the day.

A stage that works in groups (the transform: files of about ``CHUNK_BYTES`` at a time) frees each
group's frames and records before the next. Two things keep the freed memory resident: objects in
reference cycles wait for the cyclic collector (paused while a stage runs, see
:func:`pipeline.runner.gc_paused`), and glibc's allocator keeps freed pages of its heap until asked
to return them. :func:`release_memory` does both; where ``malloc_trim`` does not exist (another C
library, another OS) only the collection runs. The ledger's page cache is given back first
(:meth:`pipeline.ledger.Ledger.release_memory`), so its freed pages are returned with the rest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from functools import cache

__all__ = ["release_memory"]


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_memory() -> None:
    """Collect cyclic garbage and return the C heap's free pages to the operating system."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
