"""Entra ID to Azure through the real Envoy, the real azure-identity and the emulator in its Entra ID mode (it
checks each bearer token's signature, audience and expiry, and refuses api-key like a resource with local auth
disabled). The token endpoints are local fakes (tests/e2e/entra_fakes.py): IMDS, App Service, workload identity's
federated exchange and a service principal's client secret. What reached the emulator says which token came."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator

import jwt
import openai
import pytest

from extproc.emulator import EmulatorSettings

from .conftest import CLIENT_KEY, DEPLOYMENTS, EmulatorThread, Gateway, start_gateway, stop_gateway
from .entra_fakes import APP_SERVICE_PATH, IDENTITY_HEADER, TENANT, FakeEntra, RunningFake

MESSAGES = [{"role": "user", "content": "Hello"}]
SP_CLIENT_ID = "11111111-2222-4333-8444-555555555555"
MI_CLIENT_ID = "99999999-8888-4777-8666-555555555555"


@pytest.fixture(scope="module")
def fake(upstream_pki) -> Iterator[tuple[FakeEntra, RunningFake]]:
    entra = FakeEntra()
    running = entra.start(str(upstream_pki.server_cert), str(upstream_pki.server_key))
    yield entra, running
    running.stop()


@pytest.fixture(scope="module")
def entra_azure(upstream_pki, fake) -> Iterator[EmulatorThread]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(upstream_pki.server_cert, upstream_pki.server_key)
    emulator = EmulatorThread(EmulatorSettings(deployments=DEPLOYMENTS, ssl_context=context,
                                               entra_public_key_pem=fake[0].public_pem, local_auth_disabled=True))
    yield emulator
    emulator.stop()


def _gateway(tmp_path_factory, azure: EmulatorThread, upstream_pki, entra: str, env: dict[str, str],
             workers: int = 2) -> Gateway:
    return start_gateway(tmp_path_factory.mktemp("entra"), azure.url, upstream_pki.ca_cert,
                         azure=f"{{api_version: '2024-10-21', auth: entra{', entra: ' + entra if entra else ''}}}",
                         extproc=f"{{workers: {workers}}}",
                         # No Azure key for the gateway; azure-identity trusts the fakes' test CA (its aiohttp
                         # transport reads SSL_CERT_FILE, as in a container with a corporate CA).
                         env={"AZURE_OPENAI_API_KEY": "", "SSL_CERT_FILE": str(upstream_pki.ca_cert), **env})


def _flavours(url: str, tmp_path_factory) -> dict[str, tuple[str, dict[str, str]]]:
    federated = tmp_path_factory.mktemp("wi") / "token"
    federated.write_text("federated-service-account-token")
    return {
        # AKS pod / VM: IMDS, a user-assigned identity picked by its client id.
        "imds": (f"{{managed_identity_client_id: {MI_CLIENT_ID}}}", {"AZURE_POD_IDENTITY_AUTHORITY_HOST": url}),
        # App Service / Functions / Container Apps: their identity endpoint.
        "app_service": ("{kind: managed_identity}", {"IDENTITY_ENDPOINT": url + APP_SERVICE_PATH,
                                                     "IDENTITY_HEADER": IDENTITY_HEADER}),
        # AKS workload identity: what its webhook puts in the pod's environment; DefaultAzureCredential finds it.
        "workload_identity": ("", {"AZURE_AUTHORITY_HOST": url, "AZURE_TENANT_ID": TENANT,
                                   "AZURE_CLIENT_ID": SP_CLIENT_ID, "AZURE_FEDERATED_TOKEN_FILE": str(federated)}),
        # A service principal with a secret, against its authority.
        "client_secret": (f"{{tenant_id: '{TENANT}', client_id: '{SP_CLIENT_ID}', client_secret_env: SP_SECRET, "
                          f"authority_host: '{url}'}}", {"SP_SECRET": "sp-secret-value"}),
    }


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.mark.parametrize("flavour", ["imds", "app_service", "workload_identity", "client_secret"])
def test_each_flavour_reaches_azure_with_its_token_and_nothing_else(
        tmp_path_factory, upstream_pki, fake, entra_azure: EmulatorThread, flavour: str) -> None:
    entra, running = fake
    settings, env = _flavours(running.url, tmp_path_factory)[flavour]
    asked_before = len(entra.of(flavour))
    gateway = _gateway(tmp_path_factory, entra_azure, upstream_pki, settings, env)
    try:
        before = len(entra_azure.requests())
        # A client's own copy of the internal header the token travels in is removed on arrival.
        with openai.OpenAI(base_url=gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0,
                           default_headers={"x-aoai-upstream-authorization": "Bearer forged"}) as client:
            for _ in range(3):  # two workers: both use the gateway's one token
                assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices  # type: ignore[arg-type]
                assert client.embeddings.create(model="text-embedding-3-small", input="x").data
            stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        arrived = entra_azure.requests()[before:]
        assert len(arrived) == 7
        tokens = {r.headers["authorization"].removeprefix("Bearer ") for r in arrived}
        assert len(tokens) == 1 and all("api-key" not in r.headers for r in arrived)
        assert all("x-aoai-upstream-authorization" not in r.headers for r in arrived)
        claims = _claims(tokens.pop())
        assert claims["flavour"] == flavour and claims["aud"] == "https://cognitiveservices.azure.com"
        asked = entra.of(flavour)[asked_before:]
        assert len(asked) == 1  # one token for the whole gateway, not one per worker or request
        if flavour == "imds":
            assert asked[0].details["client_id"] == MI_CLIENT_ID
            assert asked[0].details["resource"] == "https://cognitiveservices.azure.com"
        if flavour in ("client_secret", "workload_identity"):
            assert asked[0].details["client_id"] == SP_CLIENT_ID
    finally:
        stop_gateway(gateway)
    log = gateway.log.read_text()
    assert CLIENT_KEY not in log and "sp-secret-value" not in log and "federated-service-account-token" not in log
    assert claims["jti"] not in log and "eyJ" not in log  # no token (a JWT starts eyJ) in any log line


def test_a_short_lived_token_is_replaced_before_it_expires_and_no_request_fails(
        tmp_path_factory, upstream_pki, fake, entra_azure: EmulatorThread) -> None:
    """Tokens of 40 s: azure-identity refreshes one at the earliest 30 s after the last (its own rule); the
    gateway asks again on that schedule and its workers take the new token before the old one expires."""
    entra, running = fake
    settings, env = _flavours(running.url, tmp_path_factory)["client_secret"]
    entra.lifetime_s = 40
    asked_before = len(entra.of("client_secret"))
    gateway = _gateway(tmp_path_factory, entra_azure, upstream_pki, settings, env)
    try:
        before = len(entra_azure.requests())
        deadline = time.monotonic() + 45
        with openai.OpenAI(base_url=gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
            while len({r.headers["authorization"] for r in entra_azure.requests()[before:]}) < 2:
                assert time.monotonic() < deadline, "no second token within 45 s"
                assert client.embeddings.create(model="text-embedding-3-small", input="x").data  # never a 503
                time.sleep(1)
    finally:
        stop_gateway(gateway)
        entra.lifetime_s = 3600
    assert len(entra.of("client_secret")) - asked_before == 2
    assert "new token" in gateway.log.read_text()


def test_a_token_endpoint_down_answers_503_logged_once_and_recovers(
        tmp_path_factory, upstream_pki, fake, entra_azure: EmulatorThread) -> None:
    entra, running = fake
    settings, env = _flavours(running.url, tmp_path_factory)["client_secret"]
    entra.down = True
    gateway = _gateway(tmp_path_factory, entra_azure, upstream_pki, settings, env, workers=1)
    try:
        before = len(entra_azure.requests())
        with openai.OpenAI(base_url=gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
            for _ in range(3):
                with pytest.raises(openai.InternalServerError) as raised:
                    client.embeddings.create(model="text-embedding-3-small", input="x")
                assert raised.value.status_code == 503
                error = raised.value.body
                assert error["code"] == "upstream_auth_unavailable"  # type: ignore[index]
                assert "service principal (client secret)" in error["message"]  # type: ignore[index]
                time.sleep(1)
            assert len(entra_azure.requests()) == before  # nothing without a token
            entra.down = False
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert client.embeddings.create(model="text-embedding-3-small", input="x").data
                    break
                except openai.InternalServerError:
                    assert time.monotonic() < deadline, "no token 30 s after the endpoint came back"
                    time.sleep(0.5)
    finally:
        stop_gateway(gateway)
        entra.down = False
    log = gateway.log.read_text()
    assert log.count("no token for") == 1, log  # once per failure streak, not per attempt or request
    assert "a token again after" in log
