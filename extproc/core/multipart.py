"""Find (and, for Azure's v1 API, replace) the `model` field of a multipart/form-data body.

The body is parsed by python-multipart in one pass; file parts are skipped, not copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """The body is not valid multipart/form-data."""


class DuplicateFieldError(MultipartError):
    """The wanted field is given more than once: which one counts is up to the reader, so refuse."""


class TooManyParts(MultipartError):
    """More parts than any API request has: the parse stops there, its cost bounded."""


# A transcription has a handful of parts, an image edit up to ~20; each part costs the parser ~25 us.
MAX_PARTS = 256


@dataclass(frozen=True, slots=True)
class FormField:
    value: str
    start: int  # byte offsets of the value inside the body, for an in-place replacement
    end: int


def is_multipart(content_type: str) -> bool:
    """Media types are case-insensitive (RFC 9110 8.3.1): `Multipart/Form-Data` is multipart too."""
    return content_type[:10].lower() == "multipart/"


def _params(header: str | bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """parse_options_header with parameter names lowercased: they are case-insensitive (RFC 9110
    5.6.6), `Boundary=` and `Name=` included. Quoted values (with backslash escapes) are unquoted."""
    try:
        kind, params = parse_options_header(header)
    except (UnicodeError, ValueError):  # a str header beyond Latin-1: no type Azure reads either
        return b"", {}
    return kind, {key.lower(): value for key, value in params.items()}


# A `name` parameter, to count them: the parser keeps the last, .NET's the first.
_NAME_PARAM = re.compile(rb"(?:^|;)\s*name\s*=", re.IGNORECASE)


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a multipart/form-data content type, or None (another type, or no boundary)."""
    kind, params = _params(content_type)
    if kind != b"multipart/form-data":
        return None
    return params.get(b"boundary") or None


class _FieldFinder:
    """python-multipart callbacks that remember where the wanted field's value lies."""

    def __init__(self, body: bytes, name: str) -> None:
        self.body = body
        self.wanted = name.lower().encode()
        self.header_name = b""
        self.header_value = b""
        self.in_target = False
        self.disposition_seen = False
        self.spans: list[tuple[int, int]] = []
        self.found: FormField | None = None
        self.duplicate = False
        self.ambiguous = ""  # why a part might or might not be the field, depending on the reader
        self.parts = 0

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise TooManyParts(f"over {MAX_PARTS} parts")
        self.in_target = False
        self.disposition_seen = False
        self.spans = []

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            _, params = _params(self.header_value)
            if self.disposition_seen:
                self.ambiguous = "a part has two Content-Disposition headers"
            elif len(_NAME_PARAM.findall(self.header_value)) > 1:
                self.ambiguous = "a part has two names"
            self.disposition_seen = True
            # Form field names compared case-insensitively, as ASP.NET reads them.
            named = params.get(b"name", b"").lower() == self.wanted
            if named and b"filename" in params:
                self.ambiguous = f"the {self.wanted.decode()!r} field is sent as a file"
            self.in_target = named and b"filename" not in params
        self.header_name = self.header_value = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_target:
            # Offsets are into `data`; they are body offsets only when `data` is the body itself.
            self.spans.append((start, end) if data is self.body else (-1, -1))

    def on_part_end(self) -> None:
        if self.in_target:
            if self.found is not None:
                self.duplicate = True
            else:
                self.found = _field_from_spans(self.body, self.spans)

    def callbacks(self) -> dict[str, object]:
        names = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_part_data", "on_part_end")
        return {name: getattr(self, name) for name in names}


def find_field(body: bytes, boundary: bytes, name: str) -> FormField | None:
    """The non-file field called `name`, with its position in `body`; DuplicateFieldError when
    there are several (readers differ on which counts: the gateway must check the one Azure uses)."""
    finder = _FieldFinder(body, name)
    parser = MultipartParser(boundary, callbacks=finder.callbacks())  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except TooManyParts:
        raise
    except Exception as exc:  # python-multipart raises several types for malformed input
        raise MultipartError(str(exc)) from exc
    if finder.duplicate:
        raise DuplicateFieldError(f"the {name!r} field is given more than once")
    if finder.ambiguous:
        raise MultipartError(finder.ambiguous)
    return finder.found


def _field_from_spans(body: bytes, spans: list[tuple[int, int]]) -> FormField:
    if not spans:
        return FormField("", -1, -1)
    start, end = spans[0][0], spans[-1][1]
    if start < 0 or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        raise MultipartError("the model field is split in a way that cannot be located")
    try:
        return FormField(body[start:end].decode(), start, end)
    except UnicodeDecodeError as exc:
        raise MultipartError("the model field is not UTF-8") from exc


def replace_field(body: bytes, field: FormField, value: str) -> bytes:
    if field.start < 0:
        raise MultipartError("the field has no value to replace")
    return body[: field.start] + value.encode() + body[field.end :]
