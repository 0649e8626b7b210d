"""The hostile-input suite's toolkit: a generated case, the ways to send it (HTTP/1.1 as raw bytes or
through httpx, h2c and h2 over TLS through httpx, HTTP/2 by hand for frames no client sends), and the
checks made for every case at the client and at the upstream (the emulator's journal).

A case says what it sends and what must happen (Expect): REFUSED (the gateway answers itself with an
OpenAI-shaped JSON error, a 4xx unless the case names its statuses, and nothing reaches the emulator),
FORWARDED (exactly one request reaches the emulator), NOT_FORWARDED (refused, or the stream or
connection dropped), ANSWERED (the gateway's own non-error answer), AT_MOST_ONCE (smuggling: the first
request only, or refused). Whatever reaches the emulator must carry the server's key as its only
`api-key` and none of the client's credentials in a header, the query or the request line. Every
client secret a case carries starts with SECRET_MARK, so one search of the gateway's log covers them all.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from http.client import HTTPResponse
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import httpx

from extproc.emulator import RecordedRequest
from tests.e2e.conftest import CLIENT_KEY, SERVER_KEY, EmulatorThread, Gateway  # noqa: F401 - re-exported

# Every generated client secret starts with this; base64 of "hxsecret-" is what a Basic credential
# made from one starts with.
SECRET_MARK = "hxsecret"
BASIC_MARK = base64.b64encode(b"hxsecret-").decode()  # aHhzZWNyZXQt
MARKS = (SECRET_MARK, BASIC_MARK, CLIENT_KEY)

# Headers that carry a client credential (or the gateway's routing decision): none may reach Azure.
FORBIDDEN_UPSTREAM_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "x-api-key", "api_key", "x_api_key",
    "ocp-apim-subscription-key", "x-goog-api-key", "x-aoai-gateway-cluster",
})
OPENAI_ERROR_FIELDS = {"message", "type", "param", "code"}
API_VERSION = "2024-10-21"


def new_secret(rng: random.Random) -> str:
    return f"{SECRET_MARK}-{rng.getrandbits(64):016x}"


def basic_credential(secret: str) -> str:
    """`Basic base64(secret:pw)`: starts with BASIC_MARK as the secret starts with SECRET_MARK."""
    return "Basic " + base64.b64encode(f"{secret}:pw".encode()).decode()


# --- a case ----------------------------------------------------------------------------------------


class Expect(Enum):
    REFUSED = "refused"  # the gateway answers (OpenAI-shaped 4xx) and forwards nothing
    FORWARDED = "forwarded"  # exactly one request reaches the emulator
    NOT_FORWARDED = "not forwarded"  # refused, or the connection/stream is dropped: nothing reaches it
    ANSWERED = "answered"  # the gateway answers itself (`statuses`, e.g. /v1/models' 200): nothing reaches it
    AT_MOST_ONCE = "at most once"  # forwarded once (then `upstream` holds) or refused: never twice


@dataclass
class Case:
    label: str  # what the case tries, for the report
    method: str
    target: str  # the request target exactly as sent (path and query)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    expect: Expect = Expect.REFUSED
    statuses: frozenset[int] | None = None  # allowed statuses when refused (None: any 4xx)
    secrets: tuple[str, ...] = ()  # this case's client credentials, beyond the MARKS
    # For FORWARDED: what the emulator must have received (a message when it did not).
    upstream: Callable[[RecordedRequest], str | None] | None = None
    # HTTP/1.1 only: the exact bytes to send instead of building them from the fields above.
    raw: bytes | None = None
    # The client's answer must also satisfy this (a message when it does not).
    answer_check: Callable[["Answer"], str | None] | None = None

    def describe(self) -> str:
        if self.raw is not None:
            shown = self.raw if len(self.raw) <= 600 else self.raw[:600] + b"...(%d bytes)" % len(self.raw)
            return f"[{self.label}] raw {shown!r}"
        body = self.body
        if body is not None and len(body) > 600:
            body = body[:600] + b"...(%d bytes)" % len(self.body or b"")
        return f"[{self.label}] {self.method} {self.target!r} headers={self.headers!r} body={body!r}"


@dataclass
class Answer:
    status: int | None  # None: no HTTP answer (connection closed, stream reset)
    headers: dict[str, str]
    body: bytes
    elapsed: float
    note: str = ""  # why there is no answer


# --- sending -----------------------------------------------------------------------------------


def _port(url: str) -> int:
    return httpx.URL(url).port  # type: ignore[return-value]


def http1_bytes(case: Case, *, close: bool = True) -> bytes:
    """The request as HTTP/1.1 bytes: Host and (for a body) Content-Length added unless the case
    gives them."""
    if case.raw is not None:
        return case.raw
    names = {name.lower() for name, _ in case.headers}
    lines = [f"{case.method} {case.target} HTTP/1.1"]
    if "host" not in names:
        lines.append("Host: localhost")
    lines += [f"{name}: {value}" for name, value in case.headers]
    if case.body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(case.body)}")
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    return head + (case.body or b"")


def read_http1_answer(sock: socket.socket, method: str) -> tuple[int, dict[str, str], bytes]:
    response = HTTPResponse(sock, method=method)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def send_http1_raw(gateway: Gateway, case: Case, timeout: float = 10) -> Answer:
    """One request on a fresh connection, the bytes exactly as the case makes them."""
    started = time.monotonic()
    method = case.method if case.raw is None else case.raw.split(b" ", 1)[0].decode("latin-1")
    try:
        with socket.create_connection(("127.0.0.1", _port(gateway.http_url)), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.sendall(http1_bytes(case))
            except OSError:  # answered (a 413 at the headers) and closed before the whole body went
                pass
            status, headers, body = read_http1_answer(sock, method)
    except (OSError, ValueError) as exc:  # http.client's errors are OSError or ValueError (BadStatusLine...)
        return Answer(None, {}, b"", time.monotonic() - started, f"{type(exc).__name__}: {exc}")
    return Answer(status, headers, body, time.monotonic() - started)


class HttpxSender:
    """A keep-alive httpx client for one protocol: "http1", "h2c" or "h2-tls". The request target is
    sent as given (httpx's `target` extension), not normalised."""

    def __init__(self, gateway: Gateway, protocol: str) -> None:
        self.protocol = protocol
        if protocol == "h2-tls":
            verify: Any = ssl.create_default_context(cafile=str(gateway.ca_file))
            self.base = gateway.https_url
        else:
            verify, self.base = True, gateway.http_url
        http2 = protocol != "http1"
        self.client = httpx.Client(http1=not http2, http2=http2, verify=verify, timeout=15)

    def send(self, case: Case) -> Answer:
        started = time.monotonic()
        headers = [(name.encode("latin-1"), value.encode("utf-8", "surrogateescape")) for name, value in case.headers]
        try:
            response = self.client.request(case.method, self.base + "/", headers=headers, content=case.body,
                                           extensions={"target": case.target.encode("utf-8", "surrogateescape")})
        except httpx.HTTPError as exc:
            return Answer(None, {}, b"", time.monotonic() - started, f"{type(exc).__name__}: {exc}")
        return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content,
                      time.monotonic() - started)

    def close(self) -> None:
        self.client.close()


