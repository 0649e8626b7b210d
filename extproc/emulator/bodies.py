"""Parse a request body once (JSON or multipart) for both the journal and the handlers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson
from aiohttp import BodyPartReader, MultipartReader, StreamReader
from aiohttp.base_protocol import BaseProtocol

@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content_type: str
    data: bytes

    def describe(self) -> dict[str, Any]:
        """The journal's view of a file: never the bytes."""
        return {"filename": self.filename, "size": len(self.data), "content_type": self.content_type}


@dataclass
class Form:
    """A multipart form; names may repeat (`image[]`, `timestamp_granularities[]`)."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[UploadedFile]] = field(default_factory=dict)

    def value(self, name: str) -> str | None:
        """The first value of a (non-file) field."""
        values = self.fields.get(name)
        return values[0] if values else None

    def field_list(self, name: str) -> list[str]:
        """Array fields arrive as `name[]` (openai SDK) or repeated `name`."""
        return self.fields.get(name, []) + self.fields.get(name + "[]", [])

    def file_list(self, *names: str) -> list[UploadedFile]:
        return [upload for name in names for upload in self.files.get(name, [])]

    def describe(self) -> dict[str, Any]:
        """Field name -> value, files described; repeated names become lists."""
        described: dict[str, Any] = {}
        for name, values in self.fields.items():
            described[name] = values[0] if len(values) == 1 else list(values)
        for name, uploads in self.files.items():
            items = [upload.describe() for upload in uploads]
            described[name] = items[0] if len(items) == 1 else items
        return described


@dataclass(frozen=True)
class ParsedBody:
    raw: bytes
    json: Any = None  # the parsed JSON value; None if absent or unparseable
    form: Form | None = None  # None unless a well-formed multipart body


def _is_multipart(content_type: str) -> bool:
    return content_type.lower().startswith("multipart/form-data")


def _looks_like_json(content_type: str, raw: bytes) -> bool:
    # Clients that forget the content type still mean JSON; Azure parses it anyway.
    return "json" in content_type.lower() or (not content_type and raw.lstrip()[:1] in (b"{", b"["))


async def parse_body(headers: Mapping[str, str], raw: bytes) -> ParsedBody:
    content_type = headers.get("Content-Type", "")
    if not raw:
        return ParsedBody(raw=raw)
    if _is_multipart(content_type):
        try:
            form = await _read_form(headers, raw)
        except (ValueError, AssertionError, RuntimeError):
            return ParsedBody(raw=raw)  # malformed: the router answers 400
        return ParsedBody(raw=raw, form=form)
    if _looks_like_json(content_type, raw):
        try:
            return ParsedBody(raw=raw, json=orjson.loads(raw))
        except orjson.JSONDecodeError:
            return ParsedBody(raw=raw)  # the router answers 400 where JSON is expected
    return ParsedBody(raw=raw)


def _stream_of(raw: bytes) -> StreamReader:
    """An already-complete aiohttp stream over bytes the middleware has read."""
    loop = asyncio.get_running_loop()
    # The limit only drives flow control, which cannot apply to bytes already in memory.
    reader = StreamReader(BaseProtocol(loop), limit=max(len(raw), 2**16), loop=loop)
    reader.feed_data(raw)
    reader.feed_eof()
    return reader


async def _read_form(headers: Mapping[str, str], raw: bytes) -> Form:
    form = Form()
    reader = MultipartReader(headers, _stream_of(raw))
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            continue  # nested multiparts and nameless parts carry nothing Azure reads
        data = await part.read(decode=True)
        if part.filename is not None:
            content_type = part.headers.get("Content-Type", "application/octet-stream")
            form.files.setdefault(part.name, []).append(UploadedFile(part.filename, content_type, bytes(data)))
        else:
            charset = part.get_charset(default="utf-8")
            form.fields.setdefault(part.name, []).append(bytes(data).decode(charset, errors="replace"))
    return form
