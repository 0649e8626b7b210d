"""The settings' Entra ID credential -> azure-identity's asyncio credential. Nothing here talks to the network."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from azure.core.credentials_async import AsyncTokenCredential

from ..auth.keyfiles import CredentialError, read_key_file
from ..config.schema import EntraSettings


def client_secret(entra: EntraSettings, env: Mapping[str, str]) -> str:
    """A service principal's secret, from the variable or the file the settings name (never from the file itself)."""
    if entra.client_secret_env is not None:
        secret = env.get(entra.client_secret_env, "").strip()
        if not secret:
            raise CredentialError(f"entra.client_secret_env: the variable {entra.client_secret_env} is not set")
        return secret
    assert entra.client_secret_file is not None  # the schema requires one of the two
    secret = read_key_file(entra.client_secret_file, "entra.client_secret_file")
    if secret is None:
        raise CredentialError(f"entra.client_secret_file: {entra.client_secret_file} is empty")
    return secret


def check(entra: EntraSettings, env: Mapping[str, str] | None = None) -> None:
    """Raise CredentialError for what the credential needs and does not have at start (a secret, a file)."""
    kind = entra.resolved_kind
    if kind == "client_secret":
        client_secret(entra, os.environ if env is None else env)
    elif kind == "certificate":
        assert entra.certificate_file is not None
        if not Path(entra.certificate_file).is_file():
            raise CredentialError(f"entra.certificate_file: {entra.certificate_file} is not a readable file")


def make_credential(entra: EntraSettings, env: Mapping[str, str] | None = None) -> AsyncTokenCredential:
    """azure-identity's credential for `entra` (its own environment variables fill what the settings leave out:
    AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST, IDENTITY_ENDPOINT...)."""
    from azure.identity.aio import (
        CertificateCredential,
        ClientSecretCredential,
        DefaultAzureCredential,
        ManagedIdentityCredential,
        WorkloadIdentityCredential,
    )

    kind = entra.resolved_kind
    options: dict[str, Any] = {"authority": entra.authority_host} if entra.authority_host else {}
    if kind == "client_secret":
        return ClientSecretCredential(entra.tenant_id, entra.client_id,
                                      client_secret(entra, os.environ if env is None else env), **options)
    if kind == "certificate":
        return CertificateCredential(entra.tenant_id, entra.client_id, str(entra.certificate_file), **options)
    if kind == "managed_identity":
        return ManagedIdentityCredential(client_id=entra.managed_identity_client_id)
    if kind == "workload_identity":
        return WorkloadIdentityCredential(tenant_id=entra.tenant_id, client_id=entra.client_id, **options)
    if entra.managed_identity_client_id is not None:
        options["managed_identity_client_id"] = entra.managed_identity_client_id
    return DefaultAzureCredential(**options)
