"""What the client presented as its credential, and whose key it is (`clients.keys`)."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)

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
    """The configured client keys, held as SHA-256 digests only (the keys themselves are never stored). Keys
    read from files (`files`: path -> the client and the digest read at start) are read again by `refresh()`
    when a file changes (the worker's timer): a rotated key works, the old one no longer does."""

    def __init__(self, by_digest: Mapping[str, Client], files: Mapping[Path, tuple[Client, str]] | None = None) -> None:
        self._by_digest = dict(by_digest)
        self._files = {path: [client, digest, _stamp(path)] for path, (client, digest) in (files or {}).items()}

    @property
    def has_files(self) -> bool:
        return bool(self._files)

    def refresh(self) -> bool:
        """Re-read the key files that changed; True when one did. A file that is missing, unreadable or empty
        keeps the key read before (logged once per change of the file): a Secret being rewritten must not lock
        its client out."""
        changed = {}
        for path, entry in self._files.items():
            client, digest, stamp = entry
            now = _stamp(path)
            if now == stamp:
                continue
            entry[2] = now
            try:
                key = path.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                log.error("clients.keys (%s): cannot read %s (%s); keeping the key read before", client.name, path,
                          type(exc).__name__)
                continue
            if not key:
                log.error("clients.keys (%s): %s is empty; keeping the key read before", client.name, path)
                continue
            if (new := key_digest(key)) != digest:
                changed[digest] = new
                entry[1] = new
                log.info("clients.keys (%s): %s changed; using the new key", client.name, path)
        if not changed:
            return False
        by_digest = {changed.get(digest, digest): client for digest, client in self._by_digest.items()}
        self._by_digest = by_digest  # one assignment: a request sees the old map or the new one
        return True

    def identify(self, authorization: str, api_key: str) -> Client | None:
        """The client whose key the request presents (Bearer or `api-key`), None for none or an unknown
        one. The lookup is by the key's digest, so its timing tells nothing about the key's bytes."""
        key = presented_key(authorization, api_key)
        if key is None:
            return None
        return self._by_digest.get(key_digest(key))


def _stamp(path: Path) -> tuple[int, ...]:
    try:
        stat = os.stat(path)  # follows the ..data symlink a Secret volume swaps
    except OSError:
        return ()
    return (stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    """A new random client key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)
