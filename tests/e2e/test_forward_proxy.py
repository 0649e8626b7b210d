"""Forward-proxy mode through the real Envoy: an app with api.openai.com left as its base URL and only HTTPS_PROXY and
SSL_CERT_FILE set reaches the emulator's deployment with the server's key (never the app's); a CONNECT anywhere
else is refused with 403 and reaches nothing; TLS inside the tunnel is the forward-proxy CA's, for the intercepted
host only. No DNS: Envoy never resolves api.openai.com."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from .conftest import CLIENT_KEY, SERVER_KEY, EmulatorThread, Gateway, start_gateway, stop_gateway

MESSAGES = [{"role": "user", "content": "through the tunnel"}]


def running(directory: Path, azure: EmulatorThread, ca_file: Path, secrets: tuple[str, ...], *,
            env: dict[str, str] | None = None, **sections: str) -> Iterator[Gateway]:
    """A gateway in forward-proxy mode for a module's tests; none of `secrets` in anything it printed."""
    gw = start_gateway(directory, azure.url, ca_file, env=env, forward_proxy="{enabled: true}", **sections)
    try:
        yield gw
    finally:
        stop_gateway(gw)
    output = gw.log.read_text()
    assert not [secret for secret in secrets if secret in output]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, azure: EmulatorThread, upstream_pki) -> Iterator[Gateway]:
    yield from running(tmp_path_factory.mktemp("forward"), azure, upstream_pki.ca_cert, (CLIENT_KEY, SERVER_KEY))


