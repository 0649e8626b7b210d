"""The circuit breaker end to end: real Envoy (its health checks and gRPC access log), the breaker
process, two ext_proc workers, the real openai SDK and plain-HTTP emulators as backends. Trips are
second-scale (trip_seconds 2), so the waits stay short; every count is read from the emulators'
journals, i.e. what reached "Azure"."""

from __future__ import annotations

import json

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from extproc.emulator import EmulatorSettings

from .conftest import CLIENT_KEY, EmulatorThread, Gateway, start_gateway, stop_gateway

MESSAGES = [{"role": "user", "content": "Hello"}]
TRIP_S = 2.0
KEYS = {"a": "key-a", "b": "key-b", "c": "key-c"}
OPENAI_KEY = "sk-openai-backend-key"


class HungBackend:
    """Accepts connections and never answers: a member that sends no response headers."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self._socket.close()
        for connection in self.accepted:
            connection.close()


@dataclass
class Setup:
    gateway: Gateway
    emulators: dict[str, EmulatorThread]
    hung: HungBackend


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, azure: EmulatorThread, upstream_pki) -> Iterator[Setup]:
    emulators = {name: EmulatorThread(EmulatorSettings(api_keys=(key,), deployments={f"chat-{name}": "gpt-4o"}))
                 for name, key in KEYS.items()}
    # OpenAI itself, played by the emulator in its OpenAI-API mode (its deployments are model names).
    emulators["oai"] = EmulatorThread(EmulatorSettings(openai_api=True, api_keys=(OPENAI_KEY,),
                                                       deployments={"gpt-4o-2024-08-06": "gpt-4o"}))
    hung = HungBackend()
    backends = ", ".join(f"{name}: {{endpoint: '{emulators[name].url}', api_key: {key}}}" for name, key in KEYS.items())
    backends += f", oai: {{type: openai, endpoint: '{emulators['oai'].url}', api_key_env: OPENAI_KEY_VAR}}"
    gateway = start_gateway(
        tmp_path_factory.mktemp("breaker"), azure.url, upstream_pki.ca_cert,
        backends=f"{{{backends}, hung: {{endpoint: '{hung.url}', api_key: key-hung}}}}",
        models=("{'duo': [{backend: a, deployment: chat-a}, {backend: b, deployment: chat-b}], "
                "'tiered': [{backend: a, deployment: chat-a}, {backend: b, deployment: chat-b}, "
                "{backend: c, deployment: chat-c, priority: 2}], "
                "'solo': [{backend: c, deployment: chat-c}], "
                "'mixed': [{backend: a, deployment: chat-a}, {backend: oai, deployment: gpt-4o-2024-08-06, priority: 2}], "
                "'slow': [{backend: hung, deployment: chat-hung}, {backend: c, deployment: chat-c, priority: 2}]}"),
        circuit_breaker=f"{{failures: 3, interval_seconds: 60, trip_seconds: {TRIP_S:g}, max_trip_seconds: 30}}",
        failover="{max_attempts: 3, try_timeout_seconds: 1}",
        extproc="{workers: 2}",
        default_model="duo",
        env={"OPENAI_KEY_VAR": OPENAI_KEY},
    )
    yield Setup(gateway, emulators, hung)
    stop_gateway(gateway)
    for emulator in emulators.values():
        emulator.stop()
    hung.close()
    output = gateway.log.read_text()
    assert not any(key in output for key in (*KEYS.values(), OPENAI_KEY)) and CLIENT_KEY not in output


@pytest.fixture(autouse=True)
def _fresh(setup: Setup) -> None:
    for emulator in setup.emulators.values():
        httpx.delete(emulator.url + "/_emulator/throttle")
        emulator.emulator.clear_journal()
    setup.gateway.reset_breaker()


def _throttle(emulator: EmulatorThread, **rule: object) -> None:
    assert httpx.post(emulator.url + "/_emulator/throttle", json=rule).status_code == 201


def _client(setup: Setup) -> openai.OpenAI:
    return openai.OpenAI(base_url=setup.gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0)


def _chat(client: openai.OpenAI, model: str) -> str:
    answer = client.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]
    return answer.choices[0].message.content or ""


def _count(setup: Setup, name: str) -> int:
    return len(setup.emulators[name].requests())


def _member(setup: Setup, model: str, backend: str) -> dict:
    return next(m for m in setup.gateway.breaker_status()["pools"][model] if m["backend"] == backend)


def _wait(check: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _log_lines(gateway: Gateway) -> list[dict]:
    return [json.loads(line) for line in gateway.log.read_text().splitlines()
            if line.startswith("{") and '"bytes_in":' in line]


def _tripped(setup: Setup, model: str, backend: str) -> dict:
    """The member's state once the breaker has it tripped (Envoy logs a try after the client's answer)."""
    _wait(lambda: _member(setup, model, backend)["state"] == "tripped", f"{backend} to trip")
    return _member(setup, model, backend)


def _envoy_sees(setup: Setup, emulator: str, healthy: bool) -> None:
    """Envoy's health checks have caught up with the breaker (every 0.25 s) for that member."""
    port = setup.emulators[emulator].url.rsplit(":", 1)[1]
    _wait(lambda: all((flags == "healthy") == healthy
                      for host, flags in setup.gateway.pool_health().items() if host.endswith(":" + port)),
          f"Envoy to see {emulator} {'healthy' if healthy else 'tripped'}")


