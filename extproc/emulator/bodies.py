"""Parse a request body once (JSON or multipart) for both the journal and the handlers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson
from aiohttp import MultipartReader, StreamReader
from aiohttp.base_protocol import BaseProtocol
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

# Parts of one multipart body read before giving up: aiohttp's own `client_max_fields` default.
DEFAULT_MAX_PARTS = 1_000


class TooManyParts(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"The multipart body has more than {limit} parts.")


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
    form_error: str | None = None  # why a multipart body was refused, when it is not just malformed


def _is_multipart(content_type: str) -> bool:
    return content_type.lower().startswith("multipart/form-data")


def _looks_like_json(content_type: str, raw: bytes) -> bool:
    # Clients that forget the content type still mean JSON; Azure parses it anyway.
    return "json" in content_type.lower() or (not content_type and raw.lstrip()[:1] in (b"{", b"["))


def decode_json(content_type: str, raw: bytes) -> Any:
    """The JSON value a body carries, or None (not JSON, unparseable, or multipart)."""
    if not raw or _is_multipart(content_type) or not _looks_like_json(content_type, raw):
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # the router answers 400 where JSON is expected


async def parse_body(headers: Mapping[str, str], raw: bytes, max_parts: int = DEFAULT_MAX_PARTS) -> ParsedBody:
    content_type = headers.get("Content-Type", "")
    if not raw:
        return ParsedBody(raw=raw)
    if _is_multipart(content_type):
        try:
            form = await _read_form(headers, raw, max_parts)
        except TooManyParts as error:
            return ParsedBody(raw=raw, form_error=str(error))
        except Exception:  # aiohttp raises many types for bad input (ValueError, BadHttpMessage, LookupError...)
            return ParsedBody(raw=raw)  # malformed: the router answers 400
        return ParsedBody(raw=raw, form=form)
    return ParsedBody(raw=raw, json=decode_json(content_type, raw))


def _stream_of(raw: bytes) -> StreamReader:
    """An already-complete aiohttp stream over bytes the middleware has read."""
    loop = asyncio.get_running_loop()
    # The limit only drives flow control, which cannot apply to bytes already in memory.
    reader = StreamReader(BaseProtocol(loop), limit=max(len(raw), 2**16), loop=loop)
    reader.feed_data(raw)
    reader.feed_eof()
    return reader


async def _read_form(headers: Mapping[str, str], raw: bytes, max_parts: int) -> Form:
    form = Form()
    reader = MultipartReader(headers, _stream_of(raw))
    budget = _PartBudget(max_parts)
    while (part := await reader.next()) is not None:
        budget.take()
        if isinstance(part, MultipartReader):
            await _skip_nested(part, budget)  # nested multiparts carry nothing Azure reads
            continue
        # What `part.name` and `part.filename` give, from one parse of the header instead of two.
        _, params = parse_content_disposition(part.headers.get("Content-Disposition"))
        name = content_disposition_filename(params, "name")
        if not name:
            continue  # nameless parts carry nothing Azure reads either
        filename = content_disposition_filename(params, "filename")
        data = await part.read(decode=True)
        if filename is not None:
            content_type = part.headers.get("Content-Type", "application/octet-stream")
            form.files.setdefault(name, []).append(UploadedFile(filename, content_type, bytes(data)))
        else:
            charset = part.get_charset(default="utf-8")
            form.fields.setdefault(name, []).append(bytes(data).decode(charset, errors="replace"))
    return form


class _PartBudget:
    """Counts parts, nested ones included: each costs real work (aiohttp parses its headers in Python)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self) -> None:
        self.used += 1
        if self.used > self.limit:
            raise TooManyParts(self.limit)


async def _skip_nested(reader: MultipartReader, budget: _PartBudget) -> None:
    while (part := await reader.next()) is not None:
        budget.take()
        if isinstance(part, MultipartReader):
            await _skip_nested(part, budget)
        else:
            await part.release()
