"""Class 2: bodies too large a structure to check cheaply (small versions that still trip the
bounds): over 1,000 top-level members (names written plainly or escaped, `"\\u0061"`), over
1,000,000 items, over 200,000 brackets to step over, nesting too deep to parse, over 256 multipart
parts. Each gets a clear 400 quickly and nothing reaches the emulator; bodies just within the bounds
still go through."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from .support import Answer, Case, Expect, Report, new_secret, run_cases

CASE_CLASS = "2 expensive bodies"
# Room for the >1,000,000-item bodies (2 MB), which a 256 KiB limit would stop with a 413 first.
GATEWAY_LIMITS = "{max_request_body_bytes: 4194304, body_idle_timeout_seconds: 1}"
CASES_PER_RUN = 30  # per protocol and policy
PROTOCOLS = ("http1", "h2c", "h2-tls")
QUICK_S = 2.0

MEMBERS, ITEMS, BRACKETS, PARTS = 1000, 1_000_000, 200_000, 256
JSON_ROUTES = {  # path -> the model it names
    "/v1/chat/completions": "gpt-4o", "/v1/embeddings": "text-embedding-3-small", "/v1/completions": "gpt-3.5-turbo-instruct",
    "/v1/responses": "gpt-4o", "/v1/images/generations": "dall-e-3", "/v1/audio/speech": "tts-1",
}
AZURE_JSON_ROUTES = {"/openai/v1/chat/completions": "prod-chat", "/openai/v1/responses": "prod-chat"}
MULTIPART_ROUTES = {"/v1/audio/transcriptions": "whisper-1", "/v1/images/edits": "dall-e-3"}
AZURE_MULTIPART_ROUTES = {"/openai/v1/audio/transcriptions": "prod-whisper"}


def clear_400(*words: str) -> Callable[[Answer], str | None]:
    def check(answer: Answer) -> str | None:
        if answer.elapsed > QUICK_S:
            return f"took {answer.elapsed:.2f} s"
        if answer.status == 400:
            message = json.loads(answer.body)["error"]["message"]
            if not any(word in message for word in words):
                return f"400 without saying why ({words}): {message!r}"
        return None
    return check


STRUCTURE = clear_400("too large a structure")
PARTS_400 = clear_400("too many parts")
PARSE_400 = clear_400("could not parse the JSON")


def escaped(name: str) -> str:
    """A member name with every character escaped: `"\\u0061..."`."""
    return '"' + "".join(f"\\u{ord(c):04x}" for c in name) + '"'


def members_body(rng: random.Random, model: str, count: int) -> bytes:
    """`count` distinct top-level members besides the model, their names plain or escaped."""
    names = [f"k{i}_{rng.getrandbits(16):x}" for i in range(count)]
    written = [escaped(n) if rng.random() < rng.choice((0.0, 0.3, 1.0)) else json.dumps(n) for n in names]
    values = [rng.choice(('0', '"v"', 'null', '[]', '{}', 'true', '1.5e3')) for _ in names]
    members = [f"{w}:{v}" for w, v in zip(written, values)]
    model_member = rng.choice((json.dumps("model"), escaped("model"))) + ":" + json.dumps(model)
    members.insert(rng.randint(0, len(members)), model_member)
    return ("{" + ",".join(members) + "}").encode()


def items_body(rng: random.Random, model: str, count: int) -> tuple[str, bytes]:
    kind = rng.choice(("numbers", "nested arrays", "commas in a string", "token arrays"))
    head = '{"model":' + json.dumps(model) + ',"input":'
    if kind == "numbers":
        inner = "[" + ",".join("0" for _ in range(count + 1)) + "]"
    elif kind == "nested arrays":
        inner = "[" + ",".join("[0,0]" for _ in range(count // 2 + 2)) + "]"  # 2n - 1 commas
    elif kind == "commas in a string":
        inner = '"' + "," * (count + 1) + '"'
    else:
        inner = "[" + ",".join(str(rng.randrange(100)) for _ in range(count + 1)) + "]"
    return kind, (head + inner + "}").encode()


def brackets_body(rng: random.Random, model: str) -> tuple[str, bytes, Callable[[Answer], str | None]]:
    if rng.random() < 0.5:  # many flat brackets, and an escape that makes the model check walk them
        count = BRACKETS + rng.randint(1, 5000)
        filler = ",".join(rng.choice(("[]", "{}")) for _ in range(count))
        body = '{"model":' + json.dumps(model) + ',"x":[' + filler + '],' + escaped("y") + ':1}'
        return "over 200,000 brackets to walk", body.encode(), STRUCTURE
    depth = rng.randint(100_000, 300_000)
    body = '{"model":' + json.dumps(model) + ',"x":' + "[" * depth + "]" * depth + "}"
    return f"nesting {depth} deep", body.encode(), PARSE_400


def parts_body(rng: random.Random, model: str, count: int) -> tuple[str, bytes]:
    boundary = f"hostile{rng.getrandbits(40):x}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n{rng.randrange(10)}\r\n' for i in range(count - 1)]
    parts.insert(rng.randint(0, len(parts)), f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n')
    return f"multipart/form-data; boundary={boundary}", ("".join(parts) + f"--{boundary}--\r\n").encode()


def generate(rng: random.Random, count: int, policy: str) -> list[Case]:
    json_routes = {**JSON_ROUTES, **(AZURE_JSON_ROUTES if policy == "reject" else {})}
    multipart_routes = {**MULTIPART_ROUTES, **(AZURE_MULTIPART_ROUTES if policy == "reject" else {})}
    cases = []
    for i in range(count):
        secret = new_secret(rng)
        headers = [("authorization", f"Bearer {secret}")]
        json_path = rng.choice(list(json_routes))
        model = json_routes[json_path]
        kind = ("members", "members", "parts", "parts", "items", "brackets", "control")[i % 7]
        if kind == "members":
            n = MEMBERS + rng.randint(1, 400)
            body = members_body(rng, model, n)
            cases.append(Case(f"{n + 1} top-level members on {json_path}", "POST", json_path,
                              [("content-type", "application/json"), *headers], body, statuses=frozenset({400}),
                              secrets=(secret,), answer_check=STRUCTURE))
        elif kind == "items":
            label, body = items_body(rng, model, ITEMS + rng.randint(1, 20_000))
            cases.append(Case(f"over 1,000,000 items ({label}) on {json_path}", "POST", json_path,
                              [("content-type", "application/json"), *headers], body, statuses=frozenset({400}),
                              secrets=(secret,), answer_check=STRUCTURE))
        elif kind == "brackets":
            label, body, answer_check = brackets_body(rng, model)
            cases.append(Case(f"{label} on {json_path}", "POST", json_path,
                              [("content-type", "application/json"), *headers], body, statuses=frozenset({400}),
                              secrets=(secret,), answer_check=answer_check))
        elif kind == "parts":
            path = rng.choice(list(multipart_routes))
            n = PARTS + rng.randint(1, 300)
            ctype, body = parts_body(rng, multipart_routes[path], n)
            cases.append(Case(f"{n} multipart parts on {path}", "POST", path, [("content-type", ctype), *headers], body,
                              statuses=frozenset({400}), secrets=(secret,), answer_check=PARTS_400))
        else:  # within every bound: forwarded
            which = rng.choice(("members", "parts"))
            if which == "members":
                path, body = json_path, members_body(rng, model, MEMBERS - 1)
                ctype = "application/json"
            else:
                path = rng.choice(list(multipart_routes))
                ctype, body = parts_body(rng, multipart_routes[path], PARTS)
            cases.append(Case(f"control: {which} at the bound on {path}", "POST", path, [("content-type", ctype), *headers],
                              body, Expect.FORWARDED, secrets=(secret,),
                              answer_check=lambda answer: f"took {answer.elapsed:.2f} s" if answer.elapsed > QUICK_S else None))
    return cases


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_bodies_too_expensive_to_check_get_a_quick_400(gateway_for, sender_for, upstream, report: Report, scale: int,
                                                       policy: str, protocol: str) -> None:
    rng = random.Random(f"expensive-{policy}-{protocol}")
    sender = sender_for(gateway_for(policy), protocol)
    run_cases(generate(rng, CASES_PER_RUN * scale, policy), sender, upstream, report)
    report.assert_clean()


def test_a_body_of_exactly_a_million_items_still_goes_through(gateway_for, sender_for, upstream, report: Report) -> None:
    """The items bound is over 1,000,000: exactly that many is a body the gateway checks and sends."""
    body = ('{"model":"text-embedding-3-small","input":[' + ",".join("1" for _ in range(ITEMS)) + "]}").encode()
    assert body.count(b",") == ITEMS
    case = Case("exactly 1,000,000 items", "POST", "/v1/embeddings", [("content-type", "application/json")], body,
                Expect.FORWARDED)
    run_cases([case], sender_for(gateway_for("reject"), "http1"), upstream, report)
    report.assert_clean()


@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_too_many_brackets_on_a_rewritten_route_says_why(gateway_for, sender_for, upstream, report: Report,
                                                          policy: str) -> None:
    """On a route whose body model the gateway rewrites (/v1/responses; any endpoint set to `api: v1`) the
    walk to the model is bounded too, and says so: a valid body over the 200,000-bracket bound without a
    `\\u` escape (which would trip the bound earlier), e.g.

        POST /v1/responses
        {"model":"gpt-4o","input":[[],[],[], ... 100,001 or more pairs]}

    is a 400 "too large a structure to check". (On 5b222bb it was a 400 "We could
    not parse the JSON body": translator._with_model caught TooManyMembers as InvalidJson.)"""
    rng = random.Random(f"brackets-rewrite-{policy}")
    cases = []
    for pairs in (BRACKETS // 2 + 1, rng.randint(BRACKETS // 2 + 2, BRACKETS * 2)):
        body = ('{"model":"gpt-4o","input":[' + ",".join("[]" for _ in range(pairs)) + "]}").encode()
        cases.append(Case(f"{pairs} [] pairs on /v1/responses", "POST", "/v1/responses",
                          [("content-type", "application/json")], body, statuses=frozenset({400}), answer_check=STRUCTURE))
    run_cases(cases, sender_for(gateway_for(policy), "http1"), upstream, report)
    report.assert_clean()