def test_a_member_answering_429_trips_after_three_and_gets_nothing_until_the_trip_ends(setup: Setup) -> None:
    _throttle(setup.emulators["a"], retry_after=1)  # shorter than trip_seconds: the trip is 2 s
    with _client(setup) as client:
        while _count(setup, "a") < 3:  # every request answered, through b when a throttles
            assert _chat(client, "duo")
        for _ in range(10):  # at once: Envoy's health checks may not have seen the trip yet; still answered
            assert _chat(client, "duo")
        tripped = _tripped(setup, "duo", "a")
        assert 1.0 < tripped["seconds_left"] <= TRIP_S
        _envoy_sees(setup, "a", healthy=False)
        # The usage process shows the trip (it asks the breaker every 2 s) and the failovers before it.
        _wait(lambda: setup.gateway.metrics().get('aoai_gateway_circuit_open{member="a/chat-a"}') == 1.0,
              "the metrics to show the trip", 5.0)
        metrics = setup.gateway.metrics()
        assert metrics['aoai_gateway_circuit_trips_total{member="a/chat-a"}'] >= 1
        assert metrics['aoai_gateway_circuit_open{member="b/chat-b"}'] == 0.0
        assert metrics['aoai_gateway_failovers_total{gen_ai_request_model="duo"}'] >= 3
        assert metrics['aoai_gateway_member_failures_total{member="a/chat-a"}'] >= 3
        served_by_b = ('aoai_gateway_requests_total{backend="b",client="none",deployment="chat-b",'
                       'gen_ai_request_model="duo",status_class="2xx"}')  # the member that answered
        before_a, before_b = _count(setup, "a"), _count(setup, "b")
        for _ in range(20):
            assert _chat(client, "duo")
        assert _count(setup, "a") == before_a  # tripped: not even tried
        assert _count(setup, "b") == before_b + 20  # no failover needed: one try each
        _wait(lambda: setup.gateway.metrics().get(served_by_b, 0.0) >= metrics.get(served_by_b, 0.0) + 20,
              "the 20 requests to be counted for b")
        # Envoy's access log names the member that answered a pool's request.
        _wait(lambda: any(line.get("member") == "b/chat-b" and line["model"] == "duo" and line["deployment"] is None
                          for line in _log_lines(setup.gateway)), "a log line naming the member")
        httpx.delete(setup.emulators["a"].url + "/_emulator/throttle")
        _wait(lambda: _member(setup, "duo", "a")["state"] != "tripped", "the trip to end", TRIP_S + 1)
        _envoy_sees(setup, "a", healthy=True)
        for _ in range(20):
            assert _chat(client, "duo")
    assert _count(setup, "a") > before_a  # back in
    log = setup.gateway.log.read_text()
    assert '"event": "circuit_tripped", "member": "a/chat-a", "status": 429' in log
    assert '"event": "circuit_reopened", "member": "a/chat-a"' in log


