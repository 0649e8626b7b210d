"""The fallback ext_proc runtime (AOAI_GATEWAY_EXTPROC_RUNTIME=grpcio) behind the real Envoy, so it
keeps working; and, on both runtimes, a request of HTTP/2 headers and trailers with no body."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest
from openai import OpenAI

from .conftest import CLIENT_KEY, SERVER_KEY, EmulatorThread, Gateway, start_gateway, stop_gateway


@pytest.fixture(scope="module")
def grpcio_gateway(tmp_path_factory: pytest.TempPathFactory, azure: EmulatorThread, upstream_pki) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("gw-grpcio"), azure.url, upstream_pki.ca_cert,
                            env={"AOAI_GATEWAY_EXTPROC_RUNTIME": "grpcio"})
    yield gateway
    stop_gateway(gateway)
    assert gateway.process.returncode == 0, gateway.log.read_text()


def test_grpcio_runtime_is_the_one_running(grpcio_gateway: Gateway) -> None:
    assert "ext_proc (grpcio, pid" in grpcio_gateway.log.read_text()


def test_chat_on_the_grpcio_runtime(grpcio_gateway: Gateway, azure: EmulatorThread) -> None:
    client = OpenAI(base_url=grpcio_gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    completion = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "via grpcio"}],
                                                extra_headers={"proxy-authorization": f"Basic {CLIENT_KEY}"})
    assert completion.choices[0].message.content == "Echo: via grpcio"
    seen = azure.last()
    assert seen.path == "/openai/deployments/prod-chat/chat/completions"
    assert seen.headers["api-key"] == SERVER_KEY
    assert "authorization" not in seen.headers and "proxy-authorization" not in seen.headers


def test_chat_stream_on_the_grpcio_runtime(grpcio_gateway: Gateway, azure: EmulatorThread) -> None:
    client = OpenAI(base_url=grpcio_gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "streamed grpcio"}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Echo: streamed grpcio"
    assert azure.last().path == "/openai/deployments/prod-chat/chat/completions"


def h2_post(url: str, path: str, data: bytes | None, trailers: list[tuple[str, str]] | None) -> tuple[int, bytes]:
    """One HTTP/2 (prior knowledge) POST, optionally with trailers: what httpx cannot send."""
    host, port = url.removeprefix("http://").split(":")
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    headers = [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "localhost"),
               ("content-type", "application/json"), ("authorization", f"Bearer {CLIENT_KEY}")]
    connection.send_headers(1, headers, end_stream=data is None and trailers is None)
    if data is not None:
        connection.send_data(1, data, end_stream=trailers is None)
    if trailers is not None:
        connection.send_headers(1, trailers, end_stream=True)
    status, body = 0, b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(connection.data_to_send())
        while True:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the response ended"
            events = connection.receive_data(chunk)
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, 1)
            sock.sendall(connection.data_to_send())
            if any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in events):
                return status, body


@pytest.mark.parametrize("which", ["gateway", "grpcio_gateway"])
def test_headers_and_trailers_without_a_body_are_the_empty_body_400(
        request: pytest.FixtureRequest, which: str, azure: EmulatorThread) -> None:
    gateway: Gateway = request.getfixturevalue(which)
    before = len(azure.requests())
    status, body = h2_post(gateway.http_url, "/v1/chat/completions", None, [("x-trailer", "1")])
    _, empty = h2_post(gateway.http_url, "/v1/chat/completions", b"", None)
    assert status == 400
    assert json.loads(body) == json.loads(empty)  # the core's answer to an empty body
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert len(azure.requests()) == before  # nothing forwarded


@pytest.mark.parametrize("which", ["gateway", "grpcio_gateway"])
def test_a_body_with_trailers_is_forwarded(request: pytest.FixtureRequest, which: str, azure: EmulatorThread) -> None:
    gateway: Gateway = request.getfixturevalue(which)
    data = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "with trailers"}]}).encode()
    status, body = h2_post(gateway.http_url, "/v1/chat/completions?x=1", data, [("x-trailer", "1")])
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == "Echo: with trailers"
    assert azure.last().path == "/openai/deployments/prod-chat/chat/completions"
    assert azure.last().headers["api-key"] == SERVER_KEY
