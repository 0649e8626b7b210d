"""Class 1: multipart/form-data bodies that two readers could read differently. Each hostile body
shows the gateway a mapped model (`whisper-1`, or the deployment `prod-whisper` on Azure's v1 API)
while another reader (ASP.NET's, RFC 2231 or RFC 2047 aware, one that honours a preamble, a nested
part, a charset or a transfer encoding) could read `secret-dep`, an unmapped deployment. All are
refused (400, or 404 naming the model) and nothing reaches the emulator; what SDKs send still passes.

Routes: /v1/audio/transcriptions (classic surface), /v1/audio/translations (here on Azure's v1 API:
the body's model is rewritten), /v1/images/edits, and under `reject` the Azure-form
/openai/v1/audio/transcriptions and /openai/v1/audio/translations, whose body model is checked."""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable
from urllib.parse import quote

import pytest

from .support import Case, Expect, RecordedRequest, Report, new_secret, run_cases

CASE_CLASS = "1 multipart readings"
GATEWAY_SECTIONS = {"endpoints": "{audio/translations: {api: v1}}"}
CASES_PER_RUN = 70  # per protocol and policy
PROTOCOLS = ("http1", "h2c", "h2-tls")
HIDDEN = "secret-dep"
CRLF = b"\r\n"
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

# path -> (the model the gateway must see, what must reach the emulator: the deployment in the path
# (classic) or the form's model (v1 API))
ROUTES = {
    "/v1/audio/transcriptions": ("whisper-1", "path", "/openai/deployments/prod-whisper/audio/transcriptions"),
    "/v1/audio/translations": ("whisper-1", "form", "/openai/v1/audio/translations"),
    "/v1/images/edits": ("dall-e-3", "path", "/openai/deployments/prod-image/images/edits"),
    "/openai/v1/audio/transcriptions": ("prod-whisper", "form", "/openai/v1/audio/transcriptions"),
    "/openai/v1/audio/translations": ("prod-whisper", "form", "/openai/v1/audio/translations"),
}
AZURE_FORM = ("/openai/v1/audio/transcriptions", "/openai/v1/audio/translations")


# --- building bodies -------------------------------------------------------------------------------


def boundary(rng: random.Random) -> bytes:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?"
    head = rng.choice(("----WebKitFormBoundary", "", "------------------------", "hostile-", "=_Part_"))
    return (head + "".join(rng.choice(alphabet) for _ in range(rng.randint(8, 24)))).encode()


def part(b: bytes, disposition: bytes | str, value: bytes | str, *headers: bytes | str) -> bytes:
    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    lines = [b"--" + b, b"Content-Disposition: " + enc(disposition), *(enc(h) for h in headers)]
    return CRLF.join(lines) + CRLF + CRLF + enc(value) + CRLF


def close(b: bytes) -> bytes:
    return b"--" + b + b"--" + CRLF


def model_part(b: bytes, value: str, *headers: str) -> bytes:
    return part(b, 'form-data; name="model"', value, *headers)


def file_part(b: bytes, rng: random.Random) -> bytes:
    name = rng.choice(("file", "image"))
    return part(b, f'form-data; name="{name}"; filename="a.{rng.choice(("wav", "png"))}"',
                b"RIFF" + rng.randbytes(rng.randint(4, 64)).replace(b"--", b"__") + b"WAVE",
                "Content-Type: application/octet-stream")


def extra_parts(b: bytes, rng: random.Random) -> list[bytes]:
    fields = [("response_format", "json"), ("language", "en"), ("temperature", "0"), ("prompt", "hello"), ("n", "1")]
    return [part(b, f'form-data; name="{k}"', v) for k, v in rng.sample(fields, rng.randint(0, 3))]


def form(b: bytes, rng: random.Random, *model_parts: bytes) -> bytes:
    """A body of the given model parts (in order), a file and some other fields, in shuffled places."""
    others = [file_part(b, rng), *extra_parts(b, rng)]
    rng.shuffle(others)
    at = rng.randint(0, len(others))
    return b"".join(others[:at] + list(model_parts) + others[at:]) + close(b)


