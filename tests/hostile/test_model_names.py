"""Class 3: model names that are not deployment names (path traversal, encoded or plain slashes and
backslashes, control characters, spaces, non-ASCII, over 64 and over 256 characters, non-strings)
never reach the emulator: 404 model_not_found (400 for what cannot be a name at all), under both
`reject` and `passthrough`. Valid names still go through, to the deployment they name exactly."""

from __future__ import annotations

import json
import random

import pytest

from .support import (
    Answer,
    Case,
    Expect,
    Report,
    basic_credential,
    new_secret,
    run_cases,
)

CASE_CLASS = "3 model names"
CASES_PER_RUN = 70  # per protocol and policy
PROTOCOLS = ("http1", "h2c", "h2-tls")

JSON_ROUTES = ("chat/completions", "completions", "embeddings", "images/generations", "audio/speech", "responses")
MULTIPART_ROUTES = ("audio/transcriptions", "audio/translations", "images/edits")
AZURE_V1_ROUTES = ("chat/completions", "embeddings", "responses")  # under reject the body's model is checked

BASES = ("secret-dep", "prod-chat", "gpt-4o", "x", "whisper-1", "deployments")
TRAVERSAL = ("../", "..", ".", "/..", "/../", "./", "../../openai/deployments/prod-chat/", "..\\", "%2e%2e/", "%2E%2E%2F")
SLASHES = ("/", "%2F", "%2f", "\\", "%5C", "%5c", "%252F", "\u2215", "\uff0f")
CONTROLS = tuple(chr(c) for c in (*range(0x00, 0x20), 0x7F))
SPACES = (" ", "\t", "\u00a0", "\u3000", "\u2028")
NON_ASCII = ("é", "ü", "日本", "🤖", "\u200b", "\u202e", "\uff0e", "а", "ß", "\ufeff", "\u0301")
PUNCTUATION = tuple("?#&;:@+=%*~!$'()\",<>{}|^`[]")


def trick_name(rng: random.Random) -> tuple[str, str]:
    """A model name that names no deployment Azure allows, and what it tries."""
    base = rng.choice(BASES)
    kind = rng.choice(("traversal", "slash", "control", "space", "non-ascii", "punctuation", "dots", "over-64"))
    if kind == "traversal":
        trick = rng.choice(TRAVERSAL)
        name = rng.choice((trick + base, base + trick if trick.startswith("/") else base + "/" + trick, trick))
    elif kind == "slash":
        other = rng.choice(BASES)
        name = base + rng.choice(SLASHES) + other
    elif kind == "control":
        at = rng.randrange(len(base) + 1)
        name = base[:at] + rng.choice(CONTROLS) + base[at:]
    elif kind == "space":
        at = rng.choice((0, len(base), rng.randrange(len(base) + 1)))
        name = base[:at] + rng.choice(SPACES) + base[at:]
    elif kind == "non-ascii":
        at = rng.randrange(len(base) + 1)
        name = base[:at] + rng.choice(NON_ASCII) + base[at:]
    elif kind == "punctuation":
        at = rng.randrange(1, len(base)) if len(base) > 1 else 1
        name = base[:at] + rng.choice(PUNCTUATION) + base[at:]
    elif kind == "dots":
        name = rng.choice((base + ".", "." + base, base + "..", base + "...", "." * rng.randint(1, 4)))
    else:  # valid characters, too long for a deployment name (65-256)
        name = (base + "-") * 50
        name = name[: rng.randint(65, 256)].strip(".")
    return kind, name


def json_text(value: object, rng: random.Random) -> str:
    """`value` as JSON, its strings sometimes written with every character escaped (\\u0061...)."""
    text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
    if isinstance(value, str) and rng.random() < 0.3:
        text = '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else json.dumps(c)[1:-1] for c in value) + '"'
    return text


def model_not_found(answer: Answer) -> str | None:
    if answer.status != 404:
        return None
    error = json.loads(answer.body)["error"]
    return None if error["code"] == "model_not_found" and error["param"] == "model" else f"404 without model_not_found: {error}"


def multipart(model_field: bytes, rng: random.Random) -> tuple[str, bytes]:
    boundary = f"hostile{rng.getrandbits(48):012x}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n").encode() + model_field + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
        f"Content-Type: audio/wav\r\n\r\nRIFF0000WAVE\r\n--{boundary}--\r\n").encode()
    return f"multipart/form-data; boundary={boundary}", body


