"""Read a JSON request body as leniently as Python's json, and replace one top-level string in it
without touching any other byte. Pure; used by the translation core.

Why not parse and re-serialize: orjson reads integers beyond 64 bits as floats and refuses 1e400,
lone surrogate escapes and a BOM; a round trip through any parser changes numbers (1.0, 1E+2),
escapes and spacing. Azure must get the client's body with only the deployment name changed.
"""

from __future__ import annotations

import codecs
import json
import re
from json.decoder import scanstring

import orjson

_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_SCALAR = re.compile(rb"[^ \t\n\r,}\]]+")  # a number, true, false, null (NaN, Infinity: stdlib json)
# BOM -> codec, as json.loads(bytes) detects them; UTF-32-LE's BOM starts with UTF-16-LE's, so first.
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


class InvalidJson(ValueError):
    """The body is not JSON that Python's own json module reads either."""


class DuplicateMember(InvalidJson):
    """A top-level member is given more than once (errors.DUPLICATE_MODEL says why that matters)."""


class TooManyMembers(InvalidJson):
    """More top-level members (or brackets to step over) than any API request has: refused before
    the walk costs much."""


# OpenAI's request bodies have a few dozen top-level members and far fewer brackets than this: the
# bounds on what walking one may cost (~0.1 s at most), whatever its shape.
MAX_TOP_LEVEL_MEMBERS = 1000
MAX_WALK_STEPS = 200_000
# Items (numbers, strings, members) a body may have, counted by its commas before any parser builds
# them: materialising millions of tiny values costs a worker a second. OpenAI's largest bodies
# (embeddings: 300,000 tokens per request as token arrays) stay well below it.
MAX_ITEMS = 1_000_000


def parse_json(body: bytes) -> object:
    """orjson, the fast path; Python's json for what orjson refuses yet is JSON all the same
    (integers beyond 64 bits, lone surrogate escapes, a leading BOM, UTF-16/32, NaN): a body stdlib
    json reads is not the gateway's to refuse. Big integers come back from orjson as floats: fine,
    the core reads only `model`, and rewrites splice the client's bytes (replace_top_level_string).

    Raises TooManyMembers for a body of more than MAX_ITEMS items (a body shorter than that can't be)."""
    if len(body) > MAX_ITEMS and body.count(b",") > MAX_ITEMS:
        raise TooManyMembers(f"over {MAX_ITEMS} items")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)  # bytes: the encoding is detected and a UTF-8 BOM skipped
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidJson(str(exc)) from exc


def kind_of(document: object) -> str:
    """What a JSON value is, for error messages: "an array", "null", ..."""
    return "null" if document is None else _KINDS.get(type(document), "not an object")


def count_top_level(body: bytes, key: str) -> int:
    """How many times the top-level object of the body (one a parser accepted) has member `key`."""
    return len(_spans(body, key)[2])


def names_more_than_once(body: bytes, document: dict[str, object], key: str) -> bool:
    """Whether the top-level object (`document`, parsed from `body`) names member `key` more than
    once, counting names that differ from it only in case (readers that match names
    case-insensitively would see two). `key` is lowercase.

    The walk (count_top_level) runs only when the body could hide a second member: UTF-8 with no
    `\\u` escape shows every member name as written, so one quoted `key` at most means one member.
    """
    if len(document) > MAX_TOP_LEVEL_MEMBERS:
        raise TooManyMembers(f"{len(document)} top-level members")
    plain = b"\x00" not in body and b"\\u" not in body  # (UTF-16 and UTF-32 bodies have NULs; UTF-8 never)
    quoted = b'"' + key.encode() + b'"'
    if plain and body.isascii():
        # Every name as written, ASCII: a case variant of `key` would show in the lowered bytes.
        count = body.count(quoted)
        if count <= 1 and body.lower().count(quoted) == count:
            return False
    if any(name != key and name.lower() == key for name in document):
        return True
    if plain and body.count(quoted) <= 1:
        return False
    return count_top_level(body, key) > 1


def replace_top_level_string(body: bytes, key: str, value: str) -> bytes:
    """The body with the value of its one top-level `key` replaced by the JSON string `value`; every
    other byte as the client sent it (numbers, escapes, spacing, member order, BOM, encoding).

    Raises DuplicateMember when the key is there more than once, InvalidJson when not at all.
    """
    # json.dumps escapes non-ASCII: the new value is the same bytes in UTF-8 and its own text.
    return replace_top_level_json(body, key, json.dumps(value).encode())


def replace_top_level_json(body: bytes, key: str, raw: bytes) -> bytes:
    """replace_top_level_string for any value: `raw` is the new value's JSON text (UTF-8), spliced in as it
    is (the caller's to make valid: a serializer's output). Same bounds, same errors."""
    head, utf8, spans, codec = _spans(body, key)
    if len(spans) != 1:
        raise (DuplicateMember if spans else InvalidJson)(f"{len(spans)} top-level {key!r} members")
    start, end = spans[0]
    spliced = utf8[:start] + raw + utf8[end:]
    if codec == "utf-8":
        return head + spliced
    return head + spliced.decode("utf-8", "surrogatepass").encode(codec, "surrogatepass")


def insert_top_level_string(body: bytes, key: str, value: str) -> bytes:
    """The body (a JSON object without `key`) with `"key": value` added as its first member; every
    other byte as the client sent it."""
    return insert_top_level_json(body, key, json.dumps(value).encode())