def access_log(gateway: Gateway, *wanted: Callable[[dict], bool]) -> list[dict]:
    """Envoy's access log lines once each of `wanted` matches one (its stdout log is flushed every second)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in gateway.log.read_text().splitlines()
                 if line.startswith("{") and '"bytes_in":' in line]
        if all(any(want(line) for line in lines) for want in wanted) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def bundle(gateway: Gateway) -> Path:
    return gateway.state_dir / "forward-proxy" / "bundle.pem"


@pytest.fixture
def proxied(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """The app's environment: only HTTPS_PROXY and SSL_CERT_FILE (with the gateway's bundle) set."""
    for name in ("OPENAI_BASE_URL", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", gateway.http_url)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle(gateway)))
    return gateway


def test_the_sdk_with_api_openai_com_reaches_the_deployment(proxied: Gateway, azure: EmulatorThread) -> None:
    with openai.OpenAI(api_key=CLIENT_KEY, max_retries=0) as client:
        assert str(client.base_url).startswith("https://api.openai.com/")
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "Echo: through the tunnel"
        seen = azure.last()
        assert seen.path == "/openai/deployments/prod-chat/chat/completions"
        assert seen.headers["api-key"] == SERVER_KEY and "authorization" not in seen.headers  # the app's key stays
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
        assert len(chunks) > 3

    async def run() -> str:
        async with openai.AsyncOpenAI(api_key=CLIENT_KEY, max_retries=0) as client:
            embedding = await client.embeddings.create(model="text-embedding-3-small", input="tunnel")
            return embedding.model
    assert asyncio.run(run())
    assert azure.last().path == "/openai/deployments/prod-embed/embeddings"
    with openai.OpenAI(api_key=CLIENT_KEY, base_url=proxied.http_url + "/v1", max_retries=0) as direct:
        assert direct.models.list().data  # plain HTTP: HTTPS_PROXY does not apply, no tunnel
    # Envoy's log: the tunnel's CONNECT line, and the requests inside it with the client's own address and the SNI.
    def inside(line: dict) -> bool:
        return line["sni"] == "api.openai.com" and line["model"] == "text-embedding-3-small"

    def outside(line: dict) -> bool:
        return line["sni"] is None and line["method"] != "CONNECT"

    lines = access_log(proxied, inside, outside)
    inner, outside_lines = [line for line in lines if inside(line)], [line for line in lines if outside(line)]
    assert inner and inner[-1]["client_address"] == "127.0.0.1" and inner[-1]["deployment"] == "prod-embed"
    # The tunnel id joins the request to its CONNECT line (written when the tunnel was established): the CONNECT's
    # own request id, on both lines; requests outside a tunnel have none.
    connects = {line["tunnel"]: line for line in lines if line["method"] == "CONNECT"}
    connect = connects[inner[-1]["tunnel"]]
    assert connect["request_id"] == connect["tunnel"] and connect["status"] == 200
    assert connect["client_address"] == "127.0.0.1" and connect["sni"] is None
    assert inner[-1]["request_id"] != connect["request_id"]
    assert outside_lines and all(line["tunnel"] is None for line in outside_lines)


def test_a_client_that_does_not_trust_the_ca_fails(proxied: Gateway, monkeypatch: pytest.MonkeyPatch,
                                                    azure: EmulatorThread) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")
    before = len(azure.requests())
    with openai.OpenAI(api_key=CLIENT_KEY, max_retries=0) as client, pytest.raises(openai.APIConnectionError) as caught:
        client.models.list()
    assert "CERTIFICATE_VERIFY_FAILED" in repr(caught.value.__cause__) or "certificate" in repr(caught.value.__cause__).lower()
    assert len(azure.requests()) == before


def _connect(gateway: Gateway, target: str, host: str | None = None) -> tuple[socket.socket, bytes]:
    port = int(gateway.http_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {host or target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            break
        head += data
    return sock, head


@pytest.mark.parametrize(("target", "host"), [
    ("example.com:443", None), ("api.openai.com:80", None), ("127.0.0.1:443", None), ("api.openai.com.:443", None),
    ("API.OPENAI.COM.evil.example:443", None), ("evil.example:443", "api.openai.com:443"), ("[::1]:443", None),
    ("api.openai.com:8443", None)])
def test_a_connect_anywhere_else_is_refused(gateway: Gateway, azure: EmulatorThread, target: str, host: str | None) -> None:
    before = len(azure.requests())
    sock, head = _connect(gateway, target, host)
    with sock:
        assert head.startswith(b"HTTP/1.1 403"), head
        assert b"forward_proxy_refused" in head + sock.recv(4096)
    assert len(azure.requests()) == before


def test_inside_the_tunnel_only_the_intercepted_name_is_served(gateway: Gateway) -> None:
    context = ssl.create_default_context(cafile=str(bundle(gateway)))
    sock, head = _connect(gateway, "api.openai.com:443")
    assert head.startswith(b"HTTP/1.1 200"), head
    with context.wrap_socket(sock, server_hostname="api.openai.com") as tls:
        assert tls.version() is not None
    sock, head = _connect(gateway, "api.openai.com:443")
    assert head.startswith(b"HTTP/1.1 200")
    relaxed = ssl.create_default_context(cafile=str(bundle(gateway)))
    relaxed.check_hostname = False
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # another SNI matches no filter chain: closed
        with relaxed.wrap_socket(sock, server_hostname="www.example.com") as tls:
            tls.recv(1)


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_curl_through_the_tunnel(gateway: Gateway, azure: EmulatorThread, http: str) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is needed"
    result = subprocess.run([curl, "-sS", http, "-x", gateway.http_url, "--cacert", str(bundle(gateway)),
                             "-H", f"authorization: Bearer {CLIENT_KEY}", "-H", "content-type: application/json",
                             "-d", '{"model": "gpt-4o", "messages": [{"role": "user", "content": "curl"}]}',
                             "-w", "\\n%{http_code} %{http_version}", "https://api.openai.com/v1/chat/completions"],
                            capture_output=True, text=True, timeout=30, check=False)
    body, _, status = result.stdout.rpartition("\n")
    assert status == ("200 1.1" if http == "--http1.1" else "200 2"), result.stderr
    assert "Echo: curl" in body and azure.last().headers["api-key"] == SERVER_KEY


def test_a_body_over_the_limit_inside_the_tunnel_is_an_openai_error(proxied: Gateway) -> None:
    with openai.OpenAI(api_key=CLIENT_KEY, max_retries=0) as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x" * 3_000_000}])  # type: ignore[arg-type]
    assert caught.value.status_code == 413 and caught.value.body["code"] == "request_too_large"


def test_plain_http_proxy_requests_are_translated_too(gateway: Gateway, azure: EmulatorThread,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`HTTP_PROXY` and `http://api.openai.com/v1`: the absolute-form request's Host is the intercepted name, which
    the loopback gateway's browser guard admits (another name is still refused)."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", gateway.http_url)
    with openai.OpenAI(api_key=CLIENT_KEY, base_url="http://api.openai.com/v1", max_retries=0) as client:
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Echo: through the tunnel"
    seen = azure.last()
    assert seen.headers["api-key"] == SERVER_KEY and "authorization" not in seen.headers
    curl = shutil.which("curl")
    assert curl, "curl is needed"
    for url, expected in (("http://api.openai.com/v1/models", "200"), ("http://api.openai.com:80/v1/models", "200"),
                          ("http://evil.example/v1/models", "403")):
        result = subprocess.run([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", url],
                                env={"http_proxy": gateway.http_url}, capture_output=True, text=True, timeout=30, check=False)
        assert result.stdout == expected, (url, result.stdout, result.stderr)


APP_KEY = "sk-aoai-e2e-forward-app"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, azure: EmulatorThread, upstream_pki) -> Iterator[Gateway]:
    """With client keys: a CONNECT needs one in its Proxy-Authorization, and each request inside needs its own."""
    secrets = (APP_KEY, SERVER_KEY, *(base64.b64encode(text.encode()).decode()  # the Proxy-Authorizations sent
                                      for text in (f"app:{APP_KEY}", f"anyone:{APP_KEY}", f"{APP_KEY}:")))
    yield from running(tmp_path_factory.mktemp("forward-keys"), azure, upstream_pki.ca_cert, secrets,
                       clients="{keys: [{name: app, key_env: APP_KEY}]}", env={"APP_KEY": APP_KEY})


def _proxy_url(gateway: Gateway, userinfo: str = "") -> str:
    return gateway.http_url.replace("http://", f"http://{userinfo}@" if userinfo else "http://")


def test_with_client_keys_the_connect_needs_one(keyed: Gateway, azure: EmulatorThread,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle(keyed)))
    before = len(azure.requests())
    for proxy in (_proxy_url(keyed), _proxy_url(keyed, "app:sk-aoai-wrong")):
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        with openai.OpenAI(api_key=APP_KEY, max_retries=0) as client, pytest.raises(openai.APIConnectionError) as caught:
            client.models.list()
        assert "407" in repr(caught.value.__cause__)
    assert len(azure.requests()) == before
    # The proxy URL's password is the key (what clients send for it: Basic); the request inside carries it too.
    monkeypatch.setenv("HTTPS_PROXY", _proxy_url(keyed, f"app:{APP_KEY}"))
    with openai.OpenAI(api_key=APP_KEY, max_retries=0) as client:
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "Echo: through the tunnel"
        seen = azure.last()
        assert seen.headers["api-key"] == SERVER_KEY
        assert not {"authorization", "proxy-authorization"} & set(seen.headers)
    # Inside the tunnel a request is decided like any other: without its own key, 401.
    with openai.OpenAI(api_key="not-a-key", max_retries=0) as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
    def opened(line: dict) -> bool:
        return line["method"] == "CONNECT" and line["status"] == 200 and line["client"] == "app"

    lines = access_log(keyed, opened)
    assert any(opened(line) for line in lines)
    assert [line["status"] for line in lines if line["method"] == "CONNECT" and line["client"] is None][:2] == [407, 407]


def _raw_connect(gateway: Gateway, target: str, proxy_authorization: str | None) -> bytes:
    port = int(gateway.http_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        extra = f"Proxy-Authorization: {proxy_authorization}\r\n" if proxy_authorization is not None else ""
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or (answer.startswith(b"HTTP/1.1 4") and not answer.endswith(b"}")):
            data = sock.recv(4096)
            if not data:
                break
            answer += data
        return answer


@pytest.mark.parametrize(("credential", "status"), [
    (None, 407), ("Basic " + base64.b64encode(b"app:sk-aoai-wrong").decode(), 407), ("Basic !!!", 407),
    ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), 407), (f"Negotiate {APP_KEY}", 407),
    (f"Bearer {APP_KEY}", 200), ("Basic " + base64.b64encode(f"{APP_KEY}:".encode()).decode(), 200),
    ("Basic " + base64.b64encode(f"anyone:{APP_KEY}".encode()).decode(), 200)])
def test_the_connects_proxy_authorization(keyed: Gateway, credential: str | None, status: int) -> None:
    answer = _raw_connect(keyed, "api.openai.com:443", credential)
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer
    if status == 407:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b'proxy-authenticate: Basic realm="aoai-gateway"' in head.lower().replace(b"basic", b"Basic")
        assert json.loads(body)["error"]["code"] == "invalid_api_key"


def test_with_client_keys_a_connect_elsewhere_is_refused_before_any_key_check(keyed: Gateway) -> None:
    for credential in (None, f"Bearer {APP_KEY}"):
        answer = _raw_connect(keyed, "example.com:443", credential)
        assert answer.startswith(b"HTTP/1.1 403") and b"forward_proxy_refused" in answer, answer


def test_a_tunnel_is_not_counted_as_a_request(keyed: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The usage process counts the requests inside a tunnel, not its CONNECT (logged when opened and when closed);
    a refused CONNECT is counted like any refusal."""
    def counted() -> float:
        return sum(v for k, v in keyed.metrics().items() if k.startswith("aoai_gateway_requests_total{"))

    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle(keyed)))
    monkeypatch.setenv("HTTPS_PROXY", _proxy_url(keyed, f"app:{APP_KEY}"))
    time.sleep(0.3)  # the earlier tests' entries (sent every 50 ms)
    before = counted()
    with openai.OpenAI(api_key=APP_KEY, max_retries=0) as client:
        client.embeddings.create(model="text-embedding-3-small", input="counted once")
    assert _raw_connect(keyed, "example.com:443", None).startswith(b"HTTP/1.1 403")
    assert _raw_connect(keyed, "api.openai.com:443", None).startswith(b"HTTP/1.1 407")
    deadline = time.monotonic() + 10
    while counted() < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the tunnel's CONNECT lines, had they been sent, would be in by now
    assert counted() == before + 3  # the embedding, the 403 and the 407


