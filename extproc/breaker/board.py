"""The trips board: each circuit's trip deadline and when that trip began (epoch seconds, 0.0 when never
tripped), two float64 per circuit in a small file, written by the breaker process and mapped read-only
by every ext_proc worker. A worker's check is a memory read: no message, no lock, whatever the number
of workers.

An aligned 8-byte store is one instruction on the machines Envoy runs on, so a reader sees the old value
or the new one, never half of each (the pair may be read across an update: harmless, see availability).
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)
SLOT = 16  # bytes per circuit: two float64, the deadline and the trip's start
# Envoy learns of a trip, and of its end, from its next health check of the member (every 0.25 s, see
# envoy/envoy.yaml). Until the end has reached Envoy the ext_proc keeps counting the member as tripped, so
# that a request it lets through finds the member back in Envoy's load balancer; until the start has, the
# member may still be picked.
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

    def publish(self, circuit: int, until: float, since: float) -> None:
        self._slots[2 * circuit + 1] = since
        self._slots[2 * circuit] = until

    def clear(self) -> None:
        for index in range(2 * self._count):
            self._slots[index] = 0.0

    def trip(self, circuit: int) -> tuple[float, float]:
        """What the file holds for the circuit: (until, since)."""
        return self._slots[2 * circuit], self._slots[2 * circuit + 1]

    def trips(self) -> list[tuple[float, float]]:
        """(until, since) per circuit: a restarted breaker takes the trips back."""
        return [self.trip(circuit) for circuit in range(self._count)]


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

    def availability(self, circuits: tuple[int, ...]) -> tuple[int, int, float]:
        """(members that may be tried; members Envoy may still pick, the trip's start or end not yet seen
        by its health checks; when none may be tried: seconds until the first may)."""
        slots = self._slots
        if slots is None:
            return len(circuits), len(circuits), 0.0
        now = time.time()
        open_members = pickable = 0
        earliest = float("inf")
        for circuit in circuits:
            until, since = slots[2 * circuit], slots[2 * circuit + 1]
            if until + REOPEN_MARGIN_S <= now:
                open_members += 1
                pickable += 1
                continue
            earliest = min(earliest, until)
            if now - since < REOPEN_MARGIN_S or until <= now:
                pickable += 1
        return open_members, pickable, 0.0 if open_members else earliest + REOPEN_MARGIN_S - now
