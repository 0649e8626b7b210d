"""Find (and, for Azure's v1 API, replace) the `model` field of a multipart/form-data body.

The body is parsed by python-multipart in one pass; file parts are skipped, not copied.

The model checked must be the model Azure reads, and Azure reads the body with another parser
(ASP.NET Core's MultipartReader and ContentDispositionHeaderValue). So the body is read strictly:
anything two readers could frame, name or decode differently is refused (MultipartError), never
guessed. What HTTP clients send (browsers' FormData, httpx and so the OpenAI Python SDK, curl, Go,
.NET's MultipartFormDataContent and so the OpenAI .NET SDK, Apache HttpClient) passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """The body is not valid multipart/form-data, or not one every reader reads alike."""


class DuplicateFieldError(MultipartError):
    """The wanted field is given more than once: which one counts is up to the reader, so refuse."""


class TooManyParts(MultipartError):
    """More parts than any API request has: the parse stops there, its cost bounded."""


# A transcription has a handful of parts, an image edit up to ~20; each part costs the parser ~25 us.
MAX_PARTS = 256
# RFC 2046 5.1.1; ASP.NET Core refuses longer ones too (FormOptions.MultipartBoundaryLengthLimit).
MAX_BOUNDARY_LENGTH = 70


@dataclass(frozen=True, slots=True)
class FormField:
    value: str
    start: int  # byte offsets of the value inside the body, for an in-place replacement
    end: int


def is_multipart(content_type: str) -> bool:
    """Media types are case-insensitive (RFC 9110 8.3.1): `Multipart/Form-Data` is multipart too."""
    return content_type[:10].lower() == "multipart/"


def _params(header: str | bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """python-multipart's own reading of a header (parameter names lowercased), to check that it
    agrees with the strict reading below."""
    try:
        kind, params = parse_options_header(header)
    except (UnicodeError, ValueError):  # a str header beyond Latin-1: no type Azure reads either
        return b"", {}
    return kind, {key.lower(): value for key, value in params.items()}


# --- headers read strictly ------------------------------------------------------------------------
# `type[/subtype] *( OWS ";" OWS name "=" ( token / quoted-string ) ) OWS`, and nothing else: no
# space around `=` (parsers differ on it), no parameter without a value, no empty or trailing `;`.
# A quoted string is read up to its first `"`: one ending in a backslash is refused, as a reader
# that honours backslash escapes would read on past that quote (RFC 9110 5.6.4) and one that does
# not (browsers send `C:\x` unescaped) would stop there.
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110 5.6.2 tchar: ASCII only
_MEDIA_TYPE = re.compile(rb"[ \t]*(" + _TOKEN + rb"/" + _TOKEN + rb")")
_DISPOSITION_TYPE = re.compile(rb"[ \t]*(" + _TOKEN + rb")")
_PARAMETER = re.compile(rb'[ \t]*;[ \t]*(' + _TOKEN + rb')=(?:(' + _TOKEN + rb')|"([^"]*)")')
_TRAILING_SPACE = re.compile(rb"[ \t]*")
# Control characters (a bare CR or LF among them) in a header value; a tab is whitespace.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# What a reader that splits on every `;` (ignoring quotes) would take for another parameter.
_LOOKS_LIKE_A_PARAMETER = re.compile(rb";[ \t]*" + _TOKEN + rb"[ \t]*=")


def _parameters(header: bytes, kind: re.Pattern[bytes]) -> tuple[bytes, dict[bytes, tuple[bytes, bool]]]:
    """A Content-Type or Content-Disposition value: its type and its parameters (names lowercased,
    as they are case-insensitive: name -> (value unquoted, was quoted)). MultipartError for anything
    outside the grammar above, and for a parameter given twice in any case (`boundary=a; Boundary=b`:
    .NET takes the first, python-multipart the last)."""
    if _CONTROL.search(header):
        raise MultipartError("a header has a control character")
    found = kind.match(header)
    if found is None:
        raise MultipartError("a header has no type")
    params: dict[bytes, tuple[bytes, bool]] = {}
    position = found.end()
    while (param := _PARAMETER.match(header, position)) is not None:
        name, token, quoted = param.groups()
        name = name.lower()
        if name in params:
            raise MultipartError(f"a header gives its {name.decode()!r} parameter twice")
        if quoted is not None and quoted.endswith(b"\\"):
            raise MultipartError("a quoted parameter ends in a backslash escape")
        params[name] = (token, False) if quoted is None else (quoted, True)
        position = param.end()
    if _TRAILING_SPACE.fullmatch(header, position) is None:
        raise MultipartError("a header has a malformed parameter")
    return found.group(1), params


def _valid_boundary(boundary: bytes) -> bool:
    """RFC 2046's length (1-70), no trailing space (transport padding to a reader) nor leading one
    (trimming readers); printable ASCII without `"` or `\\` (readers unescape a quoted boundary
    differently: ASP.NET does not, python-multipart does). RFC 2046 allows fewer characters still
    (no `;`), but no reader needs that to frame alike, and `boundary="a b;c=d"` has always passed."""
    return (
        0 < len(boundary) <= MAX_BOUNDARY_LENGTH
        and boundary.strip(b" ") == boundary
        and all(0x20 <= byte < 0x7F for byte in boundary)
        and b'"' not in boundary
        and b"\\" not in boundary
    )


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a multipart/form-data content type, or None: another type, no boundary, or a
    content type readers could read differently: a parameter twice (two boundaries: the gateway
    would frame the body with one, Azure with the other), an RFC 2231 `name*` parameter, a charset
    other than UTF-8, a boundary RFC 2046 does not allow."""
    try:
        header = content_type.encode("ascii")
        kind, params = _parameters(header, _MEDIA_TYPE)
    except (UnicodeError, MultipartError):
        return None
    if kind.lower() != b"multipart/form-data" or any(b"*" in name for name in params):
        return None
    # RFC 7578 registers no charset for multipart/form-data: field values are UTF-8 unless a part
    # says otherwise. `charset=UTF-8` (some Java clients add it) says what every reader reads anyway;
    # any other could make a reader decode the model differently.
    charset = params.get(b"charset")
    if charset is not None and charset[0].lower() != b"utf-8":
        return None
    boundary = params.get(b"boundary", (b"", False))[0]
    if not _valid_boundary(boundary) or _params(content_type)[1].get(b"boundary") != boundary:
        return None
    return boundary