def test_an_http_1_0_connect_opens_the_tunnel_too(proxied: Gateway, azure: EmulatorThread) -> None:
    """Python up to 3.11 sends its CONNECT as HTTP/1.0 (http.client: requests, urllib); Envoy refuses that with 426
    unless told: the mode tells it, for the CONNECT only (inside the tunnel, HTTP/1.1 or HTTP/2)."""
    port = int(proxied.http_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"CONNECT api.openai.com:443 HTTP/1.0\r\n\r\n")
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
        context = ssl.create_default_context(cafile=str(bundle(proxied)))
        with context.wrap_socket(sock, server_hostname="api.openai.com") as tls:
            tls.sendall(f"GET /v1/models HTTP/1.0\r\nHost: api.openai.com\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n".encode())
            assert tls.recv(4096).startswith(b"HTTP/1.1 426")  # inside: no HTTP/1.0
    # The standard library's client, whatever its CONNECT's version.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": proxied.http_url}),
                                         urllib.request.HTTPSHandler(context=ssl.create_default_context(
                                             cafile=str(bundle(proxied)))))
    request = urllib.request.Request("https://api.openai.com/v1/chat/completions", method="POST",
                                     data=json.dumps({"model": "gpt-4o", "messages": MESSAGES}).encode(),
                                     headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"})
    with opener.open(request, timeout=10) as answer:
        assert json.loads(answer.read())["choices"][0]["message"]["content"] == "Echo: through the tunnel"
    assert azure.last().headers["api-key"] == SERVER_KEY


@pytest.mark.parametrize("target", ["api.openai.com:443", "example.com:443", "127.0.0.1:8080"])
def test_a_connect_inside_the_tunnel_is_refused(proxied: Gateway, azure: EmulatorThread, target: str) -> None:
    """No tunnel in a tunnel: the connection manager inside has no CONNECT upgrade."""
    before = len(azure.requests())
    sock, head = _connect(proxied, "api.openai.com:443")
    assert head.startswith(b"HTTP/1.1 200"), head
    context = ssl.create_default_context(cafile=str(bundle(proxied)))
    context.set_alpn_protocols(["http/1.1"])
    with context.wrap_socket(sock, server_hostname="api.openai.com") as tls:
        tls.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n".encode())
        answer = tls.recv(4096)
    assert answer.startswith(b"HTTP/1.1 4"), answer
    assert len(azure.requests()) == before


def test_upgrade_connect_on_another_method_is_refused(gateway: Gateway, azure: EmulatorThread) -> None:
    """`Upgrade: CONNECT` makes Envoy run the CONNECT upgrade's filters (no browser guard, no ext_proc there): for any
    method but CONNECT they refuse it."""
    before = len(azure.requests())
    port = int(gateway.http_url.rsplit(":", 1)[1])
    for request in (b"GET /v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: Upgrade\r\nUpgrade: CONNECT\r\n\r\n",
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: connect\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400") and b"forward_proxy_refused" in answer, answer
    assert len(azure.requests()) == before


def test_http2_connects_are_checked_one_by_one(keyed: Gateway, azure: EmulatorThread) -> None:
    """HTTP/2 (h2c) to the listener, three CONNECT streams on one connection: without a key 407, with it 200, with it
    to another host 403."""
    import h2.config
    import h2.connection
    import h2.events

    port = int(keyed.http_url.rsplit(":", 1)[1])
    connection = h2.connection.H2Connection(h2.config.H2Configuration(  # h2 wants a :path, which a CONNECT has not
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
    streams = {}
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        connection.initiate_connection()
        for target, credential in (("api.openai.com:443", None), ("api.openai.com:443", f"Bearer {APP_KEY}"),
                                   ("example.com:443", f"Bearer {APP_KEY}")):
            stream = connection.get_next_available_stream_id()
            headers = [(":method", "CONNECT"), (":authority", target)]
            if credential:
                headers.append(("proxy-authorization", credential))
            connection.send_headers(stream, headers)
            streams[stream] = target, credential
        sock.sendall(connection.data_to_send())
        statuses: dict[int, int] = {}
        deadline = time.monotonic() + 5
        while len(statuses) < len(streams) and time.monotonic() < deadline:
            for event in connection.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = int(dict(event.headers)[b":status"])
            sock.sendall(connection.data_to_send())
    assert sorted(statuses.values()) == [200, 403, 407]
    assert [statuses[stream] for stream in sorted(streams)] == [407, 200, 403]


def test_the_proxy_itself_over_https(gateway: Gateway, azure: EmulatorThread) -> None:
    """`HTTPS_PROXY=https://gateway:8443`: the CONNECT over the HTTPS listener (TLS to the proxy, then TLS inside)."""
    curl = shutil.which("curl")
    assert curl, "curl is needed"
    result = subprocess.run([curl, "-sS", "-x", gateway.https_url, "--proxy-cacert", str(gateway.ca_file),
                             "--cacert", str(bundle(gateway)), "-H", f"authorization: Bearer {CLIENT_KEY}",
                             "-w", "\\n%{http_code}", "https://api.openai.com/v1/embeddings",
                             "-H", "content-type: application/json",
                             "-d", '{"model": "text-embedding-3-small", "input": "over https"}'],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.stdout.rpartition("\n")[2] == "200", result.stderr
    assert azure.last().path == "/openai/deployments/prod-embed/embeddings"
    assert azure.last().headers["api-key"] == SERVER_KEY