class _Raw:
    """A model value written as raw JSON text (a lone surrogate escape)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def not_a_name(rng: random.Random) -> tuple[str, object, frozenset[int]]:
    """A model that is no name at all: 400."""
    return rng.choice([
        ("over-256", "a" * rng.randint(257, 2000), frozenset({400})),
        ("number", rng.randint(-10, 10**12), frozenset({400})),
        ("null", None, frozenset({400})),
        ("bool", rng.choice((True, False)), frozenset({400})),
        ("array", ["prod-chat"], frozenset({400})),
        ("object", {"name": "prod-chat"}, frozenset({400})),
        ("empty", "", frozenset({400})),
        ("lone surrogate", _Raw(rng.choice(('"\\ud800"', '"prod\\udfff"', '"\\udc00-chat"'))), frozenset({400})),
    ])


def control_case(rng: random.Random, policy: str, headers: list[tuple[str, str]], secret: str) -> Case:
    route = rng.choice(("chat/completions", "embeddings", "completions"))
    if policy == "reject":
        model, deployment = rng.choice((("gpt-4o", "prod-chat"), ("text-embedding-3-small", "prod-embed")))
    else:
        deployment = rng.choice((f"dep-{rng.getrandbits(32):x}", f"a.b_{rng.randint(0, 99)}", "x" * 64, "-", "A_9"))
        model = deployment
    expected = f"/openai/deployments/{deployment}/{route}"

    def upstream(record) -> str | None:
        return None if record.path == expected else f"control forwarded to {record.path!r}, not {expected!r}"

    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}], "input": "x", "prompt": "x"}).encode()
    return Case(f"control {model!r}", "POST", f"/v1/{route}", [("content-type", "application/json"), *headers], body,
                Expect.FORWARDED, upstream=upstream, secrets=(secret,))


def generate(rng: random.Random, count: int, policy: str) -> list[Case]:
    cases = []
    for _ in range(count):
        secret = new_secret(rng)
        headers = [("authorization", rng.choice((f"Bearer {secret}", basic_credential(secret)))), ("x-api-key", secret)]
        roll = rng.random()
        if roll < 0.1:  # a control: a name that is a deployment name (or a mapped model) goes through
            cases.append(control_case(rng, policy, headers, secret))
            continue
        if roll < 0.25:
            kind, model, statuses = not_a_name(rng)
        else:
            kind, model = trick_name(rng)
            statuses = frozenset({400}) if len(model) > 256 else frozenset({404})
        routes = [("json", r) for r in JSON_ROUTES]
        if isinstance(model, str):  # a form field is text: no numbers, nulls or surrogate escapes there
            routes += [("multipart", r) for r in MULTIPART_ROUTES]
        if policy == "reject" and isinstance(model, str) and model and len(model) <= 256:
            routes += [("azure-v1", r) for r in AZURE_V1_ROUTES]
        form, route = rng.choice(routes)
        if form == "multipart":
            content_type, body = multipart(model.encode(), rng)
            # Control characters and surrounding spaces make the part itself unreadable alike (400).
            statuses = statuses | {400}
            path = f"/v1/{route}"
        else:
            text = json_text(model, rng) if not isinstance(model, _Raw) else model.text
            body = ('{"model": ' + text + ', "messages": [{"role": "user", "content": "x"}], "input": "x", "prompt": "x"}').encode()
            content_type = "application/json"
            path = f"/openai/v1/{route}" if form == "azure-v1" else f"/v1/{route}"
        cases.append(Case(f"{kind} model on {path}", "POST", path,
                          [("content-type", content_type), *headers], body, Expect.REFUSED, statuses,
                          secrets=(secret,), answer_check=model_not_found))
    return cases


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_model_names_that_are_not_deployment_names_never_reach_azure(gateway_for, sender_for, upstream, report: Report,
                                                                     scale: int, policy: str, protocol: str) -> None:
    rng = random.Random(f"model-names-{policy}-{protocol}")
    sender = sender_for(gateway_for(policy), protocol)
    run_cases(generate(rng, CASES_PER_RUN * scale, policy), sender, upstream, report)
    report.assert_clean()
