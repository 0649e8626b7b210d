"""Client keys through the real Envoy with the real openai SDK: the gateway's own keys in, Azure's key
out, decided before anything reaches Azure (the emulator's journal shows what did)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from extproc.runtime.processes import free_port

from .browser import PageServer, chromium, page_result
from .conftest import SERVER_KEY, EmulatorThread, Gateway, start_gateway, stop_gateway

TEAM_A = "sk-aoai-e2e-team-a"
TEAM_B = "sk-aoai-e2e-team-b"
TEAM_C = "sk-aoai-e2e-team-c"  # requests_per_minute: 3
MESSAGES = [{"role": "user", "content": "Hello"}]
ALLOWED_ORIGIN = "http://chat-app.localhost:3000"
PAGE_PORT = free_port()  # the browser test's page: an origin the gateway allows
BROWSER_ORIGIN = f"http://127.0.0.1:{PAGE_PORT}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, azure: EmulatorThread, upstream_pki) -> Iterator[Gateway]:
    team_b = hashlib.sha256(TEAM_B.encode()).hexdigest()
    gw = start_gateway(tmp_path_factory.mktemp("client-keys"), azure.url, upstream_pki.ca_cert,
                       clients=(f"{{keys: [{{name: team-a, key_env: TEAM_A_KEY}}, "
                                f"{{name: team-b, key_sha256: {team_b}, models: [text-embedding-3-small]}}, "
                                f"{{name: team-c, key_sha256: {hashlib.sha256(TEAM_C.encode()).hexdigest()}, "
                                f"requests_per_minute: 3}}]}}"),
                       cors=f"{{allowed_origins: ['{ALLOWED_ORIGIN}', '{BROWSER_ORIGIN}']}}",
                       env={"TEAM_A_KEY": TEAM_A})
    yield gw
    stop_gateway(gw)
    output = gw.log.read_text()
    assert TEAM_A not in output and TEAM_B not in output and SERVER_KEY not in output


def _client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.http_url + "/v1", api_key=key, max_retries=0)


def test_a_known_key_reaches_azure_as_the_gateways_key(gateway: Gateway, azure: EmulatorThread) -> None:
    before = len(azure.requests())
    with _client(gateway, TEAM_A) as client:
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    [recorded] = azure.requests()[before:]
    assert recorded.headers["api-key"] == SERVER_KEY and "authorization" not in recorded.headers
    assert TEAM_A not in str(recorded.headers)


def test_the_access_log_names_the_key(gateway: Gateway) -> None:
    """Each line says whose key it was (its name, never the key): Envoy keeps the ext_proc's name for its log."""
    def logged() -> list[dict]:
        return [json.loads(line) for line in gateway.log.read_text().splitlines() if line.startswith('{') and '"bytes_in":' in line]

    def count(entries: list[dict], client: str | None, status: int) -> int:
        return sum(1 for e in entries if e.get("client") == client and e["status"] == status)

    before = logged()
    with httpx.Client(base_url=gateway.http_url) as http:
        assert http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"},
                         headers={"Authorization": f"Bearer {TEAM_B}"}).status_code == 200
        assert http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}).status_code == 401
    deadline = time.monotonic() + 10
    while not (count(now := logged(), "team-b", 200) > count(before, "team-b", 200)
               and count(now, None, 401) > count(before, None, 401)):  # Envoy writes its log in batches
        assert time.monotonic() < deadline, now[-3:]
        time.sleep(0.2)
    assert TEAM_B not in gateway.log.read_text()


@pytest.mark.parametrize("key", ["sk-aoai-not-a-key", ""])
def test_an_unknown_or_missing_key_never_reaches_azure(gateway: Gateway, azure: EmulatorThread, key: str) -> None:
    before = len(azure.requests())
    with httpx.Client(base_url=gateway.http_url) as http:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key" and "not-a-key" not in response.text
    assert len(azure.requests()) == before


def test_an_azure_client_sends_its_key_as_api_key(gateway: Gateway, azure: EmulatorThread) -> None:
    with httpx.Client(base_url=gateway.http_url) as http:
        response = http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"},
                             headers={"api-key": TEAM_B})
    assert response.status_code == 200
    assert azure.last().headers["api-key"] == SERVER_KEY


def test_a_key_with_a_model_list_sees_and_uses_only_those(gateway: Gateway, azure: EmulatorThread) -> None:
    before = len(azure.requests())
    with _client(gateway, TEAM_B) as client:
        assert [m.id for m in client.models.list()] == ["text-embedding-3-small"]
        with pytest.raises(openai.NotFoundError) as raised:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert raised.value.body["code"] == "model_not_found"  # type: ignore[index]
        assert client.embeddings.create(model="text-embedding-3-small", input="x").data
    assert len(azure.requests()) == before + 1  # only the embedding
    with _client(gateway, TEAM_A) as client:
        assert "gpt-4o" in [m.id for m in client.models.list()]


def test_a_limited_key_cannot_name_another_deployment_in_azures_image_tool_header(
        gateway: Gateway, azure: EmulatorThread) -> None:
    """Envoy hands the header to the ext_proc (forward_rules), which refuses a deployment outside the key's models."""
    before = len(azure.requests())
    with _client(gateway, TEAM_B) as client:
        with pytest.raises(openai.NotFoundError) as raised:
            client.embeddings.create(model="text-embedding-3-small", input="x",
                                     extra_headers={"x-ms-oai-image-generation-deployment": "prod-chat"})
        assert "`prod-chat`" in raised.value.body["message"]  # type: ignore[index]
    assert len(azure.requests()) == before


