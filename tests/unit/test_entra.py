"""Entra ID to Azure without Envoy: the settings, the credentials azure-identity is given, the token keeper's
schedule and failure logging, the workers' token reader, the ext_proc's and Envoy's handling of the token.
Through the real Envoy, azure-identity and fakes of the token endpoints: tests/e2e/test_entra.py."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from pathlib import Path

import orjson
import pytest

from extproc import envoy_config
from extproc.auth.keyfiles import CredentialError
from extproc.auth.upstream import EntraToken, TokenUnavailable
from extproc.compile import compile_gateway
from extproc.config import ConfigError, load_settings
from extproc.core.decision import AwaitBody, Forward, Reply, RequestHead
from extproc.core.translator import Translator
from extproc.identity import credentials as entra_credentials
from extproc.identity.keeper import TokenKeeper, backoff, next_check, publish
from extproc.processor.messages import body_forward_response

AZURE = "azure: {endpoint: 'https://m.openai.azure.com', auth: entra}"


def settings(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    path = tmp_path / "gateway.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nlisten: {{https_port: null}}\n{text}\n")
    return load_settings(path, env=env or {})


@pytest.mark.parametrize(("entra", "label"), [
    ("", "DefaultAzureCredential"),
    ("{managed_identity_client_id: abc}", "managed identity"),
    ("{kind: managed_identity}", "managed identity"),
    ("{kind: workload_identity}", "workload identity"),
    ("{tenant_id: t, client_id: c, client_secret_env: S}", "service principal (client secret)"),
    ("{tenant_id: t, client_id: c, certificate_file: /x.pem}", "service principal (certificate)"),
])
def test_the_kind_of_credential_is_said_or_inferred(tmp_path: Path, entra: str, label: str) -> None:
    text = AZURE if not entra else AZURE.replace("auth: entra", f"entra: {entra}")  # an entra: section says it
    loaded = settings(tmp_path, text)
    assert loaded.azure.auth == "entra"
    (credential,) = loaded.entra_credentials
    assert credential.label == label
    assert settings(tmp_path, text).token_path(credential) == loaded.socket_dir / "entra-0.token"


@pytest.mark.parametrize(("text", "message"), [
    (AZURE.replace("auth: entra", "auth: entra, api_key: k"), "not a key"),
    ("azure: {endpoint: 'https://m.openai.azure.com', auth: api_key, entra: {kind: managed_identity}}", "auth is api_key"),
    (AZURE.replace("auth: entra", "entra: {client_secret_env: S}"), "tenant_id and client_id"),
    (AZURE.replace("auth: entra", "entra: {kind: client_secret, tenant_id: t, client_id: c}"), "client_secret_env"),
    (AZURE.replace("auth: entra", "entra: {kind: workload_identity, managed_identity_client_id: x}"), "managed_identity_client_id"),
    (AZURE.replace("auth: entra", "entra: {tenant_id: t, client_id: c, client_secret_env: S, client_secret_file: f}"), "not both"),
    (AZURE.replace("auth: entra", "entra: {authority_host: 'http://login.example'}"), "https"),
    (AZURE + "\nbackends: {o: {endpoint: 'https://api.openai.com', type: openai, auth: entra}}", "openai-type"),
])
def test_bad_entra_settings_are_refused_at_start_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, text)


def test_the_single_backend_variable_and_its_key_conflict(tmp_path: Path) -> None:
    text = "azure: {endpoint: 'https://m.openai.azure.com'}"
    assert settings(tmp_path, text, {"AZURE_OPENAI_AUTH": "entra"}).azure.entra_credential is not None
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY"):
        settings(tmp_path, text, {"AZURE_OPENAI_AUTH": "entra", "AZURE_OPENAI_API_KEY": "k"})


def test_backends_with_one_credential_share_its_token_and_count_as_holding_one(tmp_path: Path) -> None:
    loaded = settings(tmp_path, AZURE + "\nbackends: {east: {endpoint: 'https://e.openai.azure.com', auth: entra},"
                                        " west: {endpoint: 'https://w.openai.azure.com', entra: {kind: managed_identity}}}"
                                        "\nclients: {keys: [{name: a, key_sha256: '" + "0" * 64 + "'}]}")
    assert [c.label for c in loaded.entra_credentials] == ["DefaultAzureCredential", "managed identity"]
    # Beyond loopback a gateway holding Entra ID credentials needs client keys, as with keys.
    with pytest.raises(ConfigError, match="client keys"):
        settings(tmp_path, AZURE + "\nlisten: {address: 0.0.0.0, https_port: null}")


def test_azure_identity_gets_the_credential_the_settings_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity.aio import (
        CertificateCredential, ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential,
        WorkloadIdentityCredential)

    def made(entra: str, env: dict[str, str] | None = None) -> object:
        (credential,) = settings(tmp_path, AZURE.replace("auth: entra", f"entra: {entra}")).entra_credentials
        return entra_credentials.make_credential(credential, env)

    assert isinstance(made("{kind: default}"), DefaultAzureCredential)
    assert isinstance(made("{managed_identity_client_id: abc}"), ManagedIdentityCredential)
    # What AKS's webhook puts in the pod's environment fills what the settings leave out.
    (tmp_path / "federated").write_text("sa-token")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(tmp_path / "federated"))
    monkeypatch.setenv("AZURE_TENANT_ID", "t")
    monkeypatch.setenv("AZURE_CLIENT_ID", "c")
    assert isinstance(made("{kind: workload_identity}"), WorkloadIdentityCredential)
    assert isinstance(made("{tenant_id: t, client_id: c, client_secret_env: S}", {"S": "s3cret"}), ClientSecretCredential)
    pem = tmp_path / "sp.pem"
    _write_self_signed(pem)
    assert isinstance(made(f"{{tenant_id: t, client_id: c, certificate_file: '{pem}'}}"), CertificateCredential)
    with pytest.raises(CredentialError, match="S is not set"):
        made("{tenant_id: t, client_id: c, client_secret_env: S}", {})
    (missing,) = settings(tmp_path, AZURE.replace("auth: entra", "entra: {tenant_id: t, client_id: c, "
                                                  "certificate_file: /nowhere.pem}")).entra_credentials
    with pytest.raises(CredentialError, match="nowhere.pem"):
        entra_credentials.check(missing)


def _write_self_signed(path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sp")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(("expires_in", "refresh_in", "wait"), [
    (3600, None, 3300),  # azure-identity's own window: five minutes before expiry
    (7200, 3600, 3600),  # Entra's refresh_in, when it sends one
    (40, None, 10),  # short-lived: asked again soon (the library answers from its cache until it refreshes)
    (2, None, 1),  # never a busy loop
])
def test_the_token_is_asked_for_again_on_azure_identitys_schedule(expires_in: int, refresh_in: int | None, wait: float) -> None:
    now = 1_000_000.0
    assert next_check(now + expires_in, now + refresh_in if refresh_in else None, now) == pytest.approx(wait)
    assert [backoff(n) for n in range(1, 7)] == [1, 2, 4, 8, 15, 15]


class _Credential:
    """Stands in for an azure-identity credential in the keeper's own logic (the real ones: tests/e2e)."""

    def __init__(self, outcomes: list) -> None:
        self.outcomes = outcomes

    async def get_token_info(self, scope: str):  # noqa: ANN201
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class _Info:
    def __init__(self, token: str, expires_on: float) -> None:
        self.token, self.expires_on, self.refresh_on = token, expires_on, None


