"""Server-sent events, written and flushed one at a time like Azure does."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .jsonio import dumps

DONE = "[DONE]"


class SseWriter:
    """Writes `data:` (optionally `event:`) frames, pausing `interval_s` between them.

    A client that hangs up mid-stream is normal (cancelled generations, gateway tests),
    so after a failed write the remaining events are silently dropped.
    """

    def __init__(self, request: web.Request, interval_s: float) -> None:
        self._request = request
        self._interval_s = interval_s
        self._response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        self._sent = 0
        self._gone = False

    async def send(self, data: dict[str, Any] | str, event: str | None = None) -> None:
        if self._gone:
            return
        if self._sent == 0:
            await self._response.prepare(self._request)  # headers go out with the first event
        elif self._interval_s:
            await asyncio.sleep(self._interval_s)
        payload = data if isinstance(data, str) else dumps(data).decode()
        frame = f"event: {event}\ndata: {payload}\n\n" if event else f"data: {payload}\n\n"
        try:
            # One write per event: aiohttp sends it as its own chunk, so clients see real pacing.
            await self._response.write(frame.encode())
        except ConnectionResetError:
            self._gone = True
        self._sent += 1

    async def finish(self) -> web.StreamResponse:
        if self._sent == 0:
            await self._response.prepare(self._request)
        if not self._gone:
            await self._response.write_eof()
        return self._response
