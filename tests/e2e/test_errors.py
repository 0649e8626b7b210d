"""Errors the gateway produces itself, end to end: OpenAI-shaped JSON, the right status, and nothing
forwarded to Azure."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.client import HTTPResponse
from pathlib import Path

import httpx
import orjson
import pytest
from openai import APIStatusError, OpenAI

from extproc import envoy_config
from extproc.config import load_settings
from extproc.runtime.sockets import socket_in_use

from .conftest import BODY_LIMIT, CLIENT_KEY, SERVER_KEY, EmulatorThread, Gateway, write_config


def openai_error(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = orjson.loads(response.content)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.http_url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=30) as client:
        yield client


def test_invalid_json_is_400(http: httpx.Client, azure: EmulatorThread) -> None:
    before = len(azure.requests())
    response = http.post("/v1/chat/completions", content=b'{"model": "gpt-4o", ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert openai_error(response)["type"] == "invalid_request_error"
    assert len(azure.requests()) == before


def test_missing_model_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", json={"input": "x"})
    assert response.status_code == 400
    assert openai_error(response)["param"] == "model"


def test_unknown_model_under_the_strict_policy_is_404(gateway: Gateway, azure: EmulatorThread) -> None:
    before = len(azure.requests())
    client = OpenAI(base_url=gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(APIStatusError) as caught:
        client.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert "gpt-4o" in caught.value.message  # names the known models
    assert len(azure.requests()) == before


def test_unknown_path_is_404(http: httpx.Client) -> None:
    response = http.get("/v1/assistants")
    assert response.status_code == 404
    assert openai_error(response)["message"] == "Invalid URL (GET /v1/assistants)"


def chat_body_of_size(size: int) -> bytes:
    head = b'{"model":"gpt-4o","messages":[{"role":"user","content":"'
    tail = b'"}]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_body_near_the_limit_works(http: httpx.Client, azure: EmulatorThread) -> None:
    body = chat_body_of_size(BODY_LIMIT - 1024)
    response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert len(azure.last().body) == len(body)


def test_body_above_the_limit_is_413(http: httpx.Client, azure: EmulatorThread) -> None:
    before = len(azure.requests())
    response = http.post("/v1/chat/completions", content=chat_body_of_size(BODY_LIMIT + 1024),
                         headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert openai_error(response)["code"] == "request_too_large"
    assert len(azure.requests()) == before


def test_file_upload_streams_past_the_buffer_limit(gateway: Gateway, azure: EmulatorThread) -> None:
    """Uploads are decided from the headers alone, so they are not held to the body-buffer limit."""
    client = OpenAI(base_url=gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    content = b'{"custom_id": "x"}\n' * (2 * BODY_LIMIT // 19)
    uploaded = client.files.create(file=("big.jsonl", content, "application/jsonl"), purpose="batch")
    assert uploaded.bytes == len(content)
    assert azure.last().form["file"]["size"] == len(content)


def test_no_api_key_anywhere_is_401(tmp_path: Path, azure: EmulatorThread, upstream_pki) -> None:
    """The gateway holds no key: without a client key it answers 401; with one, that key goes to Azure."""
    env = {"AZURE_OPENAI_ENDPOINT": azure.url.replace("127.0.0.1", "localhost"), "AZURE_OPENAI_CA_FILE": str(upstream_pki.ca_cert)}
    with Running(write_config(tmp_path), env) as base_url:
        response = httpx.post(base_url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
        assert response.status_code == 401
        assert "API key" in openai_error(response)["message"]
        # A credential in another scheme: the message says what was wrong with it, and shows no secret.
        basic = httpx.post(base_url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": []},
                           headers={"authorization": "Basic dXNlcjpwYXNzd29yZA=="})
        assert basic.status_code == 401
        message = openai_error(basic)["message"]
        assert "`Basic` scheme" in message and "Bearer" in message and "dXNlcjpwYXNzd29yZA" not in message
        sent = len(azure.requests())
        # The client's own bearer token becomes the Azure key (the Go proxy's behaviour).
        ok = httpx.post(base_url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "k"}]},
                        headers={"authorization": f"Bearer {SERVER_KEY}"})
        assert ok.status_code == 200
        assert azure.last().headers["api-key"] == SERVER_KEY and "authorization" not in azure.last().headers
        assert len(azure.requests()) == sent + 1  # the refused ones never reached Azure


def test_connect_says_the_gateway_is_no_forward_proxy(gateway: Gateway, azure: EmulatorThread) -> None:
    """A client configured with the gateway as HTTPS_PROXY sends CONNECT: it is told what to do instead."""
    before = len(azure.requests())
    host, port = gateway.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
        response = HTTPResponse(sock)
        response.begin()
        body = response.read(response.length or 4096)
    assert response.status == 404
    message = openai_error(httpx.Response(response.status, headers=dict(response.getheaders()), content=body))["message"]
    assert "not a forward proxy" in message and "OPENAI_BASE_URL" in message and "Invalid URL" not in message
    assert len(azure.requests()) == before


class Running:
    """`python -m extproc serve` and Envoy started separately (as in a sidecar), for one config file."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env, "AOAI_GATEWAY_CONFIG": str(config)}
        settings = load_settings(config, env=self.env)
        self.settings = settings.model_copy(update={"listen": settings.listen.model_copy(update={"https_port": None})})
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> str:
        settings = self.settings
        config = envoy_config.prepare(settings)
        self.extproc = self._start([sys.executable, "-m", "extproc", "serve"])
        wait_for(lambda: all(p.is_socket() for p in settings.socket_paths()))
        self._start([envoy_config.envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                     "--log-level", "error"])
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{settings.envoy.admin_port}/ready").status_code == 200)
        return f"http://127.0.0.1:{settings.listen.http_port}"

    def _start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(10)


