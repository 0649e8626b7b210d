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
    writer starts); an existing file is zeroed in place (never shortened: a reader that mapped it
    would fault on the missing pages), so readers that mapped it keep reading it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = max(1, count) * SLOT
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        os.pwrite(fd, bytes(os.fstat(fd).st_size), 0)
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

    def deadlines(self) -> list[float]:
        """What the file holds: a restarted breaker takes its predecessor's trips back."""
        return [self._slots[circuit] for circuit in range(self._count)]


class BoardReader:
    """A worker's side: `availability` of a pool's circuits."""

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

    def availability(self, circuits: tuple[int, ...]) -> tuple[int, float]:
        """(how many of the pool's members may be tried, and when none may: seconds until the first may)."""
        slots = self._slots
        if slots is None:
            return len(circuits), 0.0
        closed_before = time.time() - REOPEN_MARGIN_S
        deadlines = [slots[circuit] for circuit in circuits]
        open_members = sum(deadline <= closed_before for deadline in deadlines)
        return open_members, 0.0 if open_members else min(deadlines) - closed_before