async def test_failures_are_logged_once_per_streak_and_the_token_published_owner_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "entra-0.token"
    later = time.time() + 3600
    keeper = TokenKeeper(_Credential([RuntimeError("AADSTS7000215: Invalid client secret provided.\nmore"),
                                      RuntimeError("again"), _Info("tok-1", later), _Info("tok-1", later),
                                      RuntimeError("down")]), "scope/.default", path, "managed identity")
    caplog.set_level(logging.INFO, logger="extproc.identity.keeper")
    assert await keeper.once() == 1 and await keeper.once() == 2  # backoff
    assert not path.exists()
    await keeper.once()
    assert orjson.loads(path.read_bytes()) == {"token": "tok-1", "expires_on": later}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    published = path.stat().st_ino
    await keeper.once()  # the same token again: not written again
    assert path.stat().st_ino == published
    await keeper.once()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "AADSTS7000215" in errors[0] and "provided. more;" in errors[0]  # one line
    assert any("a token again after 2 failed attempts" in r.getMessage() for r in caplog.records)
    assert not any("tok-1" in r.getMessage() for r in caplog.records)


def test_workers_read_the_published_token_and_answer_503_without_one(tmp_path: Path) -> None:
    loaded = settings(tmp_path, AZURE + "\nmodels: {gpt-4o: chat}")
    (credential,) = loaded.entra_credentials
    path = loaded.token_path(credential)
    path.parent.mkdir(parents=True)
    translator = Translator(compile_gateway(loaded))

    def chat() -> Forward | Reply:
        decision = translator.on_headers(RequestHead("POST", "/v1/chat/completions", "application/json",
                                                     authorization="Bearer client", has_body=True))
        return decision.finish(b'{"model": "gpt-4o"}') if isinstance(decision, AwaitBody) else decision

    refused = chat()
    assert isinstance(refused, Reply) and refused.status == 503
    error = orjson.loads(refused.body)["error"]
    assert error["code"] == "upstream_auth_unavailable" and "DefaultAzureCredential" in error["message"]
    publish(path, "tok-1", time.time() + 3600)  # seen at once (a stat on the request while there is no token)
    forward = chat()
    assert isinstance(forward, Forward) and forward.credential == (("authorization", "Bearer tok-1"),)
    publish(path, "tok-2", time.time() + 3)  # within the margin of its expiry: not sent
    assert isinstance(EntraToken(path, "x").headers_for("", ""), TokenUnavailable)