def insert_top_level_json(body: bytes, key: str, raw: bytes) -> bytes:
    """insert_top_level_string for any value: `raw` is its JSON text (UTF-8), added as it is."""
    bom, codec = _codec(body)
    text = body[len(bom) :]
    try:
        utf8 = text if codec == "utf-8" else text.decode(codec, "surrogatepass").encode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:  # the parsers accepted it: not expected
        raise InvalidJson(str(exc)) from exc
    at = utf8.find(b"{") + 1  # only whitespace comes before an object's brace
    if at == 0 or utf8[: at - 1].strip(b" \t\r\n"):
        raise InvalidJson("not an object")
    empty = utf8[at:].lstrip(b" \t\r\n").startswith(b"}")
    member = json.dumps(key).encode() + b":" + raw + (b"" if empty else b",")
    spliced = utf8[:at] + member + utf8[at:]
    return bom + (spliced if codec == "utf-8" else spliced.decode("utf-8", "surrogatepass").encode(codec, "surrogatepass"))


def _codec(body: bytes) -> tuple[bytes, str]:
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return bom, codec
    return b"", json.detect_encoding(body)


def _spans(body: bytes, key: str) -> tuple[bytes, bytes, list[tuple[int, int]], str]:
    """(BOM, the text in UTF-8, the spans of `key`'s values in it, the body's codec)."""
    bom, codec = _codec(body)
    utf8 = body[len(bom) :]
    try:
        if codec != "utf-8":  # UTF-16/32 (rare): walk the same text in UTF-8, offsets map back exactly
            utf8 = utf8.decode(codec, "surrogatepass").encode("utf-8", "surrogatepass")
        return bom, utf8, _top_level_spans(utf8, key), codec
    except TooManyMembers:
        raise
    except (ValueError, IndexError, AttributeError) as exc:  # the parsers accepted it: not expected
        raise InvalidJson(str(exc)) from exc


def _skeleton(text: bytes) -> bytes:
    """`text`, same length, with each escaped backslash and escaped quote blanked (every quote left
    delimits a string) and braces made brackets (valid JSON nests them properly, so one pair is
    enough to count depth): bytes.find, at memchr speed, then skips what a regex walks ~50x slower.
    bytes.replace pairs a run of backslashes from its start, as JSON's escape parsing does."""
    if b"\\" in text:
        text = text.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    return text.translate(_BRACES_TO_BRACKETS)


_BRACES_TO_BRACKETS = bytes.maketrans(b"{}", b"[]")


def _container_end(s: bytes, i: int, budget: list[int]) -> int:
    """The end of the array or object starting at s[i] (`s` a skeleton). One step per bracket: whether
    a bracket is inside a string is the parity of the quotes before it (counted by bytes.count), so
    strings without brackets cost no step. `budget` (one count for the whole walk) bounds the steps."""
    find, count = s.find, s.count
    size = len(s)
    depth = 0
    pos = i  # always outside a string here: after a structural bracket or a string's closing quote
    while True:
        budget[0] -= 1
        if budget[0] < 0:
            raise TooManyMembers(f"over {MAX_WALK_STEPS} brackets to step over")
        opening, closing = find(b"[", pos), find(b"]", pos)
        opening = size if opening < 0 else opening
        closing = size if closing < 0 else closing
        bracket = min(opening, closing)
        if bracket == size:
            raise ValueError("unbalanced brackets")
        if count(b'"', pos, bracket) % 2:  # inside a string: go on after its closing quote
            end = find(b'"', bracket + 1)
            if end < 0:
                raise ValueError("unterminated string")
            pos = end + 1
            continue
        depth += 1 if bracket == opening else -1
        if depth == 0:
            return bracket + 1
        pos = bracket + 1


def _value_end(s: bytes, i: int, budget: list[int]) -> int:
    first = s[i : i + 1]
    if first == b'"':
        end = s.find(b'"', i + 1)
        if end < 0:
            raise ValueError("unterminated string")
        return end + 1
    if first == b"[":  # `{` too, in a skeleton
        return _container_end(s, i, budget)
    return _SCALAR.match(s, i).end()  # type: ignore[union-attr]


def _top_level_spans(text: bytes, key: str) -> list[tuple[int, int]]:
    """Where each value of `key` among the top-level object's members lies in `text` (UTF-8 JSON a
    parser accepted), in order. Values are skipped, not parsed; only member names are decoded
    (`"mod\\u0065l"` is `model` to every parser). Nested `model`s never match."""
    spans: list[tuple[int, int]] = []
    members = 0
    budget = [MAX_WALK_STEPS]
    s = _skeleton(text)  # for skipping; names are decoded from `text`, at the same offsets
    i = _WHITESPACE.match(s).end()  # type: ignore[union-attr]
    if text[i : i + 1] != b"{":
        raise ValueError("not an object")
    i = _WHITESPACE.match(s, i + 1).end()  # type: ignore[union-attr]
    if text[i : i + 1] == b"}":
        return spans
    while True:
        members += 1
        if members > MAX_TOP_LEVEL_MEMBERS:  # names repeated with escapes: a small dict, a long walk
            raise TooManyMembers(f"over {MAX_TOP_LEVEL_MEMBERS} top-level members")
        if s[i : i + 1] != b'"':
            raise ValueError("expected a member name")
        end = _value_end(s, i, budget)
        name = scanstring(text[i + 1 : end].decode("utf-8", "surrogatepass"), 0)[0]
        i = _WHITESPACE.match(s, end).end()  # type: ignore[union-attr]
        if s[i : i + 1] != b":":
            raise ValueError("expected ':'")
        start = _WHITESPACE.match(s, i + 1).end()  # type: ignore[union-attr]
        end = _value_end(s, start, budget)
        if name == key:
            spans.append((start, end))
        i = _WHITESPACE.match(s, end).end()  # type: ignore[union-attr]
        if text[i : i + 1] == b"}":
            return spans
        if s[i : i + 1] != b",":
            raise ValueError("expected ',' or '}'")
        i = _WHITESPACE.match(s, i + 1).end()  # type: ignore[union-attr]
