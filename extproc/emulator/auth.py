"""Azure OpenAI's two ways to authenticate: a resource key or an Entra ID bearer token."""

from __future__ import annotations

import hmac
from typing import Mapping

from .errors import unauthorized
from .settings import EmulatorSettings

V1_PREFIX = "/openai/v1/"


def _matches(candidate: str, accepted: tuple[str, ...]) -> bool:
    # Constant-time compare: cheap, and keeps the emulator from teaching bad habits.
    return any(hmac.compare_digest(candidate.encode(), value.encode()) for value in accepted)


def check_auth(headers: Mapping[str, str], path: str, settings: EmulatorSettings) -> None:
    """Raise Azure's 401 unless the request carries an accepted credential."""
    api_key = headers.get("api-key")
    if api_key is not None and _matches(api_key, settings.api_keys):
        return
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        accepted = settings.bearer_tokens
        # The v1 API is called with the plain OpenAI SDK, which sends the resource key as a bearer token.
        if path.startswith(V1_PREFIX):
            accepted = accepted + settings.api_keys
        if _matches(token.strip(), accepted):
            return
    raise unauthorized()
