"""The JSON splice: only the top-level member's value changes, whatever surrounds it."""

from __future__ import annotations

import json
import random

import pytest

from extproc.core.jsonbody import (MAX_TOP_LEVEL_MEMBERS, DuplicateMember, InvalidJson, TooManyMembers, count_top_level,
                                   insert_top_level_json, insert_top_level_string, parse_json, replace_top_level_json,
                                   replace_top_level_string)

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


RAW = b'{"include_usage":true,"x":[1,"\xc3\xa9"]}'  # any JSON text, UTF-8


@pytest.mark.parametrize("seed", range(100))
def test_a_raw_value_splices_and_inserts_as_the_parser_reads_it(seed: int) -> None:
    rng = random.Random(seed)
    members = [f'"k{i}" : {random_value(rng)}' for i in range(rng.randint(0, 4))]
    without = ("{ " + " ,\n".join(members) + " }").encode()
    expected = {**json.loads(without), "opts": json.loads(RAW)}
    inserted = insert_top_level_json(without, "opts", RAW)
    assert json.loads(inserted) == expected
    assert inserted == b"{" + b'"opts":' + RAW + (b"," if members else b"") + without[1:]
    members.insert(rng.randint(0, len(members)), '"opts":{"include_usage": false, "m": {"opts": 1}}')
    body = ("{ " + " ,\n".join(members) + " }").encode()
    replaced = replace_top_level_json(body, "opts", RAW)
    assert json.loads(replaced) == expected
    assert replaced == body.replace(b'{"include_usage": false, "m": {"opts": 1}}', RAW)


def test_raw_values_keep_the_bodys_encoding_and_bom() -> None:
    for encoding in ("utf-16", "utf-16-le", "utf-32", "utf-32-be"):
        body = '{"a": "é", "opts": null}'.encode(encoding)
        assert replace_top_level_json(body, "opts", RAW).decode(encoding) == '{"a": "é", "opts": ' + RAW.decode() + "}"
        assert insert_top_level_json('{"a": "é"}'.encode(encoding), "opts", b"1").decode(encoding) == '{"opts":1,"a": "é"}'
    assert insert_top_level_json(b'\xef\xbb\xbf {\n}\n', "opts", b"[]") == b'\xef\xbb\xbf {"opts":[]\n}\n'
    assert insert_top_level_json(b"{}", "o", b"{}") == b'{"o":{}}'


def test_raw_values_keep_the_errors_and_bounds() -> None:
    with pytest.raises(DuplicateMember):
        replace_top_level_json(b'{"opts":{},"x":{"opts":1},"opts":{}}', "opts", b"1")
    with pytest.raises(DuplicateMember):  # the same member however its name is escaped
        replace_top_level_json(b'{"opts":{},"op\\u0074s":{}}', "opts", b"1")
    with pytest.raises(InvalidJson):  # only nested: no top-level member to replace
        replace_top_level_json(b'{"x":{"opts":{}}}', "opts", b"1")
    for not_an_object in (b'[{"a": 1}]', b'"{"', b"1", b"  [ {} ]"):
        with pytest.raises(InvalidJson):
            insert_top_level_json(not_an_object, "opts", b"1")
        with pytest.raises(InvalidJson):
            replace_top_level_json(not_an_object, "opts", b"1")
    many = ("{" + ",".join(f'"k{i}":0' for i in range(MAX_TOP_LEVEL_MEMBERS + 1)) + ',"opts":{}}').encode()
    with pytest.raises(TooManyMembers):
        replace_top_level_json(many, "opts", b"1")
    deep = b'{"a":' + b"[" * 300_000 + b"]" * 300_000 + b',"opts":{}}'
    with pytest.raises(TooManyMembers):
        replace_top_level_json(deep, "opts", b"1")


def test_the_string_variants_are_the_raw_ones_with_a_json_string() -> None:
    assert insert_top_level_string(b'{"a":1}', "model", 'd"é') == insert_top_level_json(b'{"a":1}', "model", b'"d\\"\\u00e9"')
    assert replace_top_level_string(b'{"model":"m"}', "model", "d") == replace_top_level_json(b'{"model":"m"}', "model", b'"d"')
