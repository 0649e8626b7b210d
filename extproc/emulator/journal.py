"""The record of the requests the emulator received, for tests to assert on.

It is bounded (see `EmulatorSettings.journal_*`): a long run keeps the newest requests only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, SupportsIndex

from aiohttp import web

from .bodies import ParsedBody, decode_json

# What a journal entry costs beyond the text it holds (the objects themselves), roughly.
ENTRY_OVERHEAD_BYTES = 512


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # decoded, without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes  # the body, cut to `journal_max_body_bytes`
    form: dict[str, Any] | None  # multipart fields; files as {"filename", "size", "content_type"}
    body_length: int = -1  # the body's real size (-1: `len(body)`)
    json_body: bool = False  # the body is JSON the emulator parsed (and `body` holds all of it)

    def __post_init__(self) -> None:
        if self.body_length < 0:
            object.__setattr__(self, "body_length", len(self.body))

    @property
    def json(self) -> Any:
        """The parsed JSON body, or None. Decoded again on each read: the journal keeps bytes, not objects."""
        if not self.json_body:
            return None
        return decode_json(self.headers.get("content-type", ""), self.body)

    @property
    def truncated(self) -> bool:
        return len(self.body) < self.body_length

    @property
    def retained_bytes(self) -> int:
        """Roughly what this entry keeps in memory: its text plus a fixed overhead."""
        size = ENTRY_OVERHEAD_BYTES + len(self.method) + len(self.path) + len(self.body)
        size += sum(len(name) + len(value) for name, value in self.headers.items())
        size += sum(len(name) + sum(map(len, values)) for name, values in self.query.items())
        return size + _text_size(self.form)

    def to_jsonable(self) -> dict[str, Any]:
        """The shape served by `GET /_emulator/requests` (bodies summarised, not dumped)."""
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body_length": self.body_length,
            "json": self.json,
            "form": self.form,
        }


def _text_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(key) + _text_size(item) for key, item in value.items())
    if isinstance(value, list):
        return sum(_text_size(item) for item in value)
    return 8 if value is not None else 0


def record(request: web.BaseRequest, body: ParsedBody, max_body_bytes: int) -> RecordedRequest:
    query: dict[str, list[str]] = {}
    for name, value in request.query.items():
        query.setdefault(name, []).append(value)
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    kept = body.raw if len(body.raw) <= max_body_bytes else body.raw[:max_body_bytes]
    return RecordedRequest(
        method=request.method,
        path=request.path,
        query=query,
        headers=headers,
        body=kept,
        form=body.form.describe() if body.form is not None else None,
        body_length=len(body.raw),
        json_body=body.json is not None and len(kept) == len(body.raw),
    )


class Journal(list[RecordedRequest]):
    """The requests in arrival order: a plain list that forgets its oldest entries beyond
    `max_requests` entries or `max_bytes` of `retained_bytes` (the newest entry always stays).

    Only `append` evicts; reads are ordinary list reads, so another thread may copy or index it."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        super().__init__()
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._bytes = 0

    @property
    def retained_bytes(self) -> int:
        return self._bytes

    def append(self, entry: RecordedRequest) -> None:
        super().append(entry)
        self._bytes += entry.retained_bytes
        self._evict()

    def _evict(self) -> None:
        keep_at_least = 1 if self.max_requests > 0 else 0  # max_requests 0 turns the journal off
        dropped = freed = 0
        while len(self) - dropped > keep_at_least and (
            len(self) - dropped > self.max_requests or self._bytes - freed > self.max_bytes
        ):
            freed += self[dropped].retained_bytes
            dropped += 1
        if dropped:
            super().__delitem__(slice(0, dropped))  # one move of the rest, not one per entry
            self._bytes -= freed

    # Other mutations are rare (tests); keep the byte count true after them.
    def _recount(self) -> None:
        self._bytes = sum(entry.retained_bytes for entry in self)

    def clear(self) -> None:
        super().clear()
        self._bytes = 0

    def extend(self, entries: Iterable[RecordedRequest]) -> None:
        for entry in entries:
            self.append(entry)

    def insert(self, index: SupportsIndex, entry: RecordedRequest) -> None:
        super().insert(index, entry)
        self._recount()
        self._evict()

    def pop(self, index: SupportsIndex = -1) -> RecordedRequest:
        entry = super().pop(index)
        self._bytes -= entry.retained_bytes
        return entry

    def remove(self, entry: RecordedRequest) -> None:
        super().remove(entry)
        self._recount()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._recount()

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self._recount()
        self._evict()

    def __iadd__(self, entries: Iterable[RecordedRequest]) -> Journal:  # type: ignore[override]
        self.extend(entries)
        return self
