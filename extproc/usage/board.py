"""The spend board: for each client key with a token limit (its position among them: Settings.token_limited_keys),
until when its minute's and its day's window are spent (epoch seconds, 0.0 when not), two float64 per key in a
small file (extproc/sharedfloats.py), written by the usage process and mapped read-only by every ext_proc worker."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import sharedfloats

log = logging.getLogger(__name__)
WINDOWS = ("minute", "day")  # the two slots of a key, in order


def create(path: Path, keys: int) -> None:
    sharedfloats.create(path, len(WINDOWS) * keys)


class SpendWriter:
    def __init__(self, path: Path, keys: int) -> None:
        self._slots = sharedfloats.map_for_writing(path, len(WINDOWS) * keys)
        self._keys = keys

    def publish(self, key: int, until: tuple[float, ...]) -> None:
        for window, value in enumerate(until):
            self._slots[len(WINDOWS) * key + window] = value

    def blocked(self, key: int) -> tuple[float, ...]:
        return tuple(self._slots[len(WINDOWS) * key + window] for window in range(len(WINDOWS)))


class SpendReader:
    """A worker's side: whether a key may be served now."""

    def __init__(self, path: Path, keys: int) -> None:
        self._slots: memoryview | None = None
        try:
            self._slots = sharedfloats.map_for_reading(path, len(WINDOWS) * keys)
        except OSError as exc:
            log.error("cannot read the client keys' token spend (%s): token limits are not enforced", exc)
        if self._slots is None and keys:
            log.error("the token spend file %s is missing or short: token limits are not enforced", path)

    def wait(self, key: int) -> tuple[str, float]:
        """The window the key has spent and the seconds until it frees enough; ("", 0.0) when it may be served."""
        slots = self._slots
        if slots is None:
            return "", 0.0
        now = time.time()
        base = len(WINDOWS) * key
        minute, day = slots[base], slots[base + 1]
        if minute <= now and day <= now:
            return "", 0.0
        return (WINDOWS[1], day - now) if day >= minute else (WINDOWS[0], minute - now)