def test_a_key_over_its_requests_per_minute_gets_429_from_envoy_and_others_are_untouched(
        gateway: Gateway, azure: EmulatorThread) -> None:
    before = len(azure.requests())
    with _client(gateway, TEAM_C) as client:
        for _ in range(3):  # a minute's worth at once
            assert client.embeddings.create(model="text-embedding-3-small", input="x").data
        with pytest.raises(openai.RateLimitError) as raised:
            client.embeddings.create(model="text-embedding-3-small", input="x")
    assert raised.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert raised.value.response.headers["retry-after"] == "20"  # 3 a minute: one more every 20 s
    assert len(azure.requests()) == before + 3
    assert all("x-aoai-client" not in r.headers for r in azure.requests()[before:])  # the gateway's own
    with _client(gateway, TEAM_A) as client:  # another key: its own bucket (none)
        for _ in range(5):
            assert client.embeddings.create(model="text-embedding-3-small", input="x").data


def test_a_client_cannot_name_itself_to_another_keys_bucket(gateway: Gateway) -> None:
    body = {"model": "text-embedding-3-small", "input": "x"}
    with httpx.Client(base_url=gateway.http_url) as http:
        statuses = [http.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {TEAM_C}"}).status_code
                    for _ in range(4)]
        assert statuses[-1] == 429  # team-c's bucket is empty now
        for _ in range(5):  # team-a (no bucket) naming itself team-c: the ext_proc's name wins
            response = http.post("/v1/embeddings", json=body,
                                 headers={"Authorization": f"Bearer {TEAM_A}", "x-aoai-client": "team-c"})
            assert response.status_code == 200
        for name in ("team-a", "nobody", ""):  # team-c (empty bucket) naming itself otherwise: still limited
            response = http.post("/v1/embeddings", json=body,
                                 headers={"Authorization": f"Bearer {TEAM_C}", "x-aoai-client": name})
            assert response.status_code == 429, name


def _preflight(http: httpx.Client, origin: str) -> httpx.Response:
    return http.options("/v1/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, openai-beta"})


def test_envoy_answers_a_browsers_preflight_for_an_allowed_origin_only(gateway: Gateway, azure: EmulatorThread) -> None:
    before = len(azure.requests())
    with httpx.Client(base_url=gateway.http_url) as http:
        allowed = _preflight(http, ALLOWED_ORIGIN)
        assert allowed.status_code == 200  # no key needed: a preflight carries none, and reaches no Python
        assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "authorization" in allowed.headers["access-control-allow-headers"]
        assert "POST" in allowed.headers["access-control-allow-methods"]
        refused = _preflight(http, "http://elsewhere.localhost:3000")
        assert "access-control-allow-origin" not in refused.headers
    assert len(azure.requests()) == before


def test_answers_to_an_allowed_origin_carry_cors_headers_streams_and_errors_too(gateway: Gateway) -> None:
    headers = {"Origin": ALLOWED_ORIGIN, "Authorization": f"Bearer {TEAM_A}"}
    with httpx.Client(base_url=gateway.http_url) as http:
        with http.stream("POST", "/v1/chat/completions", headers=headers,
                         json={"model": "gpt-4o", "messages": MESSAGES, "stream": True}) as stream:
            assert stream.status_code == 200
            assert stream.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
            assert "retry-after" in stream.headers["access-control-expose-headers"]
            assert b"[DONE]" in b"".join(stream.iter_bytes())
        error = http.post("/v1/chat/completions", headers={"Origin": ALLOWED_ORIGIN}, json={"model": "gpt-4o"})
        assert error.status_code == 401 and error.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        other = http.post("/v1/chat/completions", headers={**headers, "Origin": "http://elsewhere.localhost:3000"},
                          json={"model": "gpt-4o", "messages": MESSAGES})
        assert "access-control-allow-origin" not in other.headers  # the browser withholds the answer


PAGE = """<!doctype html><html><body><pre id="out">running</pre><script>
(async () => {
  const out = document.getElementById("out");
  try {
    const response = await fetch(GATEWAY + "/v1/chat/completions", {
      method: "POST",
      headers: {"Authorization": "Bearer " + KEY, "Content-Type": "application/json", "x-stainless-os": "browser"},
      body: JSON.stringify({model: "gpt-4o", stream: true, messages: [{role: "user", content: "Hello"}]}),
    });
    const reader = response.body.getReader();
    let text = "";
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    out.textContent = "status " + response.status + " x-request-id-exposed " +
      (response.headers.get("x-request-id") !== null) + "\\n" + text;
  } catch (error) {
    out.textContent = "blocked: " + error;
  }
})();
</script></body></html>"""


def test_a_browser_app_on_an_allowed_origin_streams_a_chat_and_another_origin_is_blocked(
        gateway: Gateway, azure: EmulatorThread) -> None:
    """Real headless Chromium: the preflight, the streamed answer read by the page, the exposed headers; a page
    on an origin not allowed gets a network error and nothing reaches Azure."""
    page = PAGE.replace("GATEWAY", repr(gateway.http_url)).replace("KEY", repr(TEAM_A))
    allowed, other = PageServer(page, PAGE_PORT), PageServer(page)
    browser = chromium()
    try:
        before = len(azure.requests())
        browser.get(allowed.url)
        shown = page_result(browser)
        assert shown.startswith("status 200 x-request-id-exposed true"), shown
        assert "data: [DONE]" in shown and '"content"' in shown
        assert len(azure.requests()) == before + 1
        browser.get(other.url)
        assert page_result(browser).startswith("blocked: TypeError")
        assert len(azure.requests()) == before + 1  # the preflight failed: the POST was never sent
    finally:
        browser.quit()
        allowed.stop()
        other.stop()