# --- the framing: where parts begin and end --------------------------------------------------------

_WHITESPACE = re.compile(rb"[ \t\r\n]*")


def _count_parts(body: bytes, boundary: bytes) -> int:
    """The number of parts, once the body is shown to be framed the one way every reader frames it:
    the body starts with the first delimiter (a preamble is refused: ASP.NET skips anything up to
    the first `--boundary`, even mid-line; python-multipart skips blank lines and more), every
    `--boundary` in the body starts a line and is followed by CRLF (a delimiter) or `--` (the close),
    and after the close there is only whitespace. A `--boundary` followed by anything else is a
    delimiter to ASP.NET (it ignores the rest of the line) but part data to python-multipart, so
    parts could hide in a value; one not at a line start would be data to both, but RFC 2046 forbids
    it and a looser reader could split there."""
    delimiter = b"--" + boundary
    if not body.startswith(delimiter):
        raise MultipartError("the body does not start with its boundary")
    position, parts = 0, 0
    while True:
        after = position + len(delimiter)
        if body.startswith(b"--", after):
            if _WHITESPACE.fullmatch(body, after + 2) is None:
                raise MultipartError("the body goes on after its closing boundary")
            return parts
        if not body.startswith(b"\r\n", after):
            raise MultipartError("a boundary line has more than the boundary")
        parts += 1
        if parts > MAX_PARTS:
            raise TooManyParts(f"over {MAX_PARTS} parts")
        position = body.find(delimiter, position + 1)  # from + 1: overlapping ones count too
        if position < 0:
            raise MultipartError("the body has no closing boundary")
        if body[position - 2 : position] != b"\r\n":
            raise MultipartError("the boundary appears inside a part")


