"""Hostile input that Envoy's side of the gateway answers: the body limit on every protocol, a body
that stops arriving, credentials in headers a client should not use, Envoy's own errors' labels, and
what a slow reader can make Envoy hold. Checked at the emulator: nothing refused arrives there."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from http.client import HTTPResponse
from pathlib import Path

import httpx
import orjson
import pytest

from .conftest import CLIENT_KEY, SERVER_KEY, EmulatorThread, Gateway, start_gateway, stop_gateway

LIMIT = 17 * 1024 * 1024  # above Envoy's HTTP/2 default buffering (16 MiB) and its own 1 MiB buffers
BODY_IDLE_S = 1


def chat_of_size(size: int) -> bytes:
    head, tail = b'{"model":"gpt-4o","messages":[{"role":"user","content":"', b'"}]}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


@pytest.fixture(scope="module")
def hostile_gateway(tmp_path_factory: pytest.TempPathFactory, azure: EmulatorThread, upstream_pki) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("hostile"), azure.url, upstream_pki.ca_cert,
                            limits=f"{{max_request_body_bytes: {LIMIT}, body_idle_timeout_seconds: {BODY_IDLE_S}}}")
    yield gateway
    stop_gateway(gateway)


def clients(gateway: Gateway) -> list[tuple[str, httpx.Client, str]]:
    return [
        ("http/1.1", httpx.Client(timeout=30), gateway.http_url),
        ("h2c", httpx.Client(http1=False, http2=True, timeout=30), gateway.http_url),
        ("h2/tls", httpx.Client(http1=False, http2=True, timeout=30, verify=ssl.create_default_context(cafile=gateway.ca_file)),
         gateway.https_url),
    ]


def test_the_body_limit_is_one_number_on_every_protocol(hostile_gateway: Gateway, azure: EmulatorThread) -> None:
    for name, client, base in clients(hostile_gateway):
        with client:
            response = client.post(base + "/v1/chat/completions", content=chat_of_size(LIMIT),
                                   headers={"content-type": "application/json"})
            assert response.status_code == 200, (name, response.text[:200])
            assert len(azure.last().body) == LIMIT, name


def raw_http1(gateway: Gateway, request: bytes, read_timeout: float = 10) -> tuple[int, dict[str, str], bytes, float]:
    host, port = gateway.http_url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(request)
        response = HTTPResponse(sock)
        response.begin()
        body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body, time.monotonic() - started


def error_of(body: bytes) -> dict:
    document = orjson.loads(body)
    assert set(document["error"]) == {"message", "type", "param", "code"}
    return document["error"]


def test_a_declared_length_over_the_limit_is_refused_at_once(hostile_gateway: Gateway, azure: EmulatorThread) -> None:
    before = len(azure.requests())
    status, headers, body, took = raw_http1(hostile_gateway, (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: 99999999999\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n{{\"model\"").encode())
    assert status == 413 and error_of(body)["code"] == "request_too_large" and took < 5
    assert len(azure.requests()) == before


def test_a_body_that_stops_arriving_gets_408(hostile_gateway: Gateway, azure: EmulatorThread) -> None:
    before = len(azure.requests())
    status, _, body, took = raw_http1(hostile_gateway, (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Content-Length: 4000\r\n\r\n{\"model\"").encode())
    assert status == 408 and error_of(body)["type"] == "invalid_request_error"
    # Envoy arms its timers from the event loop's cached clock, so one may fire a few ms early (CI saw 0.99991 s).
    assert BODY_IDLE_S - 0.05 <= took < BODY_IDLE_S + 5
    assert len(azure.requests()) == before


def test_once_decided_a_slow_azure_and_slow_streams_are_not_cut(hostile_gateway: Gateway, azure: EmulatorThread) -> None:
    """The short idle timeout is for bodies still arriving, not for Azure's answer."""
    with httpx.Client(timeout=30) as client:
        slow = client.post(hostile_gateway.http_url + "/v1/chat/completions",
                           json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
                           headers={"x-emulator-delay-ms": str(BODY_IDLE_S * 2500)})
        assert slow.status_code == 200, slow.text
        with client.stream("POST", hostile_gateway.http_url + "/v1/chat/completions",
                           json={"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "a b c"}]},
                           headers={"x-emulator-chunk-interval-ms": str(BODY_IDLE_S * 1500)}) as stream:
            assert stream.status_code == 200
            assert b"[DONE]" in b"".join(stream.iter_bytes())
    # A streamed upload may pause longer than that too: it is decided at its headers.
    files = httpx.post(hostile_gateway.http_url + "/v1/files", timeout=30,
                       files={"file": ("a.jsonl", b'{"custom_id": "x"}\n', "application/jsonl")}, data={"purpose": "batch"})
    assert files.status_code == 200, files.text


@pytest.mark.parametrize("header", ["x-api-key", "api_key", "Ocp-Apim-Subscription-Key", "x_api_key", "Api_Key"])
def test_credentials_in_other_headers_never_reach_azure(hostile_gateway: Gateway, azure: EmulatorThread, header: str) -> None:
    secret = f"client-secret-in-{header.lower()}"
    response = httpx.post(hostile_gateway.http_url + "/v1/chat/completions?api-key=q-secret&subscription-key=q2",
                          json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
                          headers={header: secret, "authorization": f"Bearer {CLIENT_KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    seen = azure.last()
    assert seen.headers["api-key"] == SERVER_KEY
    text = repr(seen.headers) + repr(seen.query)
    assert secret not in text and "q-secret" not in text and "q2" not in text and CLIENT_KEY not in text
    log = hostile_gateway.log.read_text()
    assert "q-secret" not in log and secret not in log


def test_a_transfer_encoding_envoy_refuses_is_the_clients_error(hostile_gateway: Gateway, azure: EmulatorThread) -> None:
    before = len(azure.requests())
    status, headers, body, _ = raw_http1(hostile_gateway, (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n").encode())
    assert 400 <= status < 600 and headers["content-type"].startswith("application/json")
    assert error_of(body)["type"] == "invalid_request_error", (status, body)
    assert len(azure.requests()) == before


def upstream_rx_bytes(gateway: Gateway) -> int:
    stats = httpx.get(gateway.admin_url + "/stats?filter=^cluster.azure.upstream_cx_rx_bytes_total$").text
    return int(stats.split(":")[1])


SLOW_READER_BOUND = 8 * 1024 * 1024  # Envoy's 1 MiB buffers plus what the kernel's socket buffers hold


def test_a_slow_reader_holds_the_upstream_back(hostile_gateway: Gateway, azure: EmulatorThread) -> None:
    """A client that stops reading makes Envoy stop reading from Azure once its small buffers are
    full: a slow reader costs Envoy a bounded amount of memory, not the whole response."""
    size = 48 * 1024 * 1024
    uploaded = httpx.post(hostile_gateway.http_url + "/v1/files", timeout=60, data={"purpose": "batch"},
                          files={"file": ("big.jsonl", b"x" * size, "application/jsonl")})
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    before = upstream_rx_bytes(hostile_gateway)
    host, port = hostile_gateway.http_url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect((host, int(port)))
        sock.sendall(f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        got = len(sock.recv(65536))
        time.sleep(2)  # reads nothing more: Envoy must not read the rest from Azure meanwhile
        held = upstream_rx_bytes(hostile_gateway) - before
        print(f"slow reader: read {got} B, Envoy read {held} B from upstream of {size} B")
        assert held < SLOW_READER_BOUND, held