def test_the_token_passes_envoys_credential_removal_under_another_name(tmp_path: Path) -> None:
    response = body_forward_response(Forward("/p", (("authorization", "Bearer tok"),), "azure"))
    mutation = response.request_body.response.header_mutation
    assert {h.header.key: h.header.raw_value for h in mutation.set_headers}["x-aoai-upstream-authorization"] == b"Bearer tok"
    assert "authorization" in mutation.remove_headers  # the client's goes
    config = envoy_config.render(settings(tmp_path, AZURE), None)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    removal = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.header_mutation")
    mutations = removal["typed_config"]["mutations"]["request_mutations"]
    at = mutations.index({"remove": "authorization"})
    copy = next(i for i, m in enumerate(mutations) if "append" in m and m["append"]["header"]["key"] == "authorization")
    assert at < copy and mutations[copy]["append"]["header"]["value"] == "%REQ(x-aoai-upstream-authorization)%"
    assert mutations[copy + 1] == {"remove": "x-aoai-upstream-authorization"}
    early = hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
    assert {"remove": "x-aoai-upstream-authorization"} in early  # a client's copy never gets that far
    envoy_config.validate(envoy_config.write(config, tmp_path / "envoy.yaml"))
    without = orjson.dumps(envoy_config.render(settings(tmp_path, "azure: {endpoint: 'https://m.openai.azure.com',"
                                                                  " api_key: k}"), None))
    assert b"%REQ(x-aoai-upstream-authorization)%" not in without  # (clients' copies are still removed on arrival)
    assert b'{"remove":"x-aoai-upstream-authorization"}' in without


def test_a_pool_member_on_entra_gets_the_token_in_its_try(tmp_path: Path) -> None:
    loaded = settings(tmp_path, "azure: {endpoint: 'https://m.openai.azure.com', api_key: k}\nbackends: {east: "
                                "{endpoint: 'https://e.openai.azure.com', auth: entra}}\nmodels: {gpt-4o: "
                                "[{backend: default, deployment: a}, {backend: east, deployment: b}]}")
    (credential,) = loaded.entra_credentials
    loaded.socket_dir.mkdir(parents=True)
    publish(loaded.token_path(credential), "tok-east", time.time() + 3600)
    translator = Translator(compile_gateway(loaded, trips=None))
    decision = translator.on_headers(RequestHead("POST", "/v1/chat/completions", "application/json", has_body=True))
    assert isinstance(decision, AwaitBody)
    forward = decision.finish(b'{"model": "gpt-4o"}')
    assert isinstance(forward, Forward)
    assert [t.credential for t in forward.tries] == [(("api-key", "k"),), (("authorization", "Bearer tok-east"),)]


