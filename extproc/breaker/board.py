"""The trips board: each circuit's trip deadline and when that trip began (epoch seconds, 0.0 when never
tripped), two float64 per circuit in a small file (extproc/sharedfloats.py), written by the breaker process
and mapped read-only by every ext_proc worker (the pair may be read across an update: harmless, see
availability).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import sharedfloats

log = logging.getLogger(__name__)
# Envoy learns of a trip, and of its end, from its next health check of the member (every 0.25 s, see
# envoy/envoy.yaml). Until the end has reached Envoy the ext_proc keeps counting the member as tripped, so
# that a request it lets through finds the member back in Envoy's load balancer; until the start has, the
# member may still be picked.
REOPEN_MARGIN_S = 0.5


def create(path: Path, count: int) -> None:
    """Make the board for `count` circuits, every one closed (see sharedfloats.create)."""
    sharedfloats.create(path, 2 * count)


class BoardWriter:
    """The breaker process's side."""

    def __init__(self, path: Path, count: int) -> None:
        self._slots = sharedfloats.map_for_writing(path, 2 * count)
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
            self._slots = sharedfloats.map_for_reading(path, 2 * count)
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
