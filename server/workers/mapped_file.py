"""A file of 64-bit integers that the supervisor and its workers map together (the connection
counts of handoff.py, the sampling table of sampling_table.py)."""

from __future__ import annotations

import mmap
import os


def map_integers(descriptor: int, count: int) -> tuple[mmap.mmap, memoryview]:
    """Map `count` signed 64-bit integers of the open file `descriptor`, sizing the file first
    if it is shorter (the first process to open it; new bytes read as zeros): the map, and a
    view of it as integers (release the view before closing the map)."""
    size = count * 8
    if os.fstat(descriptor).st_size < size:
        os.ftruncate(descriptor, size)
    mapping = mmap.mmap(descriptor, size)
    return mapping, memoryview(mapping).cast("q")
