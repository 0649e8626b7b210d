"""Class 7: what held before must keep holding.

- Routing-header spoofing: a client's `x-aoai-gateway-cluster` (any case, value, repeated, folded,
  behind a bare CR, with underscores, in HTTP/2 trailers) never turns a refused request into a
  forwarded one, and never reaches Azure on a forwarded one.
- Smuggling: Content-Length and Transfer-Encoding together, duplicate or malformed Content-Length,
  Transfer-Encoding variants, obs-fold, bare CR, chunk-size tricks, trailers, HTTP/1.0, absolute URIs,
  each with a second request hidden behind the first. At most the first request reaches the emulator,
  with exactly its body; the hidden one (a unique path) never does.
- HTTP/2 framing Envoy must refuse (content-length unlike the DATA, connection-specific headers, CR/LF
  in values, uppercase names, a second :path): never forwarded.
- Request trailers carrying credentials are not sent upstream (the emulator's journal cannot show
  trailers, so that one is checked on the wire, against a recording TLS upstream)."""

from __future__ import annotations

import random
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from .conftest import DEFAULT_LIMITS, SERVER_KEY, start_gateway, stop_gateway
from .support import (
    API_VERSION,
    MARKS,
    Case,
    Expect,
    RecordedRequest,
    Report,
    chat_body,
    check,
    h2_exchange,
    new_secret,
    run_cases,
    run_in_parallel,
)

CASE_CLASS = "7 spoofing and smuggling"
SPOOF_CASES_PER_RUN = 60  # per protocol and policy
SMUGGLE_CASES_PER_RUN = 90  # per policy
ROUTE_HEADER = "x-aoai-gateway-cluster"


# --- routing-header spoofing --------------------------------------------------------------------------


def refused_requests(policy: str) -> list[tuple[str, str, bytes | None, int]]:
    """(method, target, body, status): requests the gateway refuses under `policy`."""
    both = [
        ("GET", "/v1/assistants", None, 404),
        ("POST", "/v1/chat/completions", b'{"model": "gpt-4o",', 400),
        ("POST", "/v1/chat/completions", chat_body("../prod-chat"), 404),
        ("TRACE", f"/openai/deployments/prod-chat/chat/completions?api-version={API_VERSION}", None, 405),
        ("PUT", f"/openai/deployments/prod-chat/chat/completions?api-version={API_VERSION}", chat_body("prod-chat"), 405),
        ("POST", "/v1/embeddings", b'{"input": "x"}', 400),
        ("GET", "/v1/filesXYZ", None, 404),
        ("POST", "/v1%2Fchat/completions", chat_body(), 400),
        ("POST", "/v1/chat/completions", chat_body("gpt-4o", Model="prod-chat"), 400),
    ]
    reject = [
        ("POST", "/v1/chat/completions", chat_body("nope-x"), 404),
        ("POST", f"/openai/deployments/secret-dep/chat/completions?api-version={API_VERSION}", chat_body("prod-chat"), 404),
        ("GET", f"/openai/deployments/secret-dep/chat/completions?api-version={API_VERSION}", None, 404),
        ("POST", "/openai/v1/chat/completions", chat_body("secret-dep"), 404),
    ]
    return both + (reject if policy == "reject" else [])


def spoof_headers(rng: random.Random, protocol: str) -> list[tuple[str, str]]:
    variants = [
        [(ROUTE_HEADER, "azure")], [(ROUTE_HEADER, "extproc")], [(ROUTE_HEADER, "Azure")], [(ROUTE_HEADER, "azure ")],
        [(ROUTE_HEADER, "azure"), (ROUTE_HEADER, "azure")], [(ROUTE_HEADER, "azure, azure")],
        [(ROUTE_HEADER, "aoai_gateway_undecided")], [("x_aoai_gateway_cluster", "azure")],
        [(ROUTE_HEADER, "azure"), ("x-envoy-original-path", "/v1/chat/completions")],
    ]
    if protocol == "http1-raw":  # spellings only HTTP/1.1 has
        variants += [
            [("X-AOAI-Gateway-Cluster", "azure")], [("X-Aoai-Gateway-Cluster", "extproc")],
            [("X-Hostile", f"a\r\n {ROUTE_HEADER}: azure")],  # obs-fold: part of X-Hostile's value
            [("X-Hostile", f"a\r{ROUTE_HEADER}: azure")],  # a bare CR: part of X-Hostile's value too
            [(ROUTE_HEADER, "\r\n azure")],
        ]
    return rng.choice(variants)


