"""What the client presented as its credential, and whose key it is (`clients.keys`)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Mapping

from .keyfiles import KeyFile

KEY_PREFIX = "sk-aoai-"
# The client key's name, from the ext_proc to Envoy (its rate limit and access log read it, then it is removed).
CLIENT_HEADER = "x-aoai-client"


def presented_key(authorization: str, api_key: str) -> str | None:
    """The client's key: `Authorization: Bearer KEY` (OpenAI SDKs), else `api-key: KEY` (AzureOpenAI
    clients); None when it sent neither."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return api_key or None


def proxy_key(proxy_authorization: str) -> str | None:
    """The client key on a forward-proxy CONNECT: `Proxy-Authorization: Basic base64(NAME:KEY)` (what clients send
    for a proxy URL `http://NAME:KEY@gateway:8080`; the name is not checked, a key alone as the user works too) or
    `Bearer KEY`; None when there is none."""
    scheme, _, token = proxy_authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer":
        return token or None
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8
        return None
    return password or user or None


def authorization_scheme(authorization: str) -> str:
    """The scheme of an `Authorization` header (`Basic`, ...), for telling the client what was wrong."""
    return authorization.strip().partition(" ")[0]


@dataclass(frozen=True, slots=True)
class Client:
    """A client the gateway knows by its key: `name` keys its rate limit in Envoy, `models` (None: every
    model) is what it may use."""

    name: str
    models: frozenset[str] | None = None
    spend_slot: int = -1  # with a token limit: its slot on the usage process's spend board; -1: none


class ClientKeys:
    """The configured client keys, held as SHA-256 digests only (the keys themselves are never stored). Keys
    read from files (`files`, each with its client) are read again by `refresh()` when a file changes (the
    worker's timer, auth/keyfiles.py): a rotated key works, the old one no longer does."""

    def __init__(self, by_digest: Mapping[str, Client], files: Mapping[KeyFile, Client] | None = None) -> None:
        self._by_digest = dict(by_digest)
        self._files = dict(files or {})

    @property
    def has_files(self) -> bool:
        return bool(self._files)

    def refresh(self) -> bool:
        """Re-read the key files that changed; True when a key did."""
        changed = {}
        for file in self._files:
            old = file.key
            if file.refresh() and old is not None and file.key is not None:
                changed[key_digest(old)] = key_digest(file.key)
        if not changed:
            return False
        # One assignment: a request sees the old map or the new one.
        self._by_digest = {changed.get(digest, digest): client for digest, client in self._by_digest.items()}
        return True

    def identify(self, authorization: str, api_key: str) -> Client | None:
        """The client whose key the request presents (Bearer or `api-key`), None for none or an unknown
        one. The lookup is by the key's digest, so its timing tells nothing about the key's bytes."""
        key = presented_key(authorization, api_key)
        if key is None:
            return None
        return self._by_digest.get(key_digest(key))

    def identify_key(self, key: str) -> Client | None:
        """The client whose key this is (a CONNECT's, from `proxy_key`), None for an unknown one."""
        return self._by_digest.get(key_digest(key))


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    """A new random client key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)
