"""Pools (models: {name: [members]}): Envoy picks the member and fails over inside one request; each
try carries its own member's path, key, Host and TLS. Real Envoy, real openai SDK, three emulators:
the default backend (the session's), a TLS member `east` and a plain-HTTP member `west`."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from extproc.emulator import EmulatorSettings

from .conftest import API_VERSION, CLIENT_KEY, EmulatorThread, Gateway, start_gateway, stop_gateway

EAST_KEY = "east-key-e2e"
WEST_KEY = "west-key-e2e"
WEST_API_VERSION = "2025-04-01-preview"  # its own; the others use the gateway's
MESSAGES = [{"role": "user", "content": "Hello"}]


@dataclass
class PoolSetup:
    gateway: Gateway
    east: EmulatorThread
    west: EmulatorThread


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, azure: EmulatorThread, upstream_pki) -> Iterator[PoolSetup]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(upstream_pki.server_cert, upstream_pki.server_key)
    east = EmulatorThread(EmulatorSettings(api_keys=(EAST_KEY,), deployments={"chat-east": "gpt-4o"}, ssl_context=context))
    west = EmulatorThread(EmulatorSettings(api_keys=(WEST_KEY,), deployments={"chat-west": "gpt-4o", "shared": "gpt-4o"}))
    east_url = east.url.replace("127.0.0.1", "localhost")  # its certificate names localhost
    gateway = start_gateway(
        tmp_path_factory.mktemp("pools"), azure.url, upstream_pki.ca_cert,
        backends=(f"{{east: {{endpoint: '{east_url}', api_key: {EAST_KEY}, ca_file: '{upstream_pki.ca_cert}'}}, "
                  f"west: {{endpoint: '{west.url}', api_key_env: WEST_KEY, api_version: '{WEST_API_VERSION}'}}}}"),
        models=("{'gpt-4o': [{backend: east, deployment: chat-east, priority: 1}, "
                "{backend: west, deployment: chat-west, priority: 2}], "
                "'weighted': [{backend: east, deployment: chat-east, weight: 3}, {backend: west, deployment: chat-west}], "
                "'same-name': [{backend: west, deployment: shared}], 'text-embedding-3-small': prod-embed}"),
        env={"WEST_KEY": WEST_KEY},
    )
    yield PoolSetup(gateway, east, west)
    stop_gateway(gateway)
    for emulator in (east, west):
        emulator.stop()
    output = gateway.log.read_text()
    assert EAST_KEY not in output and WEST_KEY not in output


@pytest.fixture(autouse=True)
def _fresh(pool: PoolSetup) -> None:
    for emulator in (pool.east, pool.west):
        httpx.delete(emulator.url + "/_emulator/throttle", verify=False)
        emulator.emulator.clear_journal()
    pool.gateway.reset_breaker()  # a test's 429s trip members (tests/e2e/test_breaker.py)


def _throttle(emulator: EmulatorThread, **rule: object) -> None:
    assert httpx.post(emulator.url + "/_emulator/throttle", json=rule, verify=False).status_code == 201


def _client(pool: PoolSetup) -> openai.OpenAI:
    return openai.OpenAI(base_url=pool.gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0)


def _assert_own_credentials(emulator: EmulatorThread, key: str, deployment: str, host: str,
                            api_version: str = API_VERSION) -> None:
    for recorded in emulator.requests():
        assert recorded.path == f"/openai/deployments/{deployment}/chat/completions"
        assert recorded.query["api-version"] == [api_version]
        assert recorded.headers["api-key"] == key
        assert recorded.headers["host"] == host  # the member's own name (Envoy: the endpoint's hostname)
        assert "authorization" not in recorded.headers
        assert CLIENT_KEY not in str(recorded.headers)


def test_the_first_priority_serves_while_it_answers(pool: PoolSetup) -> None:
    with _client(pool) as client:
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    assert len(pool.east.requests()) == 1 and pool.west.requests() == []
    _assert_own_credentials(pool.east, EAST_KEY, "chat-east", "localhost")


def test_a_429_fails_over_inside_the_request_with_the_next_members_own_path_key_and_host(pool: PoolSetup) -> None:
    _throttle(pool.east, retry_after=30)
    with _client(pool) as client:
        for _ in range(3):
            answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
            assert answer.choices[0].message.content
    assert len(pool.east.requests()) == 3 and len(pool.west.requests()) == 3
    _assert_own_credentials(pool.east, EAST_KEY, "chat-east", "localhost")
    _assert_own_credentials(pool.west, WEST_KEY, "chat-west", "127.0.0.1", WEST_API_VERSION)


def test_a_stream_fails_over_before_its_first_byte(pool: PoolSetup) -> None:
    _throttle(pool.east, status=503)
    with _client(pool) as client:
        stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text
    assert len(pool.east.requests()) == 1 and len(pool.west.requests()) == 1
    assert pool.west.last().json["stream"] is True
    _assert_own_credentials(pool.west, WEST_KEY, "chat-west", "127.0.0.1", WEST_API_VERSION)


def test_when_every_member_fails_the_client_gets_the_last_answer(pool: PoolSetup) -> None:
    _throttle(pool.east, retry_after=30)
    _throttle(pool.west, retry_after=7)
    with _client(pool) as client, pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert raised.value.response.headers["retry-after"] == "7"
    # Two members, max_attempts 3: each was tried, and Envoy does not go back to one it tried.
    assert len(pool.east.requests()) == 1 and len(pool.west.requests()) == 1


def test_a_client_cannot_route_itself_to_a_pool(pool: PoolSetup) -> None:
    """The routing header is the ext_proc's alone: a client's copy is removed before any route is chosen."""
    with httpx.Client(base_url=pool.gateway.http_url) as http:
        for path in ("/nowhere", "/openai/deployments/chat-east/chat/completions"):
            response = http.post(path, headers={"x-aoai-gateway-cluster": "pool-0", "api-key": "x"}, json={})
            assert response.status_code in (401, 404), response.text
    assert pool.east.requests() == [] and pool.west.requests() == []


def test_weights_share_the_requests(pool: PoolSetup) -> None:
    with httpx.Client(base_url=pool.gateway.http_url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as http:
        for _ in range(1000):
            response = http.post("/v1/chat/completions", json={"model": "weighted", "messages": MESSAGES})
            assert response.status_code == 200
    east, west = len(pool.east.requests()), len(pool.west.requests())
    assert east + west == 1000
    assert 675 <= east <= 825, (east, west)  # 3:1 is 750:250, within 10%


def test_an_endpoint_that_names_the_deployment_in_the_body_needs_one_name_across_the_pool(pool: PoolSetup) -> None:
    with _client(pool) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model="gpt-4o", input="hi")
        assert raised.value.body["code"] == "unsupported_for_pool"  # type: ignore[index]
        answer = client.responses.create(model="same-name", input="hi")
    assert answer.output_text
    assert pool.east.requests() == []
    [recorded] = pool.west.requests()
    assert recorded.json["model"] == "shared" and recorded.headers["api-key"] == WEST_KEY