def test_a_retry_after_longer_than_the_trip_keeps_the_member_out_for_it(setup: Setup) -> None:
    _throttle(setup.emulators["a"], retry_after=4)
    with _client(setup) as client:
        while _count(setup, "a") < 3:
            assert _chat(client, "duo")
        tripped = _tripped(setup, "duo", "a")
        assert 3.0 < tripped["seconds_left"] <= 4.0
        _envoy_sees(setup, "a", healthy=False)
        before = _count(setup, "a")
        time.sleep(TRIP_S + 0.5)  # past trip_seconds, within the Retry-After
        for _ in range(10):
            assert _chat(client, "duo")
        assert _count(setup, "a") == before and _member(setup, "duo", "a")["state"] == "tripped"


def test_priority_two_serves_only_while_every_priority_one_member_is_tripped(setup: Setup) -> None:
    with _client(setup) as client:
        for _ in range(10):
            assert _chat(client, "tiered")
        assert _count(setup, "c") == 0
        _throttle(setup.emulators["a"], retry_after=1)
        _throttle(setup.emulators["b"], retry_after=1)
        for _ in range(3):  # each request: a and b answer 429, c answers
            assert _chat(client, "tiered")
        assert _count(setup, "c") == 3
        for name in "ab":
            _tripped(setup, "tiered", name)
            _envoy_sees(setup, name, healthy=False)
        tried_a, tried_b = _count(setup, "a"), _count(setup, "b")
        for _ in range(10):
            assert _chat(client, "tiered")
        assert (_count(setup, "a"), _count(setup, "b"), _count(setup, "c")) == (tried_a, tried_b, 13)
        for name in "ab":
            httpx.delete(setup.emulators[name].url + "/_emulator/throttle")
        _wait(lambda: all(_member(setup, "tiered", n)["state"] != "tripped" for n in "ab"), "the trips to end", TRIP_S + 1)
        for name in "ab":
            _envoy_sees(setup, name, healthy=True)
        for _ in range(20):
            assert _chat(client, "tiered")
    assert _count(setup, "c") == 13  # priority 2 gets nothing once priority 1 is back


def test_when_every_member_is_tripped_the_gateway_answers_429_itself_from_every_worker(setup: Setup) -> None:
    """A pool of one member behaves as a model on one deployment, except that its 429s trip it."""
    _throttle(setup.emulators["c"], retry_after=1)
    with _client(setup) as client:
        for _ in range(3):
            with pytest.raises(openai.RateLimitError) as raised:
                _chat(client, "solo")
            assert raised.value.response.headers["retry-after"] == "1"  # Azure's own 429, passed on
    assert _count(setup, "c") == 3
    _tripped(setup, "solo", "c")
    workers_before = _worker_requests(setup.gateway)
    for _ in range(20):  # a connection each: Envoy spreads the streams over both workers
        with httpx.Client(base_url=setup.gateway.http_url) as http:
            response = http.post("/v1/chat/completions", json={"model": "solo", "messages": MESSAGES},
                                 headers={"Authorization": f"Bearer {CLIENT_KEY}"})
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(response.headers["retry-after"]) <= TRIP_S + 1
        assert 0 < int(response.headers["retry-after-ms"]) <= (TRIP_S + 1) * 1000
    assert _count(setup, "c") == 3  # nothing more reached the emulator
    served = [after - before for before, after in zip(workers_before, _worker_requests(setup.gateway))]
    assert len(served) == 2 and all(n > 0 for n in served), served  # both workers answered from one state


def _worker_requests(gateway: Gateway) -> list[int]:
    with httpx.Client() as http:
        lines = http.get(gateway.admin_url + "/clusters").text.splitlines()
    return [int(line.rsplit("::", 1)[1]) for line in sorted(lines) if line.startswith("extproc::") and "::rq_total::" in line]


