"""Classes 8 and 9: the request body bounds, on every protocol.

8. `limits.max_request_body_bytes` (1 MiB here, the smallest allowed) is one number everywhere: a body of exactly the limit
   goes through (all of it reaches the emulator), one byte more gets 413 `request_too_large`, over
   HTTP/1.1 with Content-Length or chunked, h2c and h2 over TLS with or without content-length; a
   declared Content-Length over the limit is refused at once, before the body is sent.
9. A body that stops arriving gets 408 after `limits.body_idle_timeout_seconds` (1 s here), whatever
   the protocol and however much of it came; nothing reaches the emulator.

Bodies are checked by the gateway on these routes (buffered): under `reject` the Azure-form POSTs whose
model is read too, in any chunk sizes. Uploads and Azure-form requests decided from their headers stream
instead (not held to the limit, nor cut by the short idle timeout)."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable

import pytest

from .conftest import BODY_IDLE_S, BODY_LIMIT
from .support import (
    Answer,
    Case,
    Expect,
    RecordedRequest,
    Report,
    Sender,
    h2_exchange,
    new_secret,
    run_cases,
    run_in_parallel,
)

CASE_CLASS = "8 body limit"
LIMIT_CASES_PER_RUN = 6  # per transport and policy
IDLE_CASES_PER_RUN = 14  # per policy
TRANSPORTS = ("http1-raw", "http1-chunked", "http1", "h2c", "h2-tls", "h2c-raw", "h2-tls-raw", "h2c-raw-nolength",
              "h2-tls-raw-nolength")
AT_ONCE_S = 0.8  # a declared length over the limit is refused before any body idle timeout could fire


# --- bodies of an exact size ------------------------------------------------------------------------


def padding(rng: random.Random, size: int) -> bytes:
    letters = b"abcdefghijklmnopqrstuvwxyz0123456789 "
    return bytes(rng.choice(letters) for _ in range(min(size, 64))) * (size // 64 + 1)


def routes(policy: str) -> dict[str, tuple[str, Callable[[random.Random, int], tuple[str, bytes]]]]:
    """path -> (the path upstream, make(rng, size) -> (content type, body of exactly `size` bytes))."""
    def json_body(model: str, field: str) -> Callable[[random.Random, int], tuple[str, bytes]]:
        def make(rng: random.Random, size: int) -> tuple[str, bytes]:
            head, tail = f'{{"model":"{model}","{field}":"'.encode(), b'"}'
            return "application/json", head + padding(rng, size)[: size - len(head) - len(tail)] + tail
        return make

    def multipart(rng: random.Random, size: int) -> tuple[str, bytes]:
        b = f"hostile{rng.getrandbits(40):x}"
        head = (f'--{b}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--{b}\r\n'
                f'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n').encode()
        tail = f"\r\n--{b}--\r\n".encode()
        return f"multipart/form-data; boundary={b}", head + padding(rng, size)[: size - len(head) - len(tail)] + tail

    table = {
        "/v1/chat/completions": ("/openai/deployments/prod-chat/chat/completions", json_body("gpt-4o", "user")),
        "/v1/embeddings": ("/openai/deployments/prod-embed/embeddings", json_body("text-embedding-3-small", "input")),
        "/v1/audio/transcriptions": ("/openai/deployments/prod-whisper/audio/transcriptions", multipart),
    }
    if policy == "reject":  # Azure-form bodies are read (and so held to the limit) under reject only
        table["/openai/v1/chat/completions"] = ("/openai/v1/chat/completions", json_body("prod-chat", "user"))
    return table


def chunked_request(path: str, headers: list[tuple[str, str]], body: bytes, rng: random.Random, *,
                    finish: bool = True, chunk: int | None = None) -> bytes:
    """The request with its body in chunks of `chunk` bytes (else random sizes up to 70,000)."""
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    out, at = [head.encode()], 0
    while at < len(body):
        size = chunk or rng.randint(1, 70_000)
        out.append(f"{len(body[at:at + size]):x}\r\n".encode() + body[at:at + size] + b"\r\n")
        at += size
    if finish:
        out.append(b"0\r\n\r\n")
    return b"".join(out)


# --- class 8 -----------------------------------------------------------------------------------------

UNDECLARED = ("http1-chunked", "h2c-raw-nolength", "h2-tls-raw-nolength")  # no length before the body


def too_large(answer: Answer) -> str | None:
    if answer.status == 413 and json.loads(answer.body)["error"]["code"] != "request_too_large":
        return f"413 without code request_too_large: {answer.body[:200]!r}"
    return None


def refused_at_once(answer: Answer) -> str | None:
    return too_large(answer) or (f"took {answer.elapsed:.2f} s" if answer.elapsed > AT_ONCE_S else None)


def all_of_it(path: str, size: int) -> Callable[[RecordedRequest], str | None]:
    def upstream(record: RecordedRequest) -> str | None:
        if record.path != path or record.body_length != size:
            return f"{record.path} got {record.body_length} bytes, not {path} with {size}"
        return None
    return upstream


def sized_case(rng: random.Random, policy: str, transport: str, path: str, size: int, kind: str) -> Case:
    """A request of exactly `size` bytes over `transport`: forwarded whole when within the limit, else 413."""
    upstream_path, make = routes(policy)[path]
    secret = new_secret(rng)
    ctype, body = make(rng, size)
    headers = [("content-type", ctype), ("authorization", f"Bearer {secret}")]
    if transport in ("h2c-raw", "h2-tls-raw"):
        headers.append(("content-length", str(len(body))))
    raw = chunked_request(path, headers, body, rng) if transport == "http1-chunked" else None
    label = f"{kind} ({size} B) on {path} over {transport}"
    if size <= BODY_LIMIT:
        return Case(label, "POST", path, headers, body, Expect.FORWARDED, raw=raw, secrets=(secret,),
                    upstream=all_of_it(upstream_path, size))
    return Case(label, "POST", path, headers, body, Expect.REFUSED, frozenset({413}), raw=raw, secrets=(secret,),
                answer_check=too_large)


def declared_case(rng: random.Random, policy: str, transport: str, path: str) -> Case:
    """A Content-Length over the limit and only the start of the body: 413 before the rest is sent."""
    _, make = routes(policy)[path]
    secret = new_secret(rng)
    ctype, body = make(rng, 4000)
    headers = [("content-type", ctype), ("authorization", f"Bearer {secret}")]
    declared = rng.choice((BODY_LIMIT + 1, BODY_LIMIT * 4, 10**12, 2**53))
    sent = body[: rng.randint(0, 1000)]
    label = f"declared Content-Length {declared}, {len(sent)} B sent, on {path} over {transport}"
    if transport == "http1-raw":
        raw = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {declared}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode() + sent
        return Case(label, "POST", path, headers, raw=raw, statuses=frozenset({413}), secrets=(secret,),
                    answer_check=refused_at_once)
    # HTTP/2 by hand: content-length, part of the DATA, no END_STREAM (LimitSender)
    return Case(label, "POST", path, [*headers, ("content-length", str(declared))], sent, statuses=frozenset({413}),
                secrets=(secret,), answer_check=refused_at_once)


def limit_cases(rng: random.Random, count: int, policy: str, transport: str) -> list[Case]:
    paths = list(routes(policy))
    declares = transport in ("http1-raw", "h2c-raw", "h2-tls-raw")
    kinds = ["limit", "limit+1", "over", "declared"] if declares else ["limit", "limit+1", "over"]
    cases = []
    for i in range(count):
        kind, path = kinds[i % len(kinds)], rng.choice(paths)
        if kind == "declared":
            cases.append(declared_case(rng, policy, transport, path))
            continue
        size = {"limit": BODY_LIMIT, "limit+1": BODY_LIMIT + 1, "over": BODY_LIMIT + rng.randint(2, 300_000)}[kind]
        cases.append(sized_case(rng, policy, transport, path, size, kind))
    return cases


class LimitSender:
    """Sends a class-8 case over its transport (a declared-length case over HTTP/2 leaves the stream open)."""

    def __init__(self, gateway, sender_for, transport: str) -> None:  # noqa: ANN001
        self.gateway, self.transport = gateway, transport
        self.protocol = transport
        base = {"http1-chunked": "http1-raw", "h2c-raw-nolength": "h2c-raw", "h2-tls-raw-nolength": "h2-tls-raw"}
        self.sender: Sender = sender_for(gateway, base.get(transport, transport))

    def send(self, case: Case) -> Answer:
        if "h2" in self.transport and "raw" in self.transport and case.label.startswith("declared"):
            return h2_exchange(self.gateway, case.method, case.target, case.headers, case.body,
                               tls="tls" in self.transport, end_stream=False)
        if self.transport in ("h2c", "h2-tls") and case.expect is Expect.REFUSED:
            # httpx reads the answer only once it has sent the whole body: a body refused early and
            # over Envoy's 1 MiB stream window leaves it waiting for window that never comes (RFC 9113
            # 8.1 lets a server answer early; clients must read it). The same request, as httpx sends
            # it, from a client that reads while it sends:
            return h2_exchange(self.gateway, case.method, case.target,
                               [*case.headers, ("content-length", str(len(case.body or b"")))], case.body,
                               tls=self.transport == "h2-tls")
        return self.sender.send(case)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_the_body_limit_is_the_same_on_every_protocol(gateway_for, sender_for, upstream, report: Report, scale: int,
                                                      policy: str, transport: str) -> None:
    rng = random.Random(f"limit-{policy}-{transport}")
    sender = LimitSender(gateway_for(policy), sender_for, transport)
    run_cases(limit_cases(rng, LIMIT_CASES_PER_RUN * scale, policy, transport), sender, upstream, report)  # type: ignore[arg-type]
    report.assert_clean()


@pytest.mark.parametrize("transport", UNDECLARED)
@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_without_a_declared_length_one_byte_over_the_limit_is_413(gateway_for, sender_for, upstream, report: Report,
                                                                  policy: str, transport: str) -> None:
    """Without a declared length (HTTP/1.1 chunked, HTTP/2 without content-length) one byte over the
    limit is a 413 too, on every route that reads bodies. (A limit under Envoy's own 1 MiB buffers was
    once allowed, and held on HTTP/2 to 1 MiB instead: the schema now refuses it.)"""
    rng = random.Random(f"undeclared-{policy}-{transport}")
    sender = LimitSender(gateway_for(policy), sender_for, transport)
    cases = [sized_case(rng, policy, transport, path, size, "over, undeclared")
             for path in routes(policy) for size in (BODY_LIMIT + 1, BODY_LIMIT + rng.randint(2, 300_000))]
    run_cases(cases, sender, upstream, report)  # type: ignore[arg-type]
    report.assert_clean()


def test_a_chunked_azure_form_body_over_the_limit_is_413(gateway_for, sender_for, upstream, report: Report) -> None:
    """Under `unmapped_models: reject` the gateway reads an Azure-form POST body (/openai/v1/...) to check
    its model. When that request's route streamed bodies and the headers' answer switched it to buffered
    mode, a chunked body over the limit was not refused consistently:

        POST /openai/v1/chat/completions HTTP/1.1
        Host: localhost
        Transfer-Encoding: chunked
        Content-Type: application/json

        <a 1,200,000-byte {"model":"prod-chat",...} body in 7,000-byte chunks>

    was forwarded whole to Azure (it answered); the same body in other chunk sizes, or 3,000,000 bytes,
    got a 413 or, after the 1 s idle timeout, a 408 whose message says "The request headers took too long
    to arrive". An unmapped model in such a body was never forwarded (404 or 413 or 408). The same held
    for the other bodies read under reject on such routes (batches, responses' sub-resources)."""
    rng = random.Random("azure-form-chunked")
    _, make = routes("reject")["/openai/v1/chat/completions"]
    cases = []
    for path, size, chunk in itertools.product(
            ("/openai/v1/chat/completions", "/v1/batches", "/v1/responses/input_tokens"),
            (BODY_LIMIT + 151_424, 3_000_000), (7_000, 65_536, 1_000_000)):
        secret = new_secret(rng)
        ctype, body = make(rng, size)
        headers = [("content-type", ctype), ("authorization", f"Bearer {secret}")]
        cases.append(Case(f"{size} B in {chunk}-byte chunks on {path}", "POST", path, headers, body,
                          Expect.REFUSED, frozenset({413}), secrets=(secret,), answer_check=too_large,
                          raw=chunked_request(path, headers, body, rng, chunk=chunk)))
    run_cases(cases, sender_for(gateway_for("reject"), "http1-raw"), upstream, report)
    report.assert_clean()


def test_an_azure_form_upload_decided_from_its_headers_streams_past_the_limit(gateway_for, sender_for, upstream,
                                                                             report: Report) -> None:
    """Under reject most Azure-form bodies are buffered (above), but a path that names its deployment is
    decided from the path and keeps a streaming route: an audio upload over the limit reaches Azure whole,
    with Content-Length or chunked."""
    rng = random.Random("azure-form-upload")
    path = "/openai/deployments/prod-whisper/audio/transcriptions"
    _, make = routes("reject")["/v1/audio/transcriptions"]
    cases = []
    for size, chunked in ((BODY_LIMIT * 3, False), (BODY_LIMIT * 3 + 7, True)):
        secret = new_secret(rng)
        ctype, body = make(rng, size)
        headers = [("content-type", ctype), ("authorization", f"Bearer {secret}")]
        target = path + "?api-version=2024-10-21"
        cases.append(Case(f"{size} B upload on {path}{' chunked' if chunked else ''}", "POST", target, headers, body,
                          Expect.FORWARDED, secrets=(secret,), upstream=all_of_it(path, size),
                          raw=chunked_request(target, headers, body, rng, chunk=65_536) if chunked else None))
    run_cases(cases, sender_for(gateway_for("reject"), "http1-raw"), upstream, report)
    report.assert_clean()


# --- class 9 -----------------------------------------------------------------------------------------


def timed_out(answer: Answer) -> str | None:
    if answer.status != 408:
        return None
    if not BODY_IDLE_S * 0.9 <= answer.elapsed <= BODY_IDLE_S + 4:
        return f"408 after {answer.elapsed:.2f} s, not about {BODY_IDLE_S} s"
    error = json.loads(answer.body)["error"]
    return None if error["type"] == "invalid_request_error" else f"408 of type {error['type']}"


def idle_cases(rng: random.Random, count: int, policy: str, gateway) -> list[tuple[Case, Callable[[Case], Answer]]]:  # noqa: ANN001
    table = routes(policy)
    cases = []
    for i in range(count):
        path = rng.choice(list(table))
        _, make = table[path]
        secret = new_secret(rng)
        ctype, body = make(rng, rng.randint(200, 20_000))
        sent = body[: rng.randint(0, len(body) - 1)]
        headers = [("content-type", ctype), ("authorization", f"Bearer {secret}")]
        transport = ("http1-cl", "http1-chunked", "h2c", "h2-tls", "h2c-no-length", "h2-tls-no-length")[i % 6]
        label = f"{len(sent)} of {len(body)} B then silence, on {path} over {transport}"
        case = Case(label, "POST", path, headers, sent, Expect.REFUSED, frozenset({408}), secrets=(secret,),
                    answer_check=timed_out)
        if transport == "http1-cl":
            case.raw = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode() + sent
            send = Sender(gateway, "http1-raw").send
        elif transport == "http1-chunked":
            case.raw = chunked_request(path, headers, sent, rng, finish=False)
            send = Sender(gateway, "http1-raw").send
        else:
            tls = transport.startswith("h2-tls")
            if "no-length" not in transport:
                case.headers = [*headers, ("content-length", str(len(body)))]
            send = (lambda c, tls=tls: h2_exchange(gateway, c.method, c.target, c.headers, c.body, tls=tls,  # noqa: E731
                                                   end_stream=False))
        cases.append((case, send))
    return cases


@pytest.mark.case_class("9 body that stops arriving")
@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_a_body_that_stops_arriving_gets_408(gateway_for, upstream, report: Report, scale: int, policy: str) -> None:
    """Each case waits out the idle timeout, so they run in parallel."""
    rng = random.Random(f"idle-{policy}")
    pairs = idle_cases(rng, IDLE_CASES_PER_RUN * scale, policy, gateway_for(policy))
    sends = {id(case): send for case, send in pairs}
    run_in_parallel([case for case, _ in pairs], lambda case: sends[id(case)](case), upstream, report, "mixed")
    report.assert_clean()