# --- the parts ------------------------------------------------------------------------------------

# A field name every reader reads alike: printable ASCII without `"`, `\` (escapes), `%` (percent-
# decoding readers), `;` and `=` (naive splitters; `=?utf-8?B?...?=` is an RFC 2047 encoded word,
# which ASP.NET decodes: `name="=?utf-8?B?bW9kZWw=?="` is `model` to it), no leading or trailing
# space (trimming readers). `_charset_` (RFC 7578 4.6) would change how readers decode the others.
_NAME_BYTES = bytes(sorted(set(range(0x20, 0x7F)) - set(b'"%;=\\')))


def _plain_name(name: bytes) -> bool:
    return bool(name) and name.strip(b" ") == name and not name.translate(None, _NAME_BYTES)


# `filename*` as .NET sends it: `utf-8''` then attr-chars and %-escapes (RFC 5987), unquoted.
_RFC5987_FILENAME = re.compile(rb"utf-8'[A-Za-z0-9-]*'(?:%[0-9A-Fa-f]{2}|[!#$&+.^_`|~0-9A-Za-z-])*", re.IGNORECASE)
# Identity transfer encodings (Apache HttpClient sends them); base64 or quoted-printable could
# encode the model one way for the gateway and another for a reader that decodes them.
_IDENTITY_ENCODINGS = frozenset((b"7bit", b"8bit", b"binary"))
# The model part: its value as text. .NET's MultipartFormDataContent (the OpenAI .NET SDK) sends
# `text/plain; charset=utf-8`, Apache HttpClient `text/plain; charset=ISO-8859-1`: those charsets
# read ASCII alike (the model must then be ASCII); any other would decode the bytes differently.
_MODEL_HEADERS = frozenset((b"content-disposition", b"content-type", b"content-transfer-encoding", b"content-length"))
_TEXT_CHARSETS = frozenset((b"utf-8", b"us-ascii", b"iso-8859-1"))


def _read_part(headers: dict[bytes, bytes], wanted: bytes) -> tuple[bool, bool]:
    """Whether the part is the wanted field, and whether its value must be ASCII; MultipartError for
    a part readers could name, type or decode differently."""
    disposition = headers.get(b"content-disposition")
    if disposition is None:
        raise MultipartError("a part has no Content-Disposition")
    kind, params = _parameters(disposition, _DISPOSITION_TYPE)
    if kind != b"form-data":  # ASP.NET compares it case-sensitively: `Form-Data` is no form field
        raise MultipartError("a part is not form-data")
    if params.keys() - {b"name", b"filename", b"filename*"}:  # `name*=UTF-8''model` among them
        raise MultipartError("a part has a parameter other than name and filename")
    if any(quoted and _LOOKS_LIKE_A_PARAMETER.search(value) for value, quoted in params.values()):
        raise MultipartError("a quoted parameter looks like another parameter")
    name = params.get(b"name", (b"", False))[0]
    if not _plain_name(name):
        raise MultipartError("a part's name could be read differently")
    _, theirs = _params(disposition)
    if theirs.get(b"name") != name or (b"filename" in theirs) != (b"filename" in params):
        raise MultipartError("a part's name could be read differently")
    lowered = name.lower()  # form field names compared case-insensitively, as ASP.NET reads them
    if lowered == b"_charset_":
        raise MultipartError("a _charset_ field could change how the other fields are decoded")
    is_wanted = lowered == wanted
    if is_wanted and (b"filename" in params or b"filename*" in params):
        raise MultipartError(f"the {wanted.decode()!r} field is sent as a file")
    if b"filename*" in params:
        # .NET's MultipartFormDataContent sends `filename=a.wav; filename*=utf-8''a.wav` for files:
        # allowed on a file part (not the model's) in that shape only.
        value, quoted = params[b"filename*"]
        if quoted or b"filename" not in params or not _RFC5987_FILENAME.fullmatch(value):
            raise MultipartError("a part has an RFC 5987 filename* that readers could read differently")
    content_type = headers.get(b"content-type")
    type_params: dict[bytes, tuple[bytes, bool]] = {}
    if content_type is not None:
        media_type, type_params = _parameters(content_type, _MEDIA_TYPE)
        if media_type.lower().startswith(b"multipart/"):
            raise MultipartError("a part is itself multipart")
    encoding = headers.get(b"content-transfer-encoding")
    if encoding is not None and encoding.strip(b" \t").lower() not in _IDENTITY_ENCODINGS:
        raise MultipartError("a part has a Content-Transfer-Encoding")
    if not is_wanted:
        return False, False
    if headers.keys() - _MODEL_HEADERS:
        raise MultipartError(f"the {wanted.decode()!r} part has headers readers could act on")
    if content_type is None:
        return True, False
    charset = type_params.get(b"charset", (b"utf-8", False))[0].lower()
    if media_type.lower() != b"text/plain" or type_params.keys() - {b"charset"} or charset not in _TEXT_CHARSETS:
        raise MultipartError(f"the {wanted.decode()!r} part is not UTF-8 text")
    return True, charset != b"utf-8"