def no_route_header_upstream(record: RecordedRequest) -> str | None:
    return f"{ROUTE_HEADER} reached the emulator" if ROUTE_HEADER in record.headers else None


def spoof_case(rng: random.Random, policy: str, protocol: str) -> Case:
    secret = new_secret(rng)
    spoof = spoof_headers(rng, protocol)
    auth = [("authorization", f"Bearer {secret}")]
    if rng.random() < 0.12:  # a control: a mapped request goes through, without the client's header
        return Case(f"control with {spoof}", "POST", "/v1/chat/completions",
                    [("content-type", "application/json"), *auth, *spoof], chat_body(), Expect.FORWARDED,
                    secrets=(secret,), upstream=no_route_header_upstream)
    method, target, body, status = rng.choice(refused_requests(policy))
    return Case(f"{spoof} on a refused {method} {target}", method, target,
                [("content-type", "application/json"), *auth, *spoof], body, Expect.REFUSED,
                frozenset({status}), secrets=(secret,))


@pytest.mark.parametrize("protocol", ["http1-raw", "h2c", "h2-tls"])
@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_a_client_routing_header_never_forwards_a_refused_request(gateway_for, sender_for, upstream, report: Report,
                                                                  scale: int, policy: str, protocol: str) -> None:
    rng = random.Random(f"spoof-{policy}-{protocol}")
    sender = sender_for(gateway_for(policy), protocol)
    run_cases([spoof_case(rng, policy, protocol) for _ in range(SPOOF_CASES_PER_RUN * scale)], sender, upstream, report)
    report.assert_clean()


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_a_routing_header_in_http2_trailers_forwards_nothing(gateway_for, upstream, report: Report, policy: str,
                                                             tls: bool) -> None:
    """Trailers come after the ext_proc has decided (or, without a body, instead of one)."""
    gateway = gateway_for(policy)
    protocol = "h2-tls-raw" if tls else "h2c-raw"
    rng = random.Random(f"trailers-{policy}-{tls}")
    for method, target, body, status in refused_requests(policy):
        for trailers in ([(ROUTE_HEADER, "azure")], [(ROUTE_HEADER, "extproc"), ("authorization", "Bearer x")]):
            secret = new_secret(rng)
            case = Case(f"trailers {trailers}", method, target,
                        [("content-type", "application/json"), ("authorization", f"Bearer {secret}"), (ROUTE_HEADER, "azure")],
                        body, Expect.REFUSED, frozenset({status, 400}), secrets=(secret,))
            mark = upstream.mark()
            answer = h2_exchange(gateway, method, target, case.headers, body, tls=tls, trailers=trailers)
            report.add(case, check(case, answer, upstream.since(mark)), protocol)
    report.assert_clean()


# --- HTTP/1.1 smuggling -------------------------------------------------------------------------------


def hidden_request(rng: random.Random, marker: str) -> bytes:
    """A second request behind the first; a path nothing else uses, so its arrival is visible."""
    method, path = rng.choice([
        ("TRACE", f"/openai/deployments/{marker}/chat/completions?api-version={API_VERSION}"),
        ("GET", f"/{marker}/v1/models"),
        ("POST", f"/{marker}/v1/chat/completions"),
        ("PUT", f"/openai/deployments/{marker}/chat/completions"),
    ])
    body = b'{"model": "secret-dep"}' if method == "POST" else b""
    headers = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{ROUTE_HEADER}: azure\r\nContent-Length: {len(body)}\r\n\r\n"
    return headers.encode() + body


def chunked(body: bytes, size_line: bytes | None = None, end: bytes = b"0\r\n\r\n") -> bytes:
    return (size_line if size_line is not None else f"{len(body):x}\r\n".encode()) + body + b"\r\n" + end


