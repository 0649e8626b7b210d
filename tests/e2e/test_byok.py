"""Bring your own key (the Node proxy's RESOURCE:DEPLOYMENT:KEY) through the real Envoy: its dynamic forward proxy
resolves RESOURCE.<suffix> with a DNS server the test runs (no real DNS) and connects to the emulator over TLS,
the certificate checked against that name. The gateway never connects to a host the client spells out."""

from __future__ import annotations

import socketserver
import ssl
import threading
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import httpx
import openai
import pytest

from extproc.emulator import EmulatorSettings
from extproc.envoy_config.devtls import ensure_dev_certificates

from .conftest import DEPLOYMENTS, SERVER_KEY, EmulatorThread, Gateway, start_gateway, stop_gateway

SUFFIX = "openai.azure.test"
BYOK_KEY = "0123456789abcdef0123456789abcdef"  # a resource key's shape: 32 hex digits
MESSAGES = [{"role": "user", "content": "Hello"}]


class FakeDns:
    """Answers A queries for names under SUFFIX with 127.0.0.1 (the emulator), NXDOMAIN for the rest
    (`missing.` resources too); records every name asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                query = dns.message.from_wire(data)
                response = dns.message.make_response(query)
                question = query.question[0]
                name = question.name.to_text().rstrip(".")
                fake.asked.append(name)
                if not name.endswith("." + SUFFIX) or name.startswith("missing."):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                elif question.rdtype == dns.rdatatype.A:
                    response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", "127.0.0.1"))
                sock.sendto(response.to_wire(), self.client_address)

        self.server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def resources(tmp_path_factory) -> Iterator[tuple[EmulatorThread, FakeDns, object]]:
    """Every client's "own resource" is this emulator, whose certificate covers *.openai.azure.test."""
    pki = ensure_dev_certificates(tmp_path_factory.mktemp("byok-pki"), extra_names=(f"*.{SUFFIX}",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    emulator = EmulatorThread(EmulatorSettings(api_keys=(BYOK_KEY,), deployments=DEPLOYMENTS, ssl_context=context))
    resolver = FakeDns()
    yield emulator, resolver, pki
    resolver.stop()
    emulator.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, azure: EmulatorThread, upstream_pki, resources) -> Iterator[Gateway]:
    emulator, resolver, pki = resources
    port = emulator.url.rsplit(":", 1)[1]
    gw = start_gateway(tmp_path_factory.mktemp("byok"), azure.url, upstream_pki.ca_cert,
                       clients=f"{{byok: {{host_suffix: {SUFFIX}, port: {port}, ca_file: '{pki.ca_cert}', "
                               f"dns_resolver: '{resolver.address}'}}}}")
    yield gw
    stop_gateway(gw)
    assert BYOK_KEY not in gw.log.read_text()


def _client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.http_url + "/v1", api_key=key, max_retries=0)


def test_a_clients_own_resource_deployment_and_key(gateway: Gateway, resources, azure: EmulatorThread) -> None:
    emulator, resolver, _ = resources
    before, gateways_own = len(emulator.requests()), len(azure.requests())
    with _client(gateway, f"contoso:prod-chat:{BYOK_KEY}") as client:
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert answer.choices[0].message.content
        stream = client.chat.completions.create(model="anything", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    arrived = emulator.requests()[before:]
    assert [r.path for r in arrived] == ["/openai/deployments/prod-chat/chat/completions"] * 2  # one deployment for all
    for request in arrived:
        assert request.headers["api-key"] == BYOK_KEY and "authorization" not in request.headers
        assert request.headers["host"].startswith(f"contoso.{SUFFIX}:")
        assert request.query["api-version"] == ["2024-10-21"]
    assert f"contoso.{SUFFIX}" in resolver.asked
    assert len(azure.requests()) == gateways_own  # the gateway's own resource saw nothing


def test_a_model_map_and_an_api_version_in_the_key(gateway: Gateway, resources) -> None:
    emulator, _, _ = resources
    key = f"Contoso:gpt-4o|prod-chat,text-embedding-3-small|prod-embed:{BYOK_KEY}:2025-01-01-preview"
    before = len(emulator.requests())
    with _client(gateway, key) as client:
        assert client.embeddings.create(model="text-embedding-3-small", input="x").data
        with pytest.raises(openai.NotFoundError) as raised:
            client.chat.completions.create(model="gpt-4-turbo", messages=MESSAGES)  # type: ignore[arg-type]
        assert raised.value.body["code"] == "model_not_found"  # type: ignore[index]
    (request,) = emulator.requests()[before:]
    assert request.path == "/openai/deployments/prod-embed/embeddings"
    assert request.query["api-version"] == ["2025-01-01-preview"]
    assert request.headers["host"].startswith(f"contoso.{SUFFIX}:")  # lower-cased, as DNS names are


# Each is refused for its resource part alone (the key and the number of parts are well formed).
@pytest.mark.parametrize("resource", ["evil.example", "127.0.0.1", "a..b", "-contoso", "contoso-", "con_toso",
                                      "contoso.openai.azure.test", "x" * 65, "contoso/..", "contoso%2f",
                                      "contoso@evil.example", "[127.0.0.1]", ""])
def test_a_host_the_client_spells_out_is_never_connected_to(gateway: Gateway, resources, resource: str) -> None:
    emulator, resolver, _ = resources
    before, asked = len(emulator.requests()), len(resolver.asked)
    with httpx.Client(base_url=gateway.http_url) as http:
        response = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES},
                             headers={"Authorization": f"Bearer {resource}:prod-chat:{BYOK_KEY}"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert BYOK_KEY not in response.text
    assert len(emulator.requests()) == before and len(resolver.asked) == asked


def test_a_resource_that_does_not_resolve_is_an_openai_shaped_503(gateway: Gateway, resources) -> None:
    emulator, resolver, _ = resources
    before = len(emulator.requests())
    with httpx.Client(base_url=gateway.http_url) as http:
        response = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES},
                             headers={"Authorization": f"Bearer missing:prod-chat:{BYOK_KEY}"})
    assert response.status_code == 503 and response.json()["error"]["type"] == "server_error"
    assert f"missing.{SUFFIX}" in resolver.asked and len(emulator.requests()) == before


def test_other_endpoints_and_ordinary_keys(gateway: Gateway, azure: EmulatorThread, resources) -> None:
    with _client(gateway, f"contoso:prod-chat:{BYOK_KEY}") as client:
        with pytest.raises(openai.NotFoundError):
            client.files.list()
    before = len(azure.requests())
    with _client(gateway, "an-ordinary-key") as client:  # no `:`: the gateway's own resource and key
        # (and the gateway's internal header for an Entra ID token, sent by a client, is removed on arrival)
        assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                              extra_headers={"x-aoai-upstream-authorization": "Bearer forged"}).choices
    arrived = azure.requests()[before]
    assert arrived.headers["api-key"] == SERVER_KEY
    assert "authorization" not in arrived.headers and "x-aoai-upstream-authorization" not in arrived.headers
    # An AzureOpenAI client sends its key as api-key: the same key format works there.
    emulator, _, _ = resources
    before = len(emulator.requests())
    with httpx.Client(base_url=gateway.http_url) as http:
        response = http.post("/v1/embeddings", json={"model": "m", "input": "x"},
                             headers={"api-key": f"contoso:prod-embed:{BYOK_KEY}"})
    assert response.status_code == 200 and emulator.requests()[before].headers["api-key"] == BYOK_KEY