class _FieldFinder:
    """python-multipart callbacks that check every part and remember where the wanted field's value
    lies."""

    def __init__(self, body: bytes, name: str) -> None:
        self.body = body
        self.wanted = name.lower().encode()
        self.found: FormField | None = None
        self.parts = 0
        self.ended = False
        self._new_part()

    def _new_part(self) -> None:
        self.header_name = self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.in_target = False
        self.ascii_only = False
        self.spans: list[tuple[int, int]] = []
        self.size = 0

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise TooManyParts(f"over {MAX_PARTS} parts")
        self._new_part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        name = self.header_name.lower()
        if name in self.headers:  # .NET joins the two values with a comma
            raise MultipartError(f"a part has two {name.decode()} headers")
        if _CONTROL.search(self.header_value):  # a bare LF: ASP.NET reads lines to CRLF only
            raise MultipartError("a part header has a control character")
        self.headers[name] = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        self.in_target, self.ascii_only = _read_part(self.headers, self.wanted)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.in_target:
            # Offsets are into `data`; they are body offsets only when `data` is the body itself.
            self.spans.append((start, end) if data is self.body else (-1, -1))

    def on_part_end(self) -> None:
        length = self.headers.get(b"content-length")
        if length is not None and length.strip(b" \t") != str(self.size).encode():
            raise MultipartError("a part's Content-Length is not its length")  # a reader could trust it
        if self.in_target:
            if self.found is not None:
                raise DuplicateFieldError(f"the {self.wanted.decode()!r} field is given more than once")
            self.found = _field_from_spans(self.body, self.spans)
            _check_value(self.found.value, ascii_only=self.ascii_only)

    def on_end(self) -> None:
        self.ended = True

    def callbacks(self) -> dict[str, object]:
        names = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
                 "on_part_data", "on_part_end", "on_end")
        return {name: getattr(self, name) for name in names}


def _check_value(value: str, *, ascii_only: bool) -> None:
    """A value every reader decodes alike: no byte-order mark (.NET's reader drops it), no control
    characters, no surrounding whitespace (trimming readers), ASCII when the part's charset is not
    UTF-8."""
    if value.startswith("\ufeff") or value != value.strip() or not value.isprintable():
        raise MultipartError("the field's value could be read differently")
    if ascii_only and not value.isascii():
        raise MultipartError("the field's value is not ASCII in a non-UTF-8 part")


def find_field(body: bytes, boundary: bytes, name: str) -> FormField | None:
    """The non-file field called `name`, with its position in `body`; DuplicateFieldError when
    there are several (readers differ on which counts: the gateway must check the one Azure uses),
    MultipartError for a body readers could read differently."""
    parts = _count_parts(body, boundary)
    finder = _FieldFinder(body, name)
    parser = MultipartParser(boundary, callbacks=finder.callbacks())  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except MultipartError:
        raise
    except Exception as exc:  # python-multipart raises several types for malformed input
        raise MultipartError(str(exc)) from exc
    if not finder.ended or finder.parts != parts:  # not expected after _count_parts: never guess
        raise MultipartError("the parts could be split differently")
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
