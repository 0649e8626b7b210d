"""The breaker's rules, pure: outcomes of tries in, trips out. Time is passed in (epoch seconds).

Azure API Management's circuit breaker: `failures` failure statuses within `interval_seconds` trip a
member for `trip_seconds`, or for the Retry-After its answer carried when that is longer (and
`honour_retry_after` is on), at most `max_trip_seconds`. A failure while tripped extends the trip to
the later deadline, never shortens it. After a trip the member takes traffic again; while it is
"recovering" (for `interval_seconds` after it reopened) one failure trips it again at once, as a
half-open breaker's failed probe would.
"""

from __future__ import annotations

import email.utils
import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_statuses: frozenset[int]
    failures: int = 3
    interval_s: float = 300.0
    trip_s: float = 60.0
    honour_retry_after: bool = True
    max_trip_s: float = 86400.0


class Outcome(NamedTuple):
    """One try as Envoy logged it."""

    status: int  # 0: no response (could not connect, reset, no headers within the try timeout)
    retry_after: str = ""  # the answer's `retry-after` header, as sent
    retry_after_ms: str = ""  # the answer's `retry-after-ms` header (Azure OpenAI sends both)


class State(str, Enum):
    HEALTHY = "healthy"
    TRIPPED = "tripped"
    RECOVERING = "recovering"  # reopened less than interval_s ago: one failure trips it again


class Trip(NamedTuple):
    """A change of a circuit's deadline, for the log and the board."""

    circuit: int
    until: float
    status: int
    reason: str


def retry_after_seconds(outcome: Outcome, now: float) -> float | None:
    """How long the answer asked to be left alone: `retry-after-ms`, else `retry-after` in seconds or
    as an HTTP date; None when it asked nothing readable."""
    if outcome.retry_after_ms:
        try:
            value = float(outcome.retry_after_ms)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value / 1000
    text = outcome.retry_after.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


@dataclass
class _Circuit:
    failures: deque[float] = field(default_factory=deque)
    until: float = 0.0  # tripped while now < until
    reopened: float = -math.inf  # when the last trip ended


class Breaker:
    """The state of `count` circuits (numbered as `Settings.circuits`)."""

    def __init__(self, policy: BreakerPolicy, count: int) -> None:
        self.policy = policy
        self._circuits = [_Circuit() for _ in range(count)]

    def __len__(self) -> int:
        return len(self._circuits)

    def is_failure(self, outcome: Outcome) -> bool:
        return outcome.status == 0 or outcome.status in self.policy.failure_statuses

    def record(self, circuit: int, outcome: Outcome, now: float) -> Trip | None:
        """Count one try's outcome; the trip it causes or extends, if any."""
        if not 0 <= circuit < len(self._circuits) or not self.is_failure(outcome):
            return None
        state = self._circuits[circuit]
        duration, reason = self._duration(outcome, now)
        if now < state.until:
            if now + duration <= state.until:
                return None
            state.until = now + duration
            return Trip(circuit, state.until, outcome.status, "failed again while tripped: " + reason)
        if state.until and state.reopened < state.until:
            state.reopened = state.until  # the trip ended before this outcome (no clock of our own)
        if now - state.reopened < self.policy.interval_s:
            return self._trip(circuit, state, now + duration, outcome.status, "failed while recovering: " + reason)
        failures = state.failures
        failures.append(now)
        while failures and failures[0] <= now - self.policy.interval_s:
            failures.popleft()
        if len(failures) < self.policy.failures:
            return None
        count = len(failures)
        return self._trip(circuit, state, now + duration, outcome.status,
                          f"{count} failures within {self.policy.interval_s:g}s: {reason}")

    def _trip(self, circuit: int, state: _Circuit, until: float, status: int, reason: str) -> Trip:
        state.failures.clear()
        state.until = until
        return Trip(circuit, until, status, reason)

    def _duration(self, outcome: Outcome, now: float) -> tuple[float, str]:
        policy = self.policy
        asked = retry_after_seconds(outcome, now) if policy.honour_retry_after else None
        if asked is not None and asked > policy.trip_s:
            return min(asked, policy.max_trip_s), f"for the answer's Retry-After ({asked:g}s)"
        return policy.trip_s, f"for trip_seconds ({policy.trip_s:g}s)"

    def restore(self, circuit: int, until: float) -> None:
        """Take back a trip a previous breaker process published (it died; the file kept it)."""
        if 0 <= circuit < len(self._circuits) and until > self._circuits[circuit].until:
            self._circuits[circuit].until = until

    def until(self, circuit: int) -> float:
        return self._circuits[circuit].until

    def state(self, circuit: int, now: float) -> State:
        circuit_state = self._circuits[circuit]
        if now < circuit_state.until:
            return State.TRIPPED
        reopened = max(circuit_state.reopened, circuit_state.until if circuit_state.until else -math.inf)
        return State.RECOVERING if now - reopened < self.policy.interval_s else State.HEALTHY

    def reset(self) -> None:
        """Every circuit healthy again (an operator's `status --reset`, tests)."""
        self._circuits = [_Circuit() for _ in self._circuits]
