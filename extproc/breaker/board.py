"""The trips board: each circuit's trip deadline (epoch seconds, 0.0 when never tripped) as an array
of float64 in a small file, written by the breaker process and mapped read-only by every ext_proc
worker. A worker's check is a memory read: no message, no lock, whatever the number of workers.

An aligned 8-byte store is one instruction on the machines Envoy runs on, so a reader sees the old
deadline or the new one, never half of each.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)
SLOT = 8  # bytes per circuit (one float64)
# Envoy learns of a trip's end from its next health check of the member (every 0.25 s, see
# envoy/envoy.yaml); until then the ext_proc keeps counting the member as tripped, so that a request
# it lets through finds the member back in Envoy's load balancer.
REOPEN_MARGIN_S = 0.5


def create(path: Path, count: int) -> None:
    """Make the board for `count` circuits, every one closed (the supervisor, before any reader or
    writer starts); an existing file is reset in place, so readers that mapped it keep reading it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        os.ftruncate(fd, 0)
        os.ftruncate(fd, max(1, count) * SLOT)
    finally:
        os.close(fd)


class BoardWriter:
    """The breaker process's side."""

    def __init__(self, path: Path, count: int) -> None:
        with open(path, "r+b") as file:
            if os.fstat(file.fileno()).st_size < count * SLOT:
                file.truncate(max(1, count) * SLOT)
            self._map = mmap.mmap(file.fileno(), max(1, count) * SLOT)
        self._slots = memoryview(self._map).cast("d")
        self._count = count

    def publish(self, circuit: int, until: float) -> None:
        self._slots[circuit] = until

    def clear(self) -> None:
        for circuit in range(self._count):
            self._slots[circuit] = 0.0


class BoardReader:
    """A worker's side: `wait_seconds` for a pool's circuits."""

    def __init__(self, path: Path, count: int) -> None:
        self._slots: memoryview | None = None
        try:
            with open(path, "rb") as file:
                if os.fstat(file.fileno()).st_size >= count * SLOT > 0:
                    self._slots = memoryview(mmap.mmap(file.fileno(), count * SLOT, access=mmap.ACCESS_READ)).cast("d")
        except OSError as exc:
            log.error("cannot read the circuit breaker's trips (%s): only Envoy's view of them applies", exc)
        if self._slots is None and count:
            log.error("the circuit breaker's trips file %s is missing or short: only Envoy's view applies", path)

    def wait_seconds(self, circuits: tuple[int, ...]) -> float:
        """0.0 when a member of the pool may be tried; else how long until the first one may."""
        slots = self._slots
        if slots is None:
            return 0.0
        earliest = min(slots[circuit] for circuit in circuits) + REOPEN_MARGIN_S
        wait = earliest - time.time()
        return wait if wait > 0 else 0.0
