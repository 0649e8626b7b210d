"""The JSON splice: only the top-level member's value changes, whatever surrounds it."""

from __future__ import annotations

import json
import random

import pytest

from extproc.core.jsonbody import DuplicateMember, InvalidJson, count_top_level, parse_json, replace_top_level_string

TRICKY_STRINGS = ['a\\"b', "\\\\", '\\\\\\"', "]}", "{[", '\\\\\\"],\\"model\\":\\"x', "\\u0022", "é", "\\ud83d\\ude00"]


def random_value(rng: random.Random, depth: int = 0) -> str:
    """Raw JSON text (not via json.dumps, so escapes and spacing vary)."""
    kind = rng.choice(["str", "num", "lit"] + (["arr", "obj"] if depth < 4 else []))
    ws = rng.choice(["", " ", "\n\t"])
    if kind == "str":
        return '"' + rng.choice(TRICKY_STRINGS) + '"'
    if kind == "num":
        return rng.choice(["0", "-1.0", "1E+2", "123456789012345678901234567890", "1e400"])
    if kind == "lit":
        return rng.choice(["true", "false", "null"])
    items = [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "arr":
        return "[" + ws + ("," + ws).join(items) + ws + "]"
    keys = ['"model"', '"m"', '"mod\\u0065l"', '"x]"']
    return "{" + ws + ("," + ws).join(f"{rng.choice(keys)}{ws}:{ws}{v}" for v in items) + ws + "}"


@pytest.mark.parametrize("seed", range(300))
def test_splice_agrees_with_the_parser(seed: int) -> None:
    rng = random.Random(seed)
    members = [f'"k{i}" : {random_value(rng)}' for i in range(rng.randint(0, 4))]
    members.insert(rng.randint(0, len(members)), '"model":"old"')
    body = ("{ " + " ,\n".join(members) + " }").encode()
    expected = json.loads(body)
    new = replace_top_level_string(body, "model", "new\"dep")
    assert json.loads(new) == {**expected, "model": 'new"dep'}
    assert new == body.replace(b'"model":"old"', b'"model":"new\\"dep"')
    assert count_top_level(body, "model") == 1


def test_duplicates_and_absence() -> None:
    with pytest.raises(DuplicateMember):
        replace_top_level_string(b'{"model":"a","x":{"model":1},"model":"b"}', "model", "c")
    with pytest.raises(InvalidJson):
        replace_top_level_string(b'{"x":{"model":"a"}}', "model", "c")
    assert count_top_level(b'{"model":"a","x":{"model":1},"model":"b"}', "model") == 2


def test_parse_json_falls_back_to_stdlib_only_for_valid_json() -> None:
    assert parse_json(b'{"a": 1e400}') == {"a": float("inf")}
    assert parse_json(b"\xef\xbb\xbf[1]") == [1]
    for bad in (b"", b"{", b"[" * 50_000, b'{"a": 0' + b"1" * 5000 + b"}", b"\xff"):
        with pytest.raises(InvalidJson):
            parse_json(bad)
