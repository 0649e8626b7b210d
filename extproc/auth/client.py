"""What the client presented as its credential, and whose key it is (`clients.keys`)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Mapping

KEY_PREFIX = "sk-aoai-"


def presented_key(authorization: str, api_key: str) -> str | None:
    """The client's key: `Authorization: Bearer KEY` (OpenAI SDKs), else `api-key: KEY` (AzureOpenAI
    clients); None when it sent neither."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return api_key or None


def authorization_scheme(authorization: str) -> str:
    """The scheme of an `Authorization` header (`Basic`, ...), for telling the client what was wrong."""
    return authorization.strip().partition(" ")[0]


@dataclass(frozen=True, slots=True)
class Client:
    """A client the gateway knows by its key: `name` keys its rate limit in Envoy, `models` (None: every
    model) is what it may use."""

    name: str
    models: frozenset[str] | None = None


class ClientKeys:
    """The configured client keys, held as SHA-256 digests only (the keys themselves are never stored)."""

    def __init__(self, by_digest: Mapping[str, Client]) -> None:
        self._by_digest = dict(by_digest)

    def identify(self, authorization: str, api_key: str) -> Client | None:
        """The client whose key the request presents (Bearer or `api-key`), None for none or an unknown
        one. The lookup is by the key's digest, so its timing tells nothing about the key's bytes."""
        key = presented_key(authorization, api_key)
        if key is None:
            return None
        return self._by_digest.get(key_digest(key))


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    """A new random client key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)