def wait_for(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_extproc_stopped_means_503_and_nothing_forwarded(tmp_path: Path, azure: EmulatorThread, upstream_pki) -> None:
    env = {"AZURE_OPENAI_ENDPOINT": azure.url.replace("127.0.0.1", "localhost"), "AZURE_OPENAI_API_KEY": SERVER_KEY,
           "AZURE_OPENAI_CA_FILE": str(upstream_pki.ca_cert)}
    stack = Running(write_config(tmp_path), env)
    with stack as base_url:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "before"}]}
        headers = {"authorization": f"Bearer {CLIENT_KEY}"}
        assert httpx.post(base_url + "/v1/chat/completions", json=body, headers=headers).status_code == 200
        stack.extproc.kill()
        stack.extproc.wait()
        # Its workers (children of its fork server, beside the usage process) follow it within moments.
        wait_for(lambda: not any(socket_in_use(path) for path in stack.settings.socket_paths()), timeout=10)
        before = len(azure.requests())
        for path, method in (("/v1/chat/completions", "POST"), ("/v1/models", "GET"), ("/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21", "POST")):
            response = httpx.request(method, base_url + path, json=body if method == "POST" else None, headers=headers)
            assert response.status_code == 503, response.text
            assert openai_error(response)["code"] == "gateway_unavailable"
        assert len(azure.requests()) == before  # fail closed: nothing reached Azure


def test_extproc_stopped_means_no_tunnel(tmp_path: Path, azure: EmulatorThread, upstream_pki) -> None:
    """Forward-proxy mode with client keys: the ext_proc checks each CONNECT's key; without it, no tunnel (503)."""
    key = "sk-aoai-e2e-tunnel"
    env = {"AZURE_OPENAI_ENDPOINT": azure.url.replace("127.0.0.1", "localhost"), "AZURE_OPENAI_API_KEY": SERVER_KEY,
           "AZURE_OPENAI_CA_FILE": str(upstream_pki.ca_cert), "APP_KEY": key}
    config = write_config(tmp_path, forward_proxy="{enabled: true}", clients="{keys: [{name: app, key_env: APP_KEY}]}")
    stack = Running(config, env)

    def connect(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n"
                         f"Proxy-Authorization: Bearer {key}\r\n\r\n".encode())
            return sock.recv(4096)

    with stack as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        assert connect(port).startswith(b"HTTP/1.1 200")
        stack.extproc.kill()
        stack.extproc.wait()
        wait_for(lambda: not any(socket_in_use(path) for path in stack.settings.socket_paths()), timeout=10)
        answer = connect(port)
        assert answer.startswith(b"HTTP/1.1 503") and b"gateway_unavailable" in answer, answer
