"""What a web page the user happens to visit can do to a gateway on their machine: nothing. A page on another
site may send a "simple" POST (text/plain, no preflight) to http://127.0.0.1:8080, and a site that rebinds
its DNS name to 127.0.0.1 reads the answers as its own; both would spend the gateway's Azure key. Envoy
refuses them (its rbac filter) before anything reaches Python or Azure: the emulator's journal says so."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator

import httpx
import pytest

from .browser import PageServer, chromium, page_result
from .conftest import EmulatorThread, Gateway, start_gateway, stop_gateway

APP_ORIGIN = "http://chat-app.localhost:3000"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, azure: EmulatorThread, upstream_pki) -> Iterator[Gateway]:
    # The default: loopback, the gateway's own Azure key, no client keys; one browser app allowed.
    gw = start_gateway(tmp_path_factory.mktemp("browser-guard"), azure.url, upstream_pki.ca_cert,
                       cors=f"{{allowed_origins: ['{APP_ORIGIN}']}}",
                       listen_options="allowed_hosts: [gateway.internal]")
    yield gw
    stop_gateway(gw)


# A page on another site: the POST a browser sends without asking (no-cors, text/plain), and a form post.
ATTACK_PAGE = """<!doctype html><html><body><pre id="out">running</pre>
<form id="f" method="POST" action=GATEWAY_CHAT enctype="text/plain" target="sink">
<input name='{"model": "gpt-4o", "messages": [{"role": "user", "content": "spent", "x": "' value='"}], "y": 1}'>
</form><iframe name="sink"></iframe><script>
(async () => {
  const out = document.getElementById("out");
  try {
    await fetch(GATEWAY_CHAT, {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                               body: JSON.stringify(CHAT)});
    document.getElementById("f").submit();
    await new Promise((resolve) => setTimeout(resolve, 1000));  // the form's answer loads into the iframe
    out.textContent = "sent";
  } catch (error) {
    out.textContent = "error: " + error;
  }
})();
</script></body></html>"""


def test_a_page_on_another_site_cannot_spend_the_key_with_simple_posts(gateway: Gateway, azure: EmulatorThread) -> None:
    """Real headless Chromium: the no-cors fetch and the text/plain form are sent (no preflight stops them), and
    Envoy refuses both on the page's Origin; without that, both bodies parse as JSON and reach Azure."""
    chat_url = json.dumps(gateway.http_url + "/v1/chat/completions")
    page = ATTACK_PAGE.replace("GATEWAY_CHAT", chat_url).replace("CHAT", json.dumps(CHAT))
    site = PageServer(page)
    browser = chromium()
    already = gateway.log.read_text().count("foreign-origin")  # other tests' refusals in the shared log
    try:
        before = len(azure.requests())
        browser.get(site.url)
        assert page_result(browser) == "sent"
        assert len(azure.requests()) == before
    finally:
        browser.quit()
        site.stop()
    # Both reached Envoy and were refused there (the access log's 403s carry the rbac details; Envoy writes
    # its log in batches).
    deadline = time.monotonic() + 10
    while (refused := gateway.log.read_text().count("foreign-origin") - already) < 2:
        assert time.monotonic() < deadline, refused
        time.sleep(0.2)
    assert len(azure.requests()) == before


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://chat-app.localhost:3001",
                                    "http://127.0.0.1:3000"])
def test_a_request_from_an_origin_not_allowed_is_refused_openai_shaped(
        gateway: Gateway, azure: EmulatorThread, origin: str) -> None:
    before = len(azure.requests())
    with httpx.Client(base_url=gateway.http_url) as http:
        for response in (http.post("/v1/chat/completions", headers={"Origin": origin, "Content-Type": "text/plain"},
                                   content=json.dumps(CHAT)),
                         http.get("/v1/models", headers={"Origin": origin})):
            assert response.status_code == 403
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"]["code"] == "origin_not_allowed"
            assert "cors.allowed_origins" in response.json()["error"]["message"]
    assert len(azure.requests()) == before


def test_server_side_clients_and_the_allowed_origin_are_served(gateway: Gateway, azure: EmulatorThread) -> None:
    with httpx.Client(base_url=gateway.http_url) as http:
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200  # no Origin: not a browser
        answer = http.post("/v1/chat/completions", json=CHAT, headers={"Origin": APP_ORIGIN})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == APP_ORIGIN
    assert azure.last().path.startswith("/openai/deployments/")


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}", "localhost.attacker.example:{port}",
                                  "127.0.0.1.nip.io:{port}", "gateway.internal.attacker.example", "[::2]:{port}"])
def test_a_foreign_host_name_is_refused_on_a_loopback_gateway(
        gateway: Gateway, azure: EmulatorThread, host: str) -> None:
    """DNS rebinding: the page's own site name, now resolving to 127.0.0.1, is in the Host header."""
    port = gateway.http_url.rsplit(":", 1)[1]
    before = len(azure.requests())
    with httpx.Client(base_url=gateway.http_url) as http:
        headers = {"Host": host.format(port=port)}
        for response in (http.get("/v1/models", headers=headers), http.get("/v1/files", headers=headers),
                         http.post("/v1/chat/completions", json=CHAT, headers=headers)):
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "host_not_allowed"
    assert len(azure.requests()) == before


@pytest.mark.parametrize("host", ["localhost:{port}", "LOCALHOST", "localhost.", "app.localhost:{port}",
                                  "127.0.0.1:{port}", "127.1.2.3", "[::1]:{port}", "gateway.internal:{port}",
                                  "Gateway.Internal"])
def test_loopback_names_and_allowed_hosts_are_served(gateway: Gateway, host: str) -> None:
    port = gateway.http_url.rsplit(":", 1)[1]
    with httpx.Client(base_url=gateway.http_url) as http:
        assert http.get("/v1/models", headers={"Host": host.format(port=port)}).status_code == 200


def test_https_is_guarded_the_same(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.https_url, verify=ssl.create_default_context(cafile=gateway.ca_file)) as http:
        assert http.get("/v1/models").status_code == 200
        assert http.get("/v1/models", headers={"Origin": "http://evil.example"}).status_code == 403
