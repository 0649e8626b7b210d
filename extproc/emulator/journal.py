"""The record of every request the emulator received, for tests to assert on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .bodies import ParsedBody


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # decoded, without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    json: Any  # the parsed JSON body, or None
    form: dict[str, Any] | None  # multipart fields; files as {"filename", "size", "content_type"}

    def to_jsonable(self) -> dict[str, Any]:
        """The shape served by `GET /_emulator/requests` (bodies summarised, not dumped)."""
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body_length": len(self.body),
            "json": self.json,
            "form": self.form,
        }


def record(request: web.BaseRequest, body: ParsedBody) -> RecordedRequest:
    query: dict[str, list[str]] = {}
    for name, value in request.query.items():
        query.setdefault(name, []).append(value)
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return RecordedRequest(
        method=request.method,
        path=request.path,
        query=query,
        headers=headers,
        body=body.raw,
        json=body.json,
        form=body.form.describe() if body.form is not None else None,
    )