def test_the_ready_marker_is_made_after_the_first_attempts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first attempt that fails counts: the gateway starts, answering 503 until a token comes."""
    from extproc.identity import service

    loaded = settings(tmp_path, AZURE)
    loaded.socket_dir.mkdir(parents=True)
    attempts: list[bool] = []

    class Recording(_Credential):
        async def get_token_info(self, scope: str):  # noqa: ANN201
            attempts.append(loaded.entra_ready_path.exists())  # the marker is not there yet
            raise RuntimeError("the endpoint is down")

        async def close(self) -> None:
            attempts.append(True)

    monkeypatch.setattr(service, "make_credential", lambda entra: Recording([]))

    async def run() -> None:
        task = asyncio.create_task(service.serve_tokens(loaded))
        deadline = time.monotonic() + 10
        while not loaded.entra_ready_path.exists():
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert attempts == [False, True]  # one attempt, then the marker; the credential closed at the end
    assert not loaded.token_path(loaded.entra_credentials[0]).exists()


async def test_a_token_file_that_cannot_be_written_is_a_failed_attempt_not_the_end(tmp_path: Path) -> None:
    later = time.time() + 3600
    keeper = TokenKeeper(_Credential([_Info("tok-1", later), _Info("tok-1", later)]), "s", tmp_path / "no" / "dir" / "t",
                         "managed identity")
    assert await keeper.once() == 1 and keeper.failures == 1  # the folder is missing: retried
    (tmp_path / "no" / "dir").mkdir(parents=True)
    assert await keeper.once() > 1000 and keeper.failures == 0


async def test_waits_follow_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    from extproc.identity import keeper

    monkeypatch.setattr(keeper, "SLEEP_SLICE_S", 0.02)
    now = [1000.0]
    await asyncio.wait_for(keeper.sleep_until(now[0] - 5, lambda: now[0]), 1)  # past: at once
    waiting = asyncio.create_task(keeper.sleep_until(now[0] + 3600, lambda: now[0]))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    now[0] += 7200  # the host slept: the wall clock moved, asyncio's did not
    await asyncio.wait_for(waiting, 1)  # noticed at the next slice


def test_a_backend_without_a_token_fails_only_its_own_requests(tmp_path: Path) -> None:
    """The default backend on Entra ID without a token: a model on another backend is still served, and a pool
    member without one gets no try while the others serve."""
    loaded = settings(tmp_path, AZURE + "\nbackends: {east: {endpoint: 'https://e.openai.azure.com', api_key: k}}\n"
                                        "models: {gpt-4o: chat, cheap: [{backend: east, deployment: c}], "
                                        "both: [{backend: default, deployment: a}, {backend: east, deployment: b}]}")
    loaded.socket_dir.mkdir(parents=True)
    translator = Translator(compile_gateway(loaded, trips=None))

    def send(model: str) -> Forward | Reply:
        decision = translator.on_headers(RequestHead("POST", "/v1/chat/completions", "application/json", has_body=True))
        assert isinstance(decision, AwaitBody)
        return decision.finish(orjson.dumps({"model": model}))

    refused = send("gpt-4o")
    assert isinstance(refused, Reply) and refused.status == 503
    cheap = send("cheap")
    assert isinstance(cheap, Forward) and [t.credential for t in cheap.tries] == [(("api-key", "k"),)]
    both = send("both")
    assert isinstance(both, Forward) and [t.member for t in both.tries] == ["1"]  # member 0 has no token


@pytest.mark.parametrize(("entra", "message"), [
    ("{kind: managed_identity, client_id: x}", "managed_identity_client_id"),
    ("{client_id: x}", "takes no client_id"),
    ("{kind: managed_identity, authority_host: 'https://login.microsoftonline.us'}", "authority_host"),
])
def test_settings_that_would_quietly_mean_another_identity_are_refused(tmp_path: Path, entra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, AZURE.replace("auth: entra", f"entra: {entra}"))


def test_default_spelled_or_not_is_one_credential(tmp_path: Path) -> None:
    loaded = settings(tmp_path, AZURE + "\nbackends: {east: {endpoint: 'https://e.openai.azure.com', "
                                        "entra: {kind: default}}}")
    assert len(loaded.entra_credentials) == 1