def framings(body: bytes, hidden: bytes) -> list[tuple[str, bytes, bytes]]:
    """(name, framing headers, what follows the head): each makes some reader see `hidden` as a
    request of its own, or as part of the first one's body."""
    n, h = len(body), len(hidden)
    plain = chunked(body)
    return [
        ("CL then TE", f"Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n".encode(), plain + hidden),
        ("TE then CL", f"Transfer-Encoding: chunked\r\nContent-Length: {n + 5}\r\n".encode(), plain + hidden),
        ("CL covering the hidden request, TE not", f"Content-Length: {len(plain) + h}\r\nTransfer-Encoding: chunked\r\n".encode(),
         plain + hidden),
        ("two Content-Lengths", f"Content-Length: {n}\r\nContent-Length: {n + h}\r\n".encode(), body + hidden),
        ("two equal Content-Lengths", f"Content-Length: {n}\r\nContent-Length: {n}\r\n".encode(), body + hidden),
        ("Content-Length list", f"Content-Length: {n}, {n + h}\r\n".encode(), body + hidden),
        ("Content-Length +", f"Content-Length: +{n}\r\n".encode(), body + hidden),
        ("Content-Length hex", f"Content-Length: 0x{n:x}\r\n".encode(), body + hidden),
        ("Content-Length negative", b"Content-Length: -1\r\n", body + hidden),
        ("Content-Length overflow", f"Content-Length: {2**64 + n}\r\n".encode(), body + hidden),
        ("Content-Length with space before the colon", f"Content-Length : {n}\r\n".encode(), body + hidden),
        ("Content-Length folded", f"Content-Length: {n}\r\n {h}\r\n".encode(), body + hidden),
        ("TE folded after CL", f"Content-Length: {n}\r\nTransfer-Encoding:\r\n chunked\r\n".encode(), plain + hidden),
        ("TE hidden in a fold", f"X-Hostile: a\r\n Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n".encode(), body + hidden),
        ("TE behind a bare CR", f"X-Hostile: a\rTransfer-Encoding: chunked\r\nContent-Length: {n}\r\n".encode(), body + hidden),
        ("CL behind a bare CR", f"X-Hostile: a\rContent-Length: {n + h}\r\nContent-Length: {n}\r\n".encode(), body + hidden),
        ("TE identity, chunked", b"Transfer-Encoding: identity, chunked\r\n", plain + hidden),
        ("TE chunked, identity", b"Transfer-Encoding: chunked, identity\r\n", plain + hidden),
        ("TE gzip, chunked", b"Transfer-Encoding: gzip, chunked\r\n", plain + hidden),
        ("TE twice", b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n", plain + hidden),
        ("TE xchunked with CL", f"Transfer-Encoding: xchunked\r\nContent-Length: {n}\r\n".encode(), body + hidden),
        ("TE with a vertical tab", f"Transfer-Encoding: \x0bchunked\r\nContent-Length: {n}\r\n".encode(), plain + hidden),
        ("TE with a space before the colon", f"Transfer-Encoding : chunked\r\nContent-Length: {n}\r\n".encode(), plain + hidden),
        ("TE with a tab in the name", f"Transfer-Encoding\t: chunked\r\nContent-Length: {n}\r\n".encode(), plain + hidden),
        ("TE Chunked", b"Transfer-Encoding: Chunked\r\n", plain + hidden),
        ("chunk extension", b"Transfer-Encoding: chunked\r\n", chunked(body, f"{n:x};ext=\"x\"\r\n".encode()) + hidden),
        ("chunk size overflow", b"Transfer-Encoding: chunked\r\n", chunked(body, f"FFFFFFFFFFFFFFFF{n:x}\r\n".encode()) + hidden),
        ("chunk size 0x", b"Transfer-Encoding: chunked\r\n", chunked(body, f"0x{n:x}\r\n".encode()) + hidden),
        ("chunk size with LF only", b"Transfer-Encoding: chunked\r\n", chunked(body, f"{n:x}\n".encode()) + hidden),
        ("chunk shorter than its data", b"Transfer-Encoding: chunked\r\n", chunked(body, f"{n - 3:x}\r\n".encode()) + hidden),
        ("trailers with a routing header", b"Transfer-Encoding: chunked\r\n",
         chunked(body, end=f"0\r\n{ROUTE_HEADER}: azure\r\nContent-Length: 5\r\n\r\n".encode()) + hidden),
        ("trailer Transfer-Encoding", b"Transfer-Encoding: chunked\r\n",
         chunked(body, end=b"0\r\nTransfer-Encoding: chunked\r\n\r\n") + hidden),
        ("pipelined", f"Content-Length: {n}\r\n".encode(), body + hidden),
        ("Expect: 100-continue", f"Content-Length: {n}\r\nExpect: 100-continue\r\n".encode(), body + hidden),
    ]


def request_line(rng: random.Random, target: str) -> str:
    return rng.choice([f"POST {target} HTTP/1.1", f"POST {target} HTTP/1.0", f"POST http://localhost{target} HTTP/1.1"])


def smuggle_case(rng: random.Random) -> Case:
    marker = f"smuggled-{rng.getrandbits(48):012x}"
    secret = new_secret(rng)
    target, upstream_path = rng.choice([
        ("/v1/chat/completions", "/openai/deployments/prod-chat/chat/completions"),
        (f"/openai/deployments/prod-chat/chat/completions?api-version={API_VERSION}",
         "/openai/deployments/prod-chat/chat/completions"),
    ])
    body = chat_body()
    name, framing, rest = rng.choice(framings(body, hidden_request(rng, marker)))
    line = request_line(rng, target) if rng.random() < 0.2 else f"POST {target} HTTP/1.1"
    head = f"{line}\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {secret}\r\n".encode()
    raw = head + framing + b"\r\n" + rest

    def exactly_the_first(record: RecordedRequest) -> str | None:
        # Envoy may frame the first body shorter than sent (a chunk longer than its size line: the rest
        # of that line is dropped), never longer: nothing of the hidden request rides along.
        if record.path != upstream_path or not body.startswith(record.body):
            return f"forwarded {record.method} {record.path} with body {record.body[:300]!r}, not the first request"
        return None

    return Case(f"{name} ({line.split()[-1]}, hidden {marker})", "POST", target, raw=raw, expect=Expect.AT_MOST_ONCE,
                secrets=(secret, marker), upstream=exactly_the_first)


@pytest.mark.parametrize("policy", ["reject", "passthrough"])
def test_a_hidden_second_request_never_reaches_azure(gateway_for, sender_for, upstream, report: Report, scale: int,
                                                     policy: str) -> None:
    rng = random.Random(f"smuggle-{policy}")
    sender = sender_for(gateway_for(policy), "http1-raw")
    run_cases([smuggle_case(rng) for _ in range(SMUGGLE_CASES_PER_RUN * scale)], sender, upstream, report, settle=0.5)
    report.assert_clean()


# --- HTTP/2 framing Envoy must refuse ---------------------------------------------------------------


def h2_malformed(rng: random.Random) -> list[tuple[str, list[tuple[str, str]], bytes]]:
    body = chat_body()
    n = len(body)
    return [
        ("content-length shorter than the DATA", [("content-length", str(n - rng.randint(1, 10)))], body),
        ("content-length longer than the DATA", [("content-length", str(n + rng.randint(1, 10)))], body),
        ("two content-lengths", [("content-length", str(n)), ("content-length", "2")], body),
        ("transfer-encoding", [("transfer-encoding", "chunked")], body),
        ("connection", [("connection", "keep-alive")], body),
        ("te other than trailers", [("te", "gzip")], body),
        ("CR LF in a value", [("x-hostile", f"a\r\n{ROUTE_HEADER}: azure")], body),
        ("LF in a value", [("x-hostile", "a\ntransfer-encoding: chunked")], body),
        ("uppercase name", [("X-AOAI-Gateway-Cluster", "azure")], body),
        ("a second :path", [(":path", "/openai/deployments/secret-dep/chat/completions")], body),
        ("upgrade", [("upgrade", "h2c")], body),
        ("NUL in a value", [("x-hostile", "a\x00b")], body),
    ]


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_malformed_http2_requests_are_never_forwarded(gateway_for, upstream, report: Report, tls: bool) -> None:
    """Reset, dropped or refused; never sent on (Envoy closes some connections after a 1 s delay, so
    these run in parallel)."""
    gateway = gateway_for("reject")
    rng = random.Random(f"h2-malformed-{tls}")
    cases = []
    for name, headers, body in h2_malformed(rng):
        secret = new_secret(rng)
        cases.append(Case(f"HTTP/2 {name}", "POST", "/v1/chat/completions",
                          [("content-type", "application/json"), ("authorization", f"Bearer {secret}"), *headers],
                          body, Expect.NOT_FORWARDED, secrets=(secret,)))
    send = lambda case: h2_exchange(gateway, case.method, case.target, case.headers, case.body, tls=tls)  # noqa: E731
    run_in_parallel(cases, send, upstream, report, "h2-tls-raw" if tls else "h2c-raw")
    report.assert_clean()


# --- request trailers, on the wire ------------------------------------------------------------------


class RecordingUpstream:
    """A TLS HTTP/1.1 server that keeps every byte each request brought and answers `200 {}`."""

    def __init__(self, pki) -> None:  # noqa: ANN001
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(pki.server_cert, pki.server_key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _connection(self, client: socket.socket) -> None:
        try:
            with self.context.wrap_socket(client, server_side=True) as conn:
                conn.settimeout(5)
                data = b""
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                    if self._complete(data):
                        self.requests.append(data)
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                        data = b""
        except (OSError, ssl.SSLError):
            return

    @staticmethod
    def _complete(data: bytes) -> bool:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return False
        lowered = head.lower()
        if b"transfer-encoding: chunked" in lowered:
            return rest.endswith(b"\r\n\r\n") and (rest.startswith(b"0\r\n") or b"\r\n0\r\n" in rest)
        for line in lowered.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                return len(rest) >= int(line.split(b":")[1])
        return True

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def recorded_gateway(tmp_path_factory, upstream_pki) -> Iterator[tuple]:  # noqa: F811
    recorder = RecordingUpstream(upstream_pki)
    gateway = start_gateway(tmp_path_factory.mktemp("hostile-recorded"), f"https://127.0.0.1:{recorder.port}",
                            upstream_pki.ca_cert, limits=DEFAULT_LIMITS)
    yield gateway, recorder
    stop_gateway(gateway)
    recorder.close()
    log = gateway.log.read_text(errors="replace")
    assert not [mark for mark in (*MARKS, SERVER_KEY) if mark in log]


@pytest.mark.parametrize("protocol", ["http1-chunked", "h2c", "h2-tls"])
def test_credentials_in_request_trailers_are_not_sent_upstream(recorded_gateway, protocol: str) -> None:
    gateway, recorder = recorded_gateway
    rng = random.Random(f"trailer-wire-{protocol}")
    for target in ("/v1/chat/completions", f"/openai/deployments/prod-chat/chat/completions?api-version={API_VERSION}",
                   "/v1/files"):
        secret = new_secret(rng)
        trailers = [("authorization", f"Bearer {secret}"), ("api-key", secret), ("cookie", f"s={secret}"),
                    (ROUTE_HEADER, "azure"), ("x-api-key", secret)]
        before = len(recorder.requests)
        body = chat_body()
        if protocol == "http1-chunked":
            host, port = gateway.http_url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(f"POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n".encode() + f"{len(body):x}\r\n".encode() + body
                             + b"\r\n0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in trailers).encode() + b"\r\n")
                status = int(sock.recv(65536).split(b" ", 2)[1])
        else:
            answer = h2_exchange(gateway, "POST", target, [("content-type", "application/json")], body,
                                 tls=protocol == "h2-tls", trailers=trailers)
            status = answer.status
        assert status == 200, (protocol, target, status)
        sent = b"".join(recorder.requests[before:])
        assert len(recorder.requests) == before + 1, sent
        assert secret.encode() not in sent and ROUTE_HEADER.encode() not in sent, sent
        assert f"api-key: {SERVER_KEY}".encode() in sent and body in sent, sent
