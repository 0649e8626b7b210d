"""One credential's token, kept fresh and published to the workers as a file (atomic replace, owner-only).

The token is asked for ahead of its expiry on azure-identity's own schedule (its `refresh_on`, else five
minutes before expiry); azure-identity answers from its cache until then, so asking costs nothing. A failure is
logged once per streak, then tried again with backoff; while a token is still valid it stays published (the
workers stop using it near its expiry and answer 503 until a new one comes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import orjson
from azure.core.credentials_async import AsyncTokenCredential

log = logging.getLogger(__name__)

LIBRARY_REFRESH_OFFSET_S = 300  # azure-identity refreshes a token this long before it expires
MAX_BACKOFF_S = 15.0
FETCH_TIMEOUT_S = 20.0  # one attempt (azure-identity's own retries included); then it counts as failed
SLEEP_SLICE_S = 30.0  # waits are checked against the wall clock this often (a suspended host, a paused VM)


def next_check(expires_on: float, refresh_on: float | None, now: float) -> float:
    """Seconds until the token should be asked for again: when azure-identity would refresh it; a token
    already in that window (short-lived ones) is asked for again soon, the library answering from its cache
    until it refreshes (at most every 30 s)."""
    remaining = expires_on - now
    wait = (refresh_on - now) if refresh_on else remaining - LIBRARY_REFRESH_OFFSET_S
    if wait < 1:
        wait = max(1.0, min(remaining / 4, 30.0))
    return wait


def backoff(failures: int) -> float:
    return min(MAX_BACKOFF_S, 2.0 ** (failures - 1))


def publish(path: Path, token: str, expires_on: float) -> None:
    """Replace the token file in one step: a worker reads the old token or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, orjson.dumps({"token": token, "expires_on": expires_on}))
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _reason(exc: BaseException) -> str:
    """The error on one line (azure-identity names the endpoint, Entra's AADSTS code and, for
    DefaultAzureCredential, each credential's failure; never secrets), at most 800 characters."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text[:800]}" if text else type(exc).__name__


async def sleep_until(deadline: float, clock: Callable[[], float] = time.time) -> None:
    """Sleep until the wall clock reaches `deadline`, in slices: asyncio's clock stops while the host is
    suspended, the wall clock does not (a token that expired meanwhile is asked for on waking)."""
    while (left := deadline - clock()) > 0:
        await asyncio.sleep(min(left, SLEEP_SLICE_S))


class TokenKeeper:
    def __init__(self, credential: AsyncTokenCredential, scope: str, path: Path, label: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._credential = credential
        self._scope = scope
        self._path = path
        self._label = label
        self._clock = clock
        self._published: str | None = None
        self.failures = 0

    async def run(self, first_wait: float = 0.0) -> None:
        await sleep_until(self._clock() + first_wait, self._clock)
        while True:
            await sleep_until(self._clock() + await self.once(), self._clock)

    async def once(self) -> float:
        """Ask for the token, publish it if new; the seconds to wait before asking again. Any failure (the
        token endpoint's, a timeout, writing the file) is tried again with backoff, never ends the keeper."""
        try:
            info = await asyncio.wait_for(self._credential.get_token_info(self._scope), FETCH_TIMEOUT_S)
            if info.token != self._published:
                publish(self._path, info.token, float(info.expires_on))
                self._published = info.token
                log.info("entra (%s): new token for %s, valid until %s", self._label, self._scope,
                         datetime.fromtimestamp(info.expires_on, timezone.utc).isoformat(timespec="seconds"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # anything azure-identity, its transport or the file system raises
            self.failures += 1
            if self.failures == 1:
                reason = "no answer within %.0f s" % FETCH_TIMEOUT_S if isinstance(exc, TimeoutError) else _reason(exc)
                log.error("entra (%s): no token for %s: %s; trying again (logged once until it works)",
                          self._label, self._scope, reason)
            return backoff(self.failures)
        if self.failures:
            log.info("entra (%s): a token again after %d failed attempts", self._label, self.failures)
            self.failures = 0
        return next_check(float(info.expires_on), getattr(info, "refresh_on", None), self._clock())