def test_a_hung_member_fails_over_after_the_try_timeout_and_trips(setup: Setup) -> None:
    with _client(setup) as client:
        for _ in range(3):
            started = time.monotonic()
            assert _chat(client, "slow")  # from c, after the hung member's 1 s try timeout
            assert 0.9 < time.monotonic() - started < 3
        _tripped(setup, "slow", "hung")
        port = setup.hung.url.rsplit(":", 1)[1]
        _wait(lambda: all(flags != "healthy" for host, flags in setup.gateway.pool_health().items()
                          if host.endswith(":" + port)), "Envoy to see the hung member tripped")
        started = time.monotonic()
        assert _chat(client, "slow")
        assert time.monotonic() - started < 0.5  # straight to c
    assert _count(setup, "c") == 4


def test_a_stream_fails_over_to_an_openai_backend_with_openais_path_key_and_model(setup: Setup) -> None:
    _throttle(setup.emulators["a"], status=503)
    with openai.OpenAI(base_url=setup.gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0,
                       organization="org-client", project="proj-client") as client:
        stream = client.chat.completions.create(model="mixed", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text
    [azure] = setup.emulators["a"].requests()
    assert azure.path == "/openai/deployments/chat-a/chat/completions" and azure.headers["api-key"] == KEYS["a"]
    assert azure.query["api-version"] and "authorization" not in azure.headers
    [openai_try] = setup.emulators["oai"].requests()
    assert openai_try.path == "/v1/chat/completions" and openai_try.query == {}  # no api-version for OpenAI
    assert openai_try.headers["authorization"] == f"Bearer {OPENAI_KEY}" and "api-key" not in openai_try.headers
    assert openai_try.json["model"] == "gpt-4o-2024-08-06" and openai_try.json["stream"] is True
    assert openai_try.headers["host"] == "127.0.0.1"  # the member's name (Envoy sends no port)
    for recorded in (azure, openai_try):
        assert CLIENT_KEY not in str(recorded.headers)
        # The client's billing selectors never go with the gateway's key.
        assert "openai-organization" not in recorded.headers and "openai-project" not in recorded.headers


def test_an_error_that_is_not_a_failure_status_reaches_the_client_and_does_not_count(setup: Setup) -> None:
    _throttle(setup.emulators["a"], status=400)
    _throttle(setup.emulators["b"], status=400)
    with _client(setup) as client:
        for _ in range(5):
            with pytest.raises(openai.BadRequestError):
                _chat(client, "duo")
    assert _count(setup, "a") + _count(setup, "b") == 5  # one try each: a 400 is not failed over
    time.sleep(0.2)  # Envoy reports failed tries within 10 ms: long enough to have been counted
    assert all(m["state"] == "healthy" for m in setup.gateway.breaker_status()["pools"]["duo"])


def test_a_request_naming_no_model_is_served_by_default_model(setup: Setup) -> None:
    with httpx.Client(base_url=setup.gateway.http_url) as http:
        response = http.post("/v1/chat/completions", json={"messages": MESSAGES},
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status_code == 200, response.text
    [recorded] = setup.emulators["a"].requests() + setup.emulators["b"].requests()  # `duo`'s members
    assert "model" not in recorded.json  # the deployment is in the path; the body goes on as sent


def test_with_a_member_tripped_the_one_left_is_tried_once_per_request(setup: Setup) -> None:
    """Envoy skips the tripped member; left alone, its retry would pick the other member again."""
    _throttle(setup.emulators["a"], retry_after=10)
    with _client(setup) as client:
        while _count(setup, "a") < 3:
            assert _chat(client, "duo")
        _tripped(setup, "duo", "a")
        _envoy_sees(setup, "a", healthy=False)
        # Within REOPEN_MARGIN_S of the trip the ext_proc still allows a retry (Envoy might have picked a).
        time.sleep(0.5)
        _throttle(setup.emulators["b"], retry_after=1)
        before = _count(setup, "b")
        with pytest.raises(openai.RateLimitError):
            _chat(client, "duo")
    assert _count(setup, "b") == before + 1  # once, not once per retry
    assert "x-envoy-max-retries" not in setup.emulators["b"].last().headers
