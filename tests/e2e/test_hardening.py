"""The Envoy config's safety properties, end to end with the real Envoy: only requests the ext_proc
decided reach Azure (HTTP/2 with trailers included), paths are normalised before routing, client
credentials and cookies never go upstream, Envoy's own errors leak nothing internal, and a dead or
hung ext_proc worker stops getting requests."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import (
    ExternalProcessorServicer,
    add_ExternalProcessorServicer_to_server,
)
from grpc_health.v1 import health, health_pb2_grpc

from bench.procs import descendants
from extproc import envoy_config
from extproc.config import load_settings
from extproc.runtime.processes import free_port

from .conftest import SERVER_KEY, EmulatorThread, Gateway, start_gateway, stop_gateway, write_config

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hardening"}]}
CHAT_BYTES = orjson.dumps(CHAT)
CLIENT_SECRET = "client-secret"


def openai_error(status: int, headers: dict[str, str], body: bytes) -> dict:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body)
    parsed = orjson.loads(body)
    assert set(parsed) == {"error"}, parsed
    assert set(parsed["error"]) == {"message", "type", "param", "code"}, parsed
    return parsed["error"]


# --- HTTP/2 by hand (h2), to send what ordinary clients never do: trailers without a body ---------


def h2_request(
    gateway: Gateway,
    headers: list[tuple[str, str]],
    body: bytes | None = None,
    trailers: list[tuple[str, str]] | None = None,
    tls: bool = False,
    method: str = "POST",
) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh HTTP/2 connection: h2c with prior knowledge, or TLS with ALPN h2."""
    url = httpx.URL(gateway.https_url if tls else gateway.http_url)
    sock: socket.socket = socket.create_connection(("127.0.0.1", url.port), timeout=10)
    if tls:
        context = ssl.create_default_context(cafile=str(gateway.ca_file))
        context.set_alpn_protocols(["h2"])
        sock = context.wrap_socket(sock, server_hostname="localhost")
        assert sock.selected_alpn_protocol() == "h2"
    scheme = "https" if tls else "http"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    request_headers = [(":method", method), (":scheme", scheme), (":authority", "localhost"), *headers]
    conn.send_headers(stream, request_headers, end_stream=body is None and trailers is None)
    if body is not None:
        conn.send_data(stream, body, end_stream=trailers is None)
    if trailers is not None:
        conn.send_headers(stream, trailers, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, response_headers, data = 0, {}, b""
    with sock:
        while True:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the response ended"
            ended = False
            for event in conn.receive_data(chunk):
                if getattr(event, "stream_id", None) != stream:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    response_headers = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                                        for k, v in event.headers}
                    status = int(response_headers[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream reset: {event.error_code!r}")
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
            if ended:
                return status, response_headers, data


def chat_headers(path: str = "/v1/chat/completions", **extra: str) -> list[tuple[str, str]]:
    return [(":path", path), ("content-type", "application/json"), ("authorization", f"Bearer {CLIENT_SECRET}"),
            *extra.items()]


# --- S1: a request the ext_proc did not decide never reaches an upstream ---------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
@pytest.mark.parametrize("cluster", ["azure", "extproc"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_h2_headers_and_trailers_without_body_reach_nothing(gateway: Gateway, azure: EmulatorThread, tls: bool,
                                                            cluster: str, path: str) -> None:
    """HEADERS + trailers and no DATA: no body phase for the ext_proc. With a client-chosen routing
    header this was once forwarded, with the client's credentials, to the cluster the client named."""
    before = len(azure.requests())
    status, headers, body = h2_request(gateway, chat_headers(path, **{"x-aoai-gateway-cluster": cluster}),
                                       trailers=[("x-trailer", "1")], tls=tls)
    assert 400 <= status < 500, (status, body)  # the ext_proc's 400 or the no-route 404
    openai_error(status, headers, body)
    assert len(azure.requests()) == before, azure.requests()[before:]


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_h2_chat_works_with_the_server_key(gateway: Gateway, azure: EmulatorThread, tls: bool) -> None:
    status, _, body = h2_request(gateway, chat_headers(**{"x-aoai-gateway-cluster": "extproc"}), body=CHAT_BYTES, tls=tls)
    assert status == 200, body
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "Echo: hardening"
    last = azure.last()
    assert last.path == "/openai/deployments/prod-chat/chat/completions"
    assert last.headers["api-key"] == SERVER_KEY
    assert "authorization" not in last.headers and "x-aoai-gateway-cluster" not in last.headers


def test_h2_body_with_trailers_still_works(gateway: Gateway, azure: EmulatorThread) -> None:
    """Trailers after a body: the ext_proc answers the buffered body, the trailers do not break it."""
    status, _, body = h2_request(gateway, chat_headers(), body=CHAT_BYTES, trailers=[("x-trailer", "1")])
    assert status == 200, body
    assert azure.last().json == CHAT


class ContinueEverything(ExternalProcessorServicer):
    """An ext_proc that decides nothing: every message gets a bare CONTINUE."""

    def Process(self, request_iterator, context):  # noqa: N802
        for request in request_iterator:
            kind = request.WhichOneof("request")
            answer = pb.TrailersResponse() if kind.endswith("trailers") else (
                pb.BodyResponse() if kind.endswith("body") else pb.HeadersResponse())
            yield pb.ProcessingResponse(**{kind: answer})


@pytest.fixture
def undeciding_gateway(tmp_path: Path, azure: EmulatorThread, upstream_pki) -> Iterator[Gateway]:
    """The shipped Envoy config in front of ContinueEverything: what the config alone lets through."""
    env = {"AZURE_OPENAI_ENDPOINT": azure.url.replace("127.0.0.1", "localhost"), "AZURE_OPENAI_API_KEY": SERVER_KEY,
           "AZURE_OPENAI_CA_FILE": str(upstream_pki.ca_cert)}
    settings = load_settings(write_config(tmp_path), env=env)
    config = envoy_config.prepare(settings)
    (socket_path,) = settings.socket_paths()
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    server = grpc.server(ThreadPoolExecutor(4))
    add_ExternalProcessorServicer_to_server(ContinueEverything(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    log = tmp_path / "envoy.log"
    envoy = subprocess.Popen([envoy_config.envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                              "--log-level", "error"], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    admin = f"http://127.0.0.1:{settings.envoy.admin_port}"
    try:
        wait_until(lambda: _ready(admin), timeout=30)
        yield Gateway(http_url=f"http://127.0.0.1:{settings.listen.http_port}",
                      https_url=f"https://localhost:{settings.listen.https_port}", admin_url=admin,
                      ca_file=settings.state_path / "tls" / "ca.crt", log=log, process=envoy,  # type: ignore[arg-type]
                      state_dir=settings.state_path)
    finally:
        envoy.terminate()
        envoy.wait(10)
        server.stop(0)


def _ready(admin: str) -> bool:
    try:
        return httpx.get(admin + "/ready").status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/chat/completions"),  # body buffered for the ext_proc
    ("GET", "/v1/files"),  # decided from the headers alone
    ("POST", "/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21"),
])
def test_the_envoy_config_alone_forwards_nothing_undecided(undeciding_gateway: Gateway, azure: EmulatorThread,
                                                            method: str, path: str) -> None:
    """Whatever the ext_proc does, only a request it marked can reach Azure: a client's own routing
    header (HTTP/1.1 or HTTP/2, with or without trailers) leads nowhere."""
    before = len(azure.requests())
    for cluster in ("azure", "extproc"):
        headers = {"authorization": f"Bearer {CLIENT_SECRET}", "x-aoai-gateway-cluster": cluster}
        response = httpx.request(method, undeciding_gateway.http_url + path, headers=headers,
                                 json=CHAT if method == "POST" else None)
        assert response.status_code == 404, response.text
        openai_error(response.status_code, dict(response.headers), response.content)
        for trailers in (None, [("x-trailer", "1")]):
            status, h2_headers, body = h2_request(
                undeciding_gateway, [(":path", path), *headers.items()], trailers=trailers,
                body=CHAT_BYTES if method == "POST" and trailers is None else None, method=method)
            assert status == 404, body
            openai_error(status, h2_headers, body)
    assert len(azure.requests()) == before, azure.requests()[before:]


def test_client_routing_header_is_ignored_on_http1(gateway: Gateway, azure: EmulatorThread) -> None:
    response = httpx.post(gateway.http_url + "/v1/chat/completions", json=CHAT,
                          headers={"x-aoai-gateway-cluster": "extproc", "authorization": f"Bearer {CLIENT_SECRET}"})
    assert response.status_code == 200, response.text
    assert "x-aoai-gateway-cluster" not in azure.last().headers


# --- S4: paths are normalised before routing; encoded slashes are refused --------------------------


def raw_request(gateway: Gateway, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """The request target exactly as given (httpx would normalise it first)."""
    conn = http.client.HTTPConnection("127.0.0.1", httpx.URL(gateway.http_url).port, timeout=10)
    try:
        conn.request(method, target, body=body, headers={"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("target", [
    "/v1//chat/completions",
    "/v1/./chat/completions",
    "/v1/chat/../chat/completions",
    "/v1/files/../chat/completions",  # not a headers-only file request once normalised
    "/v1/%2E/chat/completions",
])
def test_dot_segments_and_double_slashes_are_normalised(gateway: Gateway, azure: EmulatorThread, target: str) -> None:
    status, _, body = raw_request(gateway, "POST", target, CHAT_BYTES)
    assert status == 200, body
    assert azure.last().path == "/openai/deployments/prod-chat/chat/completions"


@pytest.mark.parametrize("target", [
    "/v1%2Fchat/completions",
    "/v1/files/x%2F..%2F..%2Fdeployments%2Fprod-chat%2Fchat%2Fcompletions",
    "/openai/deployments/prod-chat%2fchat/completions?api-version=2024-10-21",
    "/v1/chat%5Ccompletions",
])
def test_encoded_slashes_are_refused(gateway: Gateway, azure: EmulatorThread, target: str) -> None:
    before = len(azure.requests())
    status, headers, body = raw_request(gateway, "POST", target, CHAT_BYTES)
    assert status == 400, body
    error = openai_error(status, headers, body)
    assert error["type"] == "invalid_request_error"
    assert len(azure.requests()) == before


def test_headers_only_prefixes_end_at_a_segment(gateway: Gateway, azure: EmulatorThread) -> None:
    """`/v1/filesXYZ` is no file request: the ext_proc's unknown-path 404, nothing forwarded."""
    before = len(azure.requests())
    status, headers, body = raw_request(gateway, "GET", "/v1/filesXYZ")
    assert status == 404
    assert openai_error(status, headers, body)["message"] == "Invalid URL (GET /v1/filesXYZ)"
    assert len(azure.requests()) == before


# --- S5: no client credentials or cookies upstream -------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/chat/completions", CHAT),  # decided from the body
    ("GET", "/v1/files", None),  # decided from the headers
    ("POST", "/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21", CHAT),  # Azure form
])
def test_credentials_and_cookies_are_not_forwarded(gateway: Gateway, azure: EmulatorThread, method: str, path: str,
                                                   body: dict | None) -> None:
    headers = {"authorization": f"Bearer {CLIENT_SECRET}", "proxy-authorization": "Basic cHJveHk6c2VjcmV0",
               "cookie": "session=client-cookie"}
    response = httpx.request(method, gateway.http_url + path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    forwarded = azure.last().headers
    assert forwarded["api-key"] == SERVER_KEY
    assert not {"authorization", "proxy-authorization", "cookie"} & set(forwarded), forwarded
    assert CLIENT_SECRET not in str(forwarded) and "client-cookie" not in str(forwarded)


# --- Envoy's own errors: OpenAI-shaped, nothing internal ------------------------------------------


@pytest.fixture
def dead_upstream_gateway(tmp_path: Path, upstream_pki) -> Iterator[tuple[Gateway, int]]:
    port = free_port()  # nothing listens there
    gateway = start_gateway(tmp_path, f"https://127.0.0.1:{port}", upstream_pki.ca_cert)
    try:
        yield gateway, port
    finally:
        stop_gateway(gateway)


def test_upstream_failure_reveals_nothing_internal(dead_upstream_gateway: tuple[Gateway, int]) -> None:
    gateway, port = dead_upstream_gateway
    response = httpx.post(gateway.http_url + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    error = openai_error(response.status_code, dict(response.headers), response.content)
    assert error["type"] == "server_error"
    text = response.text.lower()
    for internal in ("upstream", "connect", "reset", "azure", "extproc", "localhost", "127.0.0.1", str(port), "envoy"):
        assert internal not in text, (internal, response.text)
    # The details are in the access log for the operator (Envoy flushes it within about a second).
    deadline = time.monotonic() + 5
    while "upstream_reset_before_response_started" not in gateway.log.read_text():
        assert time.monotonic() < deadline, gateway.log.read_text()[-2000:]
        time.sleep(0.1)


def test_envoy_connection_limit_is_configured(gateway: Gateway) -> None:
    """Envoy warns at start when no global downstream connection limit is set."""
    assert "no configured limit to the number of allowed active downstream connections" not in gateway.log.read_text()


# --- R1: a dead or hung ext_proc worker stops getting requests -------------------------------------


def _listening_socket_inodes(path: Path) -> set[str]:
    inodes = set()
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == str(path):
                inodes.add(fields[6])
    return inodes


def worker_pid(gateway: Gateway, socket_path: Path) -> int:
    """The gateway's process that listens on `socket_path`: that worker and no other."""
    inodes = _listening_socket_inodes(socket_path)
    owners = set()
    for pid in descendants(gateway.process.pid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owners.add(pid)
    assert len(owners) == 1, (socket_path, owners)
    return owners.pop()


def host_health(gateway: Gateway, socket_path: Path) -> str:
    clusters = httpx.get(gateway.admin_url + "/clusters").text
    prefix = f"extproc::{socket_path}::health_flags::"
    return next(line[len(prefix):] for line in clusters.splitlines() if line.startswith(prefix))


def wait_until(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def two_workers(tmp_path: Path, azure: EmulatorThread, upstream_pki) -> Iterator[tuple[Gateway, list[Path]]]:
    gateway = start_gateway(tmp_path, azure.url, upstream_pki.ca_cert, extproc="{workers: 2}")
    sockets = sorted((tmp_path / "state" / "run").glob("extproc-*.sock"))
    try:
        assert len(sockets) == 2, sockets
        # Health checks do not hold back the start: both hosts are healthy once Envoy is ready.
        assert [host_health(gateway, s) for s in sockets] == ["healthy", "healthy"]
        yield gateway, sockets
    finally:
        stop_gateway(gateway)


def chat_ok(gateway: Gateway, count: int) -> list[int]:
    with httpx.Client(base_url=gateway.http_url, timeout=10) as client:
        return [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(count)]


def test_killed_worker_is_not_sent_requests(two_workers: tuple[Gateway, list[Path]]) -> None:
    """Until the supervisor has it back (~0.2 s), a dead worker refuses connections: the first
    refusal takes it out (outlier detection), so one request fails, not every other one."""
    gateway, sockets = two_workers
    assert chat_ok(gateway, 4) == [200] * 4
    victim = worker_pid(gateway, sockets[1])
    os.kill(victim, signal.SIGKILL)
    statuses = chat_ok(gateway, 40)  # sent at once, mostly within the restart delay
    assert statuses.count(200) >= 38 and set(statuses) <= {200, 503}, statuses
    def restarted() -> bool:
        try:
            return worker_pid(gateway, sockets[1]) != victim
        except AssertionError:  # nobody listens yet
            return False
    wait_until(restarted, timeout=10)
    wait_until(lambda: host_health(gateway, sockets[1]) == "healthy", timeout=10)
    assert chat_ok(gateway, 20) == [200] * 20


def test_hung_worker_is_taken_out_by_health_checks(two_workers: tuple[Gateway, list[Path]]) -> None:
    """A stopped (hung) worker still accepts connections and its supervisor sees nothing wrong: only
    the health checks find it."""
    gateway, sockets = two_workers
    assert chat_ok(gateway, 4) == [200] * 4
    pid = worker_pid(gateway, sockets[1])
    os.kill(pid, signal.SIGSTOP)
    try:
        # Until then, requests sent to it time out (the ext_proc's message_timeout): that is what
        # the health checks bound.
        wait_until(lambda: "failed_active_hc" in host_health(gateway, sockets[1]), timeout=20)
        assert host_health(gateway, sockets[0]) == "healthy"
        assert chat_ok(gateway, 20) == [200] * 20
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: host_health(gateway, sockets[1]) == "healthy", timeout=15)
    assert chat_ok(gateway, 4) == [200] * 4


@pytest.mark.parametrize(("target", "body"), [
    # Headers-only routes in Envoy's config: the ext_proc's CONTINUE asks for the body all the same.
    ("/v1/responses/input_tokens", b'{"model": "secret-deployment", "input": "x"}'),
    ("/openai/v1/realtime/client_secrets", b'{"session": {"type": "realtime", "model": "secret-deployment"}}'),
    # Ambiguous: which `model` would Azure read?
    ("/v1/chat/completions", b'{"model": "gpt-4o", "Model": "secret-deployment", "messages": []}'),
    ("/openai/v1/chat/completions", b'{"model": "prod-chat", "mod\\u0065l": "secret-deployment"}'),
])
def test_unmapped_deployments_are_refused_wherever_the_body_names_them(gateway: Gateway, azure: EmulatorThread,
                                                                      target: str, body: bytes) -> None:
    before = len(azure.requests())
    status, headers, answer = raw_request(gateway, "POST", target, body)
    assert status in (400, 404), answer
    assert openai_error(status, headers, answer)["param"] == "model"
    assert len(azure.requests()) == before


def test_recovery_after_every_worker_dies_is_under_a_second(two_workers: tuple[Gateway, list[Path]]) -> None:
    """All workers SIGKILLed under load: requests fail (503, nothing forwarded) only until the
    supervisor has them back, well under a second, and then succeed again."""
    gateway, sockets = two_workers
    assert chat_ok(gateway, 4) == [200] * 4
    victims = [worker_pid(gateway, s) for s in sockets]
    results: list[tuple[float, int]] = []
    stop = time.monotonic() + 6

    def load() -> None:
        with httpx.Client(base_url=gateway.http_url, timeout=10) as client:
            while time.monotonic() < stop:
                results.append((time.monotonic(), client.post("/v1/chat/completions", json=CHAT).status_code))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load) for _ in range(4)]
        time.sleep(1)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        for future in futures:
            future.result()
    failed = [t for t, status in results if status != 200]
    assert {status for _, status in results} <= {200, 503}
    assert failed, "the kill was not seen (no request failed)"
    window = max(failed) - min(failed)
    assert window < 1.0, f"requests failed for {window:.2f} s after every worker died"
    print(f"recovery window after every worker died: {window:.3f} s")
    assert results[-1][1] == 200 and [s for t, s in results if t > max(failed)].count(200) > 10


def test_a_killed_supervisor_is_started_again_by_up(two_workers: tuple[Gateway, list[Path]]) -> None:
    """`up` treats its ext_proc supervisor as the supervisor treats a worker: killed, it comes back
    (its workers die with it), Envoy fails closed meanwhile, and `up` keeps running."""
    gateway, sockets = two_workers
    supervisor = next(pid for pid in descendants(gateway.process.pid)
                      if b"extproc\x00serve" in Path(f"/proc/{pid}/cmdline").read_bytes())
    workers = [worker_pid(gateway, s) for s in sockets]
    os.kill(supervisor, signal.SIGKILL)
    def back() -> bool:
        try:
            return all(worker_pid(gateway, s) not in workers for s in sockets)
        except AssertionError:
            return False
    wait_until(back, timeout=15)
    wait_until(lambda: chat_ok(gateway, 1) == [200], timeout=10)
    assert chat_ok(gateway, 10) == [200] * 10
    assert gateway.process.poll() is None
    assert "ext_proc was killed (-9); starting it again" in gateway.log.read_text()
