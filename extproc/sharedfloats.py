"""A small file of float64 slots that one process writes and every ext_proc worker maps read-only: how the
circuit breaker's trips (extproc/breaker/board.py) and the clients' token spend (extproc/usage/board.py) reach
the workers. A worker's read is a memory read: no message, no lock, whatever the number of workers.

An aligned 8-byte store is one instruction on the machines Envoy runs on, so a reader sees the old value or
the new one, never half of each.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

FLOAT = 8


def create(path: Path, floats: int) -> None:
    """Make the file for `floats` slots, every one 0.0 (the supervisor, before any reader or writer starts); an
    existing file is zeroed in place (never shortened: a reader that mapped it would fault on the missing
    pages), so readers that mapped it keep reading it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = max(1, floats) * FLOAT
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        os.pwrite(fd, bytes(os.fstat(fd).st_size), 0)
    finally:
        os.close(fd)


def map_for_writing(path: Path, floats: int) -> memoryview:
    """The writer's view of the slots (the file grown if short)."""
    size = max(1, floats) * FLOAT
    with open(path, "r+b") as file:
        if os.fstat(file.fileno()).st_size < size:
            file.truncate(size)
        return memoryview(mmap.mmap(file.fileno(), size)).cast("d")


def map_for_reading(path: Path, floats: int) -> memoryview | None:
    """A reader's view; None when the file is missing or short (OSError when it cannot be read)."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size >= floats * FLOAT > 0:
            return memoryview(mmap.mmap(file.fileno(), floats * FLOAT, access=mmap.ACCESS_READ)).cast("d")
    return None
