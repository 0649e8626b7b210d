"""Token limits' sliding windows (pure: the caller gives the clock).

A window counts the tokens of answers that ended within its span, in buckets (a minute's window in 1-second
buckets, a day's in 1-minute ones): a bucket falls out whole once its end is a span old, so a key is held at most
one bucket longer than an exact window would hold it, never less.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class SlidingWindow:
    span_s: float
    bucket_s: float
    buckets: deque[list[float]] = field(default_factory=deque)  # [bucket number, tokens], oldest first
    spent: float = 0.0

    def add(self, tokens: float, now: float) -> None:
        self._evict(now)
        number = math.floor(now / self.bucket_s)
        if self.buckets and self.buckets[-1][0] == number:
            self.buckets[-1][1] += tokens
        else:
            self.buckets.append([number, tokens])
        self.spent += tokens

    def spent_at(self, now: float) -> float:
        self._evict(now)
        return self.spent

    def free_at(self, limit: float, now: float) -> float:
        """When the spend will be under `limit` again (now, if it is)."""
        self._evict(now)
        left = self.spent
        for number, tokens in self.buckets:
            if left < limit:
                break
            left -= tokens
            when = self._leaves_at(number)
            if left < limit:
                return when
        return now

    def _leaves_at(self, number: float) -> float:
        return (number + 1) * self.bucket_s + self.span_s

    def _evict(self, now: float) -> None:
        buckets = self.buckets
        while buckets and self._leaves_at(buckets[0][0]) <= now:
            self.spent -= buckets.popleft()[1]
        if not buckets:
            self.spent = 0.0  # no float drift left behind


@dataclass
class KeyLimits:
    """One client key's limits and spend: (window name, limit, window) for each limit it has."""

    name: str
    windows: tuple[tuple[str, int, SlidingWindow], ...]

    def add(self, tokens: float, now: float) -> tuple[float, ...]:
        """Count an answer's tokens; each window's blocked-until (0.0: not blocked)."""
        for _name, _limit, window in self.windows:
            window.add(tokens, now)
        return self.blocked_until(now)

    def blocked_until(self, now: float) -> tuple[float, ...]:
        return tuple(window.free_at(limit, now) if window.spent_at(now) >= limit else 0.0
                     for _name, limit, window in self.windows)

    def remaining(self, now: float) -> dict[str, int]:
        return {name: max(0, limit - int(window.spent_at(now))) for name, limit, window in self.windows}

    def saved(self, now: float) -> dict[str, list[list[float]]]:
        """The windows' buckets still in them, to be taken back by `restore` after a restart."""
        return {name: [list(bucket) for bucket in window.buckets] for name, _limit, window in self.windows
                if window.spent_at(now)}

    def restore(self, saved: dict[str, list[list[float]]], now: float) -> None:
        """Buckets a former process saved (those older than their window are left out)."""
        for name, _limit, window in self.windows:
            for number, tokens in saved.get(name, []):
                if window._leaves_at(number) > now and tokens > 0:
                    window.buckets.append([number, tokens])
                    window.spent += tokens


MINUTE = ("minute", 60.0, 1.0)
DAY = ("day", 86_400.0, 60.0)


def key_limits(name: str, tokens_per_minute: int | None, tokens_per_day: int | None) -> KeyLimits:
    """Both windows always exist (a missing limit is never reached), so each key has the same two board slots."""
    return KeyLimits(name, (
        (MINUTE[0], tokens_per_minute or 2**62, SlidingWindow(MINUTE[1], MINUTE[2])),
        (DAY[0], tokens_per_day or 2**62, SlidingWindow(DAY[1], DAY[2])),
    ))