def h2_exchange(gateway: Gateway, method: str, target: str, headers: Sequence[tuple[str, str]] = (),
                body: bytes | None = None, *, tls: bool = False, trailers: Sequence[tuple[str, str]] | None = None,
                end_stream: bool = True, timeout: float = 10) -> Answer:
    """One HTTP/2 request on a fresh connection, by hand: headers exactly as given (no validation or
    normalisation: uppercase names, connection headers, several content-lengths), an optional body and
    trailers, and `end_stream=False` for a body that stops arriving. A reset stream or a GOAWAY is
    an Answer without a status."""
    started = time.monotonic()
    sock: socket.socket = socket.create_connection(("127.0.0.1", _port(gateway.https_url if tls else gateway.http_url)),
                                                   timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # frames go out at once, not after an ACK
    exchange = None
    try:
        if tls:
            context = ssl.create_default_context(cafile=str(gateway.ca_file))
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(sock, server_hostname="localhost")
        config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                           normalize_outbound_headers=False, validate_inbound_headers=False)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**30})
        conn.increment_flow_control_window(2**30)
        exchange = _H2Exchange(conn, sock, conn.get_next_available_stream_id(), started)
        request_headers = [(":method", method), (":scheme", "https" if tls else "http"), (":authority", "localhost"),
                           (":path", target), *headers]
        only_headers = body is None and trailers is None and end_stream
        conn.send_headers(exchange.stream, [(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in request_headers],
                          end_stream=only_headers)
        sock.sendall(conn.data_to_send())
        if body:
            exchange.send_body(body, end_stream=trailers is None and end_stream)
        elif body is not None and trailers is None and end_stream:
            conn.end_stream(exchange.stream)
        if trailers is not None and exchange.answer is None:
            conn.send_headers(exchange.stream, [(k.encode(), v.encode()) for k, v in trailers], end_stream=True)
        if exchange.answer is None:
            sock.sendall(conn.data_to_send())
        return exchange.read()
    except (OSError, h2.exceptions.ProtocolError) as exc:
        if exchange is not None and exchange.answer is not None:
            return exchange.answer  # answered while the client was still sending
        return Answer(None, {}, b"", time.monotonic() - started, f"{type(exc).__name__}: {exc}")
    finally:
        sock.close()


class _H2Exchange:
    """One stream's answer, gathered from every frame read (while sending the body too)."""

    def __init__(self, conn: h2.connection.H2Connection, sock: socket.socket, stream: int, started: float) -> None:
        self.conn, self.sock, self.stream, self.started = conn, sock, stream, started
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.data = b""
        self.answer: Answer | None = None  # set once the stream is over

    def _end(self, note: str = "") -> None:
        self.answer = Answer(self.status, self.headers, self.data, time.monotonic() - self.started, note)

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            self._end("connection closed")
            return
        for event in self.conn.receive_data(chunk):
            if isinstance(event, h2.events.ConnectionTerminated):
                self._end(f"GOAWAY {event.error_code!r}")
            if self.answer is not None or getattr(event, "stream_id", None) != self.stream:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                self.headers = {_text(k).lower(): _text(v) for k, v in event.headers}
                self.status = int(self.headers[":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.data += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, self.stream)
            elif isinstance(event, h2.events.StreamReset):
                self._end(f"RST_STREAM {event.error_code!r}")
            elif isinstance(event, h2.events.StreamEnded):
                self._end()
        self.sock.sendall(self.conn.data_to_send())

    def send_body(self, body: bytes, *, end_stream: bool) -> None:
        """DATA frames within the peer's frame size and flow-control window (reading its frames
        meanwhile); stops when the stream is answered first (a 413, a reset)."""
        view = memoryview(body)
        while view and self.answer is None:
            window = min(self.conn.local_flow_control_window(self.stream), self.conn.max_outbound_frame_size)
            if window <= 0:
                self._receive()
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(self.stream, bytes(chunk), end_stream=end_stream and not view)
            self.sock.sendall(self.conn.data_to_send())

    def read(self) -> Answer:
        while self.answer is None:
            self._receive()
        return self.answer


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Sender:
    """Send cases over one protocol to one gateway:
    "http1-raw" (exact bytes, fresh connection), "http1", "h2c", "h2-tls" (httpx, kept alive),
    "h2c-raw", "h2-tls-raw" (HTTP/2 by hand, fresh connection)."""

    def __init__(self, gateway: Gateway, protocol: str) -> None:
        self.gateway, self.protocol = gateway, protocol
        self._httpx = HttpxSender(gateway, protocol) if protocol in ("http1", "h2c", "h2-tls") else None

    def send(self, case: Case) -> Answer:
        if self.protocol == "http1-raw":
            return send_http1_raw(self.gateway, case)
        if self._httpx is not None:
            return self._httpx.send(case)
        return h2_exchange(self.gateway, case.method, case.target, case.headers, case.body,
                           tls=self.protocol == "h2-tls-raw")

    def close(self) -> None:
        if self._httpx is not None:
            self._httpx.close()


# --- checking ----------------------------------------------------------------------------------


class Upstream:
    """The emulator's journal, read by position: what arrived since a mark."""

    def __init__(self, azure: EmulatorThread) -> None:
        self.journal = azure.emulator.journal

    def mark(self) -> int:
        return len(self.journal)

    def since(self, mark: int) -> list[RecordedRequest]:
        return list(self.journal[mark:])


def leaked_marks(text: str, secrets: Iterable[str] = ()) -> list[str]:
    return [mark for mark in (*MARKS, *secrets) if mark and mark in text]


def upstream_problems(record: RecordedRequest, secrets: Iterable[str] = ()) -> list[str]:
    """What is wrong with a request that reached the emulator: another api-key than the server's, a
    credential header, a client secret in a header, the query or the request line."""
    problems = []
    if record.headers.get("api-key") != SERVER_KEY:
        problems.append(f"api-key upstream is {record.headers.get('api-key')!r}, not the server key")
    if forbidden := FORBIDDEN_UPSTREAM_HEADERS & set(record.headers):
        problems.append(f"credential headers upstream: {sorted(forbidden)}")
    seen = f"{record.method} {record.path} {record.query!r} {record.headers!r}"
    if leaked := leaked_marks(seen, secrets):
        problems.append(f"client secret upstream ({leaked}): {seen[:500]}")
    return problems


def openai_error_problems(answer: Answer) -> list[str]:
    """What keeps the answer from being one of the gateway's own errors: OpenAI's JSON shape."""
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return [f"content-type {answer.headers.get('content-type')!r}, not application/json"]
    try:
        document = json.loads(answer.body)
    except ValueError:
        return [f"body is not JSON: {answer.body[:200]!r}"]
    if not isinstance(document, dict) or set(document) != {"error"} or not isinstance(document["error"], dict):
        return [f"not {{'error': {{...}}}}: {answer.body[:200]!r}"]
    error = document["error"]
    if set(error) != OPENAI_ERROR_FIELDS:
        return [f"error fields {sorted(error)}: {answer.body[:200]!r}"]
    if not isinstance(error["message"], str) or not isinstance(error["type"], str):
        return [f"message/type not strings: {answer.body[:200]!r}"]
    return []


def check(case: Case, answer: Answer, arrived: list[RecordedRequest]) -> list[str]:
    """Every problem with one case's outcome (empty: it held)."""
    problems: list[str] = []
    for record in arrived:
        problems += upstream_problems(record, case.secrets)
    if answer.status is not None and (leaked := leaked_marks(answer.body.decode("utf-8", "replace"), case.secrets)):
        problems.append(f"the answer echoes a client secret {leaked}")
    if case.expect is Expect.AT_MOST_ONCE:
        if len(arrived) > 1:
            problems.append(f"{len(arrived)} requests reached the emulator for one: " + "; ".join(
                f"{r.method} {r.path} body={r.body[:200]!r}" for r in arrived))
        elif arrived and case.upstream is not None and (problem := case.upstream(arrived[0])):
            problems.append(problem)
        if not arrived and answer.status is not None:
            if not (400 <= answer.status < 500 or answer.status == 501):
                problems.append(f"refused with {answer.status}: {answer.body[:300]!r}")
            problems += openai_error_problems(answer)
    elif case.expect is Expect.FORWARDED:
        if len(arrived) != 1:
            problems.append(f"expected forwarded once, {len(arrived)} reached the emulator "
                            f"(answer {answer.status} {answer.body[:200]!r} {answer.note})")
        elif case.upstream is not None and (problem := case.upstream(arrived[0])):
            problems.append(problem)
        if answer.status is None:
            problems.append(f"no answer: {answer.note}")
    else:
        if arrived:
            problems.append("REACHED THE EMULATOR: " + "; ".join(
                f"{r.method} {r.path} query={r.query} form={r.form} body={r.body[:200]!r}" for r in arrived))
        if answer.status is None:
            if case.expect is not Expect.NOT_FORWARDED:
                problems.append(f"no answer: {answer.note}")
        else:
            allowed = case.statuses
            if (allowed is not None and answer.status not in allowed) or (allowed is None and not 400 <= answer.status < 500):
                problems.append(f"status {answer.status} (wanted {sorted(allowed) if allowed else '4xx'}): {answer.body[:300]!r}")
            if case.method.upper() == "HEAD" or (case.raw or b"").startswith(b"HEAD "):
                if not answer.headers.get("content-type", "").startswith("application/json"):
                    problems.append(f"content-type {answer.headers.get('content-type')!r}")
            elif answer.status >= 400:
                problems += openai_error_problems(answer)
    if case.answer_check is not None and (problem := case.answer_check(answer)):
        problems.append(problem)
    return problems


@dataclass
class Report:
    """The cases of one test run: sent, checked, failures collected (all reported at once)."""

    name: str
    cases: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, case: Case, problems: list[str], protocol: str) -> None:
        self.cases += 1
        if problems:
            self.failures.append(f"{protocol} {case.describe()}\n    -> " + "\n    -> ".join(problems))

    def assert_clean(self) -> None:
        shown = "\n".join(self.failures[:15])
        more = f"\n... and {len(self.failures) - 15} more" if len(self.failures) > 15 else ""
        assert not self.failures, f"{len(self.failures)} of {self.cases} {self.name} cases got through:\n{shown}{more}"


def run_cases(cases: Iterable[Case], sender: Sender, upstream: Upstream, report: Report,
              settle: float = 0.05) -> None:
    """Send every case in turn, checking each against what reached the emulator meanwhile; then, once
    stragglers have had `settle` seconds to arrive, that nothing else arrived."""
    expected_total = 0
    start = upstream.mark()
    for case in cases:
        mark = upstream.mark()
        answer = sender.send(case)
        arrived = upstream.since(mark)
        report.add(case, check(case, answer, arrived), sender.protocol)
        expected_total += len(arrived)
    time.sleep(settle)
    late = upstream.since(start)[expected_total:]
    if late:
        report.failures.append("requests reached the emulator after their case was answered: " + "; ".join(
            f"{r.method} {r.path} {r.query}" for r in late))


def run_in_parallel(cases: Sequence[Case], send: Callable[[Case], Answer], upstream: Upstream, report: Report,
                    protocol: str, settle: float = 0.05) -> None:
    """Cases that each take long (a timeout, a connection Envoy closes after its delay) sent at once:
    none may be forwarded, so nothing may reach the emulator over the whole batch."""
    assert all(case.expect is not Expect.FORWARDED for case in cases)
    start = upstream.mark()
    with ThreadPoolExecutor(max(1, len(cases))) as pool:
        answers = list(pool.map(send, cases))
    time.sleep(settle)
    arrived = upstream.since(start)
    for case, answer in zip(cases, answers):
        report.add(case, check(case, answer, []), protocol)
    if arrived:
        report.failures.append("REACHED THE EMULATOR during the batch: " + "; ".join(
            f"{r.method} {r.path} query={r.query} body={r.body[:200]!r}" for r in arrived))


# --- request bodies ---------------------------------------------------------------------------------


def chat_body(model: Any = "gpt-4o", **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hostile"}], **extra}).encode()


def deployment_of(record: RecordedRequest) -> str | None:
    """The deployment an `/openai/deployments/{d}/...` path names."""
    prefix = "/openai/deployments/"
    return record.path[len(prefix):].partition("/")[0] if record.path.startswith(prefix) else None


def forwarded_to(path: str) -> Callable[[RecordedRequest], str | None]:
    def upstream(record: RecordedRequest) -> str | None:
        return None if record.path == path else f"forwarded to {record.path!r}, not {path!r}"
    return upstream