def boundary_param(b: bytes) -> str:
    """`boundary=B`, quoted when B has characters a token cannot (RFC 2046 allows `()/:=?,` and space)."""
    text = b.decode()
    return f"boundary={text}" if TOKEN.fullmatch(text) else f'boundary="{text}"'


def content_type(b: bytes, *params: str) -> str:
    return "; ".join(("multipart/form-data", *params, boundary_param(b)))


def either_order(rng: random.Random, first: bytes, second: bytes) -> tuple[bytes, bytes]:
    return (first, second) if rng.random() < 0.5 else (second, first)


# --- hostile families: (label, content type, body) ----------------------------------------------------

Family = Callable[[random.Random, str], tuple[str, str, bytes]]


def two_boundaries(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    """A body framed by A names the visible model; framed by B (inside one of A's parts) the hidden one."""
    a, b = boundary(rng), boundary(rng)
    inner = model_part(b, HIDDEN) + file_part(b, rng) + close(b)
    body = form(a, rng, model_part(a, visible), part(a, 'form-data; name="x"', inner))
    pa, pb = boundary_param(a), boundary_param(b)
    params = rng.choice([
        [pa, pb],
        [pb, "B" + pa[1:]],
        ["BOUNDARY" + pa[8:], pb],
        [pa, "boundary*=UTF-8''" + quote(b.decode())],
        ["boundary*=UTF-8''" + quote(b.decode()), pa],
        ["boundary*0" + pb[8:], pa],
        [pa, "charset=utf-8", pb],
        [f'boundary="{a.decode()}"', f'boundary="{b.decode()}"'],
    ])
    return "two boundary parameters", "multipart/form-data; " + "; ".join(params), body


def name_star(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    """RFC 2231 `name*`: `model` to a reader that decodes it, something else to one that does not."""
    b = boundary(rng)
    disposition = rng.choice([
        "form-data; name=\"x\"; name*=UTF-8''model",
        "form-data; name*=UTF-8''model",
        "form-data; name*=utf-8'en'%6D%6F%64%65%6C",
        "form-data; name=\"x\"; NAME*=UTF-8''model",
        "form-data; name*0=\"mo\"; name*1=\"del\"",
        "form-data; name*0*=UTF-8''mo; name*1=del",
        "form-data; name=\"x\"; name*=UTF-8''%6Dodel",
        "form-data; name*=UTF-8''model; name=\"x\"",
    ])
    body = form(b, rng, *either_order(rng, model_part(b, visible), part(b, disposition, HIDDEN)))
    return f"name*: {disposition}", content_type(b), body


def rfc2047(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    """An RFC 2047 encoded word that ASP.NET decodes to `model`."""
    b = boundary(rng)
    word = rng.choice(["=?utf-8?B?bW9kZWw=?=", "=?UTF-8?b?bW9kZWw=?=", "=?utf-8?Q?model?=", "=?iso-8859-1?q?m=6Fdel?=",
                       "=?utf-8?Q?mod=65l?=", "=?us-ascii?Q?model?=", "=?UTF-8?B?TW9kZWw=?="])
    body = form(b, rng, *either_order(rng, model_part(b, visible), part(b, f'form-data; name="{word}"', HIDDEN)))
    return f"RFC 2047 name {word}", content_type(b), body


NAME_VARIANTS = [
    'form-data; NAME="model"', "form-data; Name=model", "form-data; name=MODEL", 'form-data; name="Model"',
    'form-data; name="model "', 'form-data; name=" model"', 'form-data; name = "model"', 'form-data; name= "model"',
    'form-data; name="mo\\del"', 'form-data; name="model\\"',
    'form-data; name="model"; name="x"', 'form-data; name="x"; name="model"', 'form-data;name="model"',
    'Form-Data; name="model"', 'form-data; name="mod%65l"', 'form-data; name="model"; filename="m.txt"',
    "form-data; name=\"model\"; filename*=UTF-8''m.txt", 'form-data; name="model"; x=1',
    'form-data; name="model"; x="a;name=y"', 'form-data; name="x;name=model"', 'form-data; name=\\"model\\"',
    'form-data; name="model\x00"', 'form-data; name="mo\tdel"', 'form-data; ; name="model"',
    'form-data; name="model";', 'form-data name="model"', 'form-data; name="\xefmodel"', 'attachment; name="model"',
    'form-data; name="model"; name*=UTF-8\'\'model', 'form-data; filename="x"; name="model"',
]


def name_variants(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    """A second model part, named in another case, quoting, escaping or with extra parameters."""
    b = boundary(rng)
    disposition = rng.choice(NAME_VARIANTS)
    body = form(b, rng, *either_order(rng, model_part(b, visible), part(b, disposition.encode("latin-1"), HIDDEN)))
    return f"name variant {disposition!r}", content_type(b), body


def preambles(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    """Text before the first boundary or after the last, boundary-like lines, padding, bare LFs."""
    b = boundary(rng)
    hidden = model_part(b, HIDDEN)
    normal = form(b, rng, model_part(b, visible))
    kind, body = rng.choice([
        ("CRLF preamble", CRLF + normal),
        ("text preamble", b"This is a preamble." + CRLF + normal),
        ("preamble hiding a part", b"x" + hidden + normal),
        ("boundary-like line first", b"--" + b + b"-x" + CRLF + hidden[len(b) + 4:] + normal),
        ("epilogue with a part", normal + hidden + close(b)),
        ("epilogue text", normal + b"epilogue" + CRLF),
        ("padding after a boundary", normal.replace(b"--" + b + CRLF, b"--" + b + b" \t" + CRLF, 1)),
        ("boundary text after the delimiter", normal.replace(b"--" + b + CRLF, b"--" + b + b"junk" + CRLF, 1)),
        ("bare LF lines", normal.replace(CRLF, b"\n")),
        ("no closing boundary", normal[: -len(close(b))]),
        ("boundary inside a value", form(b, rng, model_part(b, visible + "\r\n--" + b.decode() + "x"))),
        ("hidden after a fake close", form(b, rng, model_part(b, visible)).replace(close(b), b"--" + b + b"--x" + CRLF + hidden + close(b))),
    ])
    return kind, content_type(b), body


def nested(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    b, c = boundary(rng), boundary(rng)
    inner = model_part(c, HIDDEN) + close(c)
    outer_name = rng.choice(("model", "file", "x", "image"))
    inner_type = rng.choice(("multipart/mixed", "multipart/form-data", "Multipart/Related", "multipart/alternative"))
    nest = part(b, f'form-data; name="{outer_name}"', inner, f"Content-Type: {inner_type}; {boundary_param(c)}")
    parts = (nest,) if outer_name == "model" else either_order(rng, model_part(b, visible), nest)
    return f"nested {inner_type} in {outer_name!r}", content_type(b), form(b, rng, *parts)


def charsets(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    b = boundary(rng)
    choice = rng.randrange(5)
    if choice == 0:
        charset = rng.choice(("utf-16", "UTF-16LE", "iso-2022-jp", "utf-7", "shift_jis", "ebcdic-cp-us", '"utf-16"'))
        return f"body charset {charset}", content_type(b, f"charset={charset}"), form(b, rng, model_part(b, visible))
    if choice == 1:
        charset = rng.choice(("utf-16-le", "utf-7", "iso-8859-7", "cp037", "UTF-32"))
        value = HIDDEN.encode(charset.replace("utf-7", "utf_7")) if charset != "cp037" else HIDDEN.encode("cp037")
        model = part(b, 'form-data; name="model"', value, f"Content-Type: text/plain; charset={charset}")
        return f"model part charset {charset}", content_type(b), form(b, rng, model)
    if choice == 2:
        charset = rng.choice(("utf-16", "iso-8859-7", "UTF-7"))
        charset_part = part(b, 'form-data; name="_charset_"', charset)
        return f"_charset_ {charset}", content_type(b), form(b, rng, *either_order(rng, model_part(b, visible), charset_part))
    if choice == 3:
        kind = rng.choice(("application/octet-stream", "text/html", "text/plain; format=flowed",
                           'text/plain; charset="utf-8"; x=y', "application/json", "text/plain; charset=utf-8; charset=utf-16"))
        return f"model part type {kind}", content_type(b), form(b, rng, model_part(b, visible, f"Content-Type: {kind}"))
    params = rng.choice((["charset=utf-16"], ["charset=utf-8", "charset=utf-16"], ["charset*=UTF-8''utf-16"]))
    return f"content type {params}", "multipart/form-data; " + "; ".join(params) + f"; boundary={b.decode()}", \
        form(b, rng, model_part(b, visible))


def transfer_encodings(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    b = boundary(rng)
    encoding = rng.choice(("base64", "BASE64", " base64", "quoted-printable", "Quoted-Printable", "x-uuencode", "7bit, base64"))
    if "base64" in encoding.lower():
        value = base64.b64encode(HIDDEN.encode()).decode()
    elif "quoted" in encoding.lower():
        value = "".join(f"={ord(c):02X}" for c in HIDDEN)
    else:
        value = HIDDEN
    if rng.random() < 0.5:  # the model part encoded, alone
        parts: tuple[bytes, ...] = (model_part(b, value, f"Content-Transfer-Encoding: {encoding}"),)
    else:  # an encoded part beside the plain model
        other = part(b, 'form-data; name="prompt"', value, f"Content-Transfer-Encoding: {encoding}")
        parts = either_order(rng, model_part(b, visible), other)
    return f"Content-Transfer-Encoding {encoding!r}", content_type(b), form(b, rng, *parts)


def duplicates(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    b = boundary(rng)
    kind, parts = rng.choice([
        ("two model parts", either_order(rng, model_part(b, visible), model_part(b, HIDDEN))),
        ("model and MODEL", either_order(rng, model_part(b, visible), part(b, 'form-data; name="MODEL"', HIDDEN))),
        ("model as a file too", either_order(rng, model_part(b, visible),
                                             part(b, 'form-data; name="model"; filename="m"', HIDDEN))),
        ("model twice, one typed", either_order(rng, model_part(b, visible),
                                                model_part(b, HIDDEN, "Content-Type: text/plain"))),
    ])
    return kind, content_type(b), form(b, rng, *parts)


def part_headers(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    """Part headers a reader could act on, or read differently."""
    b = boundary(rng)
    kind, model = rng.choice([
        ("extra header on the model part", model_part(b, visible, "X-Hostile: 1")),
        ("Content-ID on the model part", model_part(b, visible, "Content-ID: <m>")),
        ("wrong part Content-Length", model_part(b, visible, f"Content-Length: {len(visible) + 3}")),
        ("two Content-Disposition headers", model_part(b, visible, 'Content-Disposition: form-data; name="x"')),
        ("no Content-Disposition", b"--" + b + CRLF + b"Content-Type: text/plain" + CRLF + CRLF + HIDDEN.encode() + CRLF
         + model_part(b, visible)),
        ("BOM in the value", model_part(b, "\ufeff" + visible)),
        ("space after the value", model_part(b, visible + " ")),
        ("bare LF in a part header", b"--" + b + CRLF + b'Content-Disposition: form-data; name="model"\nX: y' + CRLF
         + CRLF + visible.encode() + CRLF),
        ("folded part header", b"--" + b + CRLF + b"Content-Disposition: form-data;" + CRLF + b' name="model"' + CRLF
         + CRLF + visible.encode() + CRLF),
        ("space before the colon", b"--" + b + CRLF + b'Content-Disposition : form-data; name="model"' + CRLF
         + CRLF + visible.encode() + CRLF),
        ("value in another encoding", part(b, 'form-data; name="model"', visible.encode("utf-16"))),
    ])
    return kind, content_type(b), form(b, rng, model)


def bad_boundaries(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    """Boundaries RFC 2046 does not allow, that readers frame differently."""
    b = rng.choice((b"x" * 71, b"abc ", b" abc", b'a"b', b"a\\b", b"", b"\xc3\xa9t\xc3\xa9"))
    body = form(b, rng, model_part(b, visible))
    quoted = b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return f"boundary {b!r}", "multipart/form-data; boundary=" + quoted.decode("utf-8"), body


FAMILIES: tuple[Family, ...] = (two_boundaries, name_star, rfc2047, name_variants, preambles, nested, charsets,
                                transfer_encodings, duplicates, part_headers, bad_boundaries)


# --- what SDKs send: must pass -----------------------------------------------------------------------


def benign(rng: random.Random, visible: str) -> tuple[str, str, bytes]:
    b = boundary(rng)
    kind, ctype, model = rng.choice([
        ("plain", content_type(b), model_part(b, visible)),
        ("quoted boundary", f'multipart/form-data; boundary="{b.decode()}"', model_part(b, visible)),
        # A single-quoted name is the name `'model'` (quotes included) to every reader: another field.
        ("single-quoted name", content_type(b), model_part(b, visible) + part(b, "form-data; name='model'", HIDDEN)),
        ("charset=UTF-8", content_type(b, "charset=UTF-8"), model_part(b, visible)),
        ("type in capitals", "Multipart/Form-Data; " + boundary_param(b), model_part(b, visible)),
        (".NET text part", content_type(b), model_part(b, visible, "Content-Type: text/plain; charset=utf-8")),
        ("unquoted name", content_type(b), part(b, "form-data; name=model", visible)),
        ("8bit", content_type(b), model_part(b, visible, "Content-Transfer-Encoding: 8bit")),
        ("Apache latin-1", content_type(b), model_part(b, visible, "Content-Type: text/plain; charset=ISO-8859-1",
                                                        "Content-Transfer-Encoding: 8bit")),
    ])
    return f"benign {kind}", ctype, form(b, rng, model)


def expect_reading(path: str) -> Callable[[RecordedRequest], str | None]:
    _, where, upstream_path = ROUTES[path]

    def upstream(record: RecordedRequest) -> str | None:
        if record.path != upstream_path:
            return f"forwarded to {record.path!r}, not {upstream_path!r}"
        model = (record.form or {}).get("model")
        expected = "prod-whisper" if where == "form" else ROUTES[path][0]
        if model != expected:
            return f"the emulator read the model {model!r}, not {expected!r}"
        return None

    return upstream


def generate(rng: random.Random, count: int, policy: str) -> list[Case]:
    paths = list(ROUTES) if policy == "reject" else [p for p in ROUTES if p not in AZURE_FORM]
    cases = []
    for i in range(count):
        path = rng.choice(paths)
        visible = ROUTES[path][0]
        secret = new_secret(rng)
        headers = [("authorization", f"Bearer {secret}")]
        if i % 10 == 0:
            label, ctype, body = benign(rng, visible)
            cases.append(Case(f"{label} on {path}", "POST", path, [("content-type", ctype), *headers], body,
                              Expect.FORWARDED, upstream=expect_reading(path), secrets=(secret,)))
            continue
        family = FAMILIES[i % len(FAMILIES)]
        label, ctype, body = family(rng, visible)
        cases.append(Case(f"{family.__name__}: {label} on {path}", "POST", path, [("content-type", ctype), *headers],
                          body, Expect.REFUSED, frozenset({400, 404}), secrets=(secret,)))
    return cases


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_multipart_bodies_read_two_ways_are_refused(gateway_for, sender_for, upstream, report: Report, scale: int,
                                                    policy: str, protocol: str) -> None:
    rng = random.Random(f"multipart-{policy}-{protocol}")
    sender = sender_for(gateway_for(policy), protocol)
    run_cases(generate(rng, CASES_PER_RUN * scale, policy), sender, upstream, report)
    report.assert_clean()
