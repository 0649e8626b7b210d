"""Azure OpenAI's two ways to authenticate: a resource key or an Entra ID bearer token;
and OpenAI's one, a bearer API key, for `openai_api` mode."""

from __future__ import annotations

import hmac
from typing import Mapping

import jwt

from .errors import local_auth_disabled, openai_unauthorized, token_unauthorized, unauthorized
from .settings import EmulatorSettings

V1_PREFIX = "/openai/v1/"
ENTRA_AUDIENCE = "https://cognitiveservices.azure.com"


def _matches(candidate: str, accepted: tuple[str, ...]) -> bool:
    # Constant-time compare: cheap, and keeps the emulator from teaching bad habits.
    return any(hmac.compare_digest(candidate.encode(), value.encode()) for value in accepted)


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def check_auth(headers: Mapping[str, str], path: str, settings: EmulatorSettings) -> None:
    """Raise Azure's 401 (OpenAI's in `openai_api` mode) unless the request carries an accepted credential."""
    token = _bearer(headers)
    if settings.openai_api:
        # OpenAI knows neither `api-key` nor Entra tokens: only an API key as a bearer token.
        if token is None or not _matches(token, settings.api_keys):
            raise openai_unauthorized(token)
        return
    api_key = headers.get("api-key")
    if api_key is not None and settings.local_auth_disabled:
        raise local_auth_disabled()
    if api_key is not None and _matches(api_key, settings.api_keys):
        return
    if token is not None and settings.entra_public_key_pem is not None:
        if not _valid_entra_token(token, settings.entra_public_key_pem):
            raise token_unauthorized()
        return
    if token is not None:
        accepted = settings.bearer_tokens
        # The v1 API is called with the plain OpenAI SDK, which sends the resource key as a bearer token.
        if path.startswith(V1_PREFIX):
            accepted = accepted + settings.api_keys
        if _matches(token, accepted):
            return
    raise unauthorized()


def _valid_entra_token(token: str, public_key_pem: bytes) -> bool:
    """An Entra ID access token for Azure OpenAI: signed by the key, for its audience, within its lifetime."""
    try:
        jwt.decode(token, public_key_pem, algorithms=["RS256"], audience=ENTRA_AUDIENCE,
                   options={"require": ["exp", "aud"]})
    except jwt.InvalidTokenError:
        return False
    return True
