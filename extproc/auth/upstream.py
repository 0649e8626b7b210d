"""Upstream credentials: for a backend, the headers that authenticate a request to it.

Every provider answers `headers_for` from memory. `ApiKeyFile` reads its file when built and again
from `refresh()` when the file has changed (a Kubernetes Secret volume is updated in place), which the
worker calls on a timer, never on the request path. `EntraToken` reads the token the token process
publishes in the same way.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Protocol

from .client import presented_key

log = logging.getLogger(__name__)

# Header (name, value) pairs to set on the upstream request.
Headers = tuple[tuple[str, str], ...]
API_KEY_HEADER = "api-key"


def key_headers(key: str, bearer: bool = False) -> Headers:
    """Azure's `api-key: KEY`, or OpenAI's `Authorization: Bearer KEY`."""
    return (("authorization", "Bearer " + key),) if bearer else ((API_KEY_HEADER, key),)


class CredentialError(Exception):
    """A credential cannot be loaded (the message says where from, never what it holds)."""


class UpstreamCredential(Protocol):
    # Whether answers carrying these headers may be kept beyond their request (not a client's own key).
    reusable: bool

    def headers_for(self, authorization: str, api_key: str) -> Headers | TokenUnavailable | None:
        """The headers to set upstream, given the client's `Authorization` and `api-key` headers;
        None when there is no credential for this request (a 401); TokenUnavailable when the gateway's
        own Entra ID token is missing (a 503)."""
        ...


class StaticApiKey:
    """A key from the config or the environment (`bearer`: sent as OpenAI's `Authorization: Bearer`)."""

    reusable = True

    def __init__(self, key: str, bearer: bool = False) -> None:
        self._headers: Headers = key_headers(key, bearer)

    def headers_for(self, authorization: str, api_key: str) -> Headers:
        return self._headers


class ApiKeyFile:
    """A key read from a file, and read again when the file changes (its identity, size or time)."""

    reusable = True

    def __init__(self, path: Path, label: str = "api_key_file", bearer: bool = False) -> None:
        self._path = path
        self._label = label
        self._bearer = bearer
        self._stamp: tuple[int, ...] | None = None
        self._headers: Headers = ()
        self.refresh(strict=True)

    def headers_for(self, authorization: str, api_key: str) -> Headers:
        return self._headers

    def refresh(self, *, strict: bool = False) -> bool:
        """Re-read the file if it changed; True when a key is loaded. Once a key is loaded, a file
        that becomes unreadable or empty keeps it (logged): a Secret being rewritten must not fail
        requests. `strict` (at start) raises CredentialError instead."""
        stamp: tuple[int, ...] = ()  # a missing file: reported once, until it changes again
        try:
            stat = os.stat(self._path)  # follows the ..data symlink a Secret volume swaps
            stamp = (stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
            if stamp == self._stamp:
                return bool(self._headers)
            key = read_key_file(self._path, self._label)
            if key is None:
                raise CredentialError(f"{self._label}: {self._path} is empty")
        except OSError as exc:
            problem = CredentialError(f"{self._label}: cannot read {self._path}: {exc.strerror or exc}")
            return self._keep(problem, stamp, strict)
        except CredentialError as exc:
            return self._keep(exc, stamp, strict)
        if self._stamp is not None:
            log.info("%s: %s changed; using the new key", self._label, self._path)
        self._stamp = stamp
        self._headers = key_headers(key, self._bearer)
        return True

    def _keep(self, problem: CredentialError, stamp: tuple[int, ...], strict: bool) -> bool:
        if strict:
            raise problem
        if stamp != self._stamp:  # once per state of the file, not every refresh
            log.error("%s; keeping the key read before", problem)
            self._stamp = stamp
        return bool(self._headers)


class TokenUnavailable:
    """No Entra ID token to send (none fetched yet, or the last one expired while fetching failed): the request
    gets a 503 naming the credential's kind. The token process logs the failures, once per streak."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


# A token this close to its expiry is not sent: it could expire on its way (the token process replaces
# tokens minutes ahead; this matters only while it cannot get one).
TOKEN_EXPIRY_MARGIN_S = 5.0


class EntraToken:
    """The Entra ID token the token process (extproc/identity) keeps for one credential, read from the file it
    publishes: when the file changes (the worker's timer) and, lacking a valid token, on the request itself (a
    stat: the first token is used as soon as it exists)."""

    reusable = True

    def __init__(self, path: Path, kind: str) -> None:
        self._path = path
        self._stamp: tuple[int, ...] | None = None
        self._headers: Headers = ()
        self._valid_until = 0.0
        self.unavailable = TokenUnavailable(kind)
        self.refresh()

    def headers_for(self, authorization: str, api_key: str) -> Headers | TokenUnavailable:
        if time.time() < self._valid_until:
            return self._headers
        self.refresh()
        return self._headers if time.time() < self._valid_until else self.unavailable

    def refresh(self, *, strict: bool = False) -> bool:
        """Re-read the token file if it changed; True when a valid token is held."""
        try:
            stat = os.stat(self._path)
        except OSError:
            return time.time() < self._valid_until
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                published = json.loads(self._path.read_bytes())
                token, expires_on = published.get("token"), float(published.get("expires_on", 0))
            except (OSError, ValueError, TypeError, AttributeError):
                log.error("%s: unreadable; keeping the token read before", self._path)
                return time.time() < self._valid_until
            if isinstance(token, str) and token:
                self._headers = (("authorization", "Bearer " + token),)
                self._valid_until = expires_on - TOKEN_EXPIRY_MARGIN_S
        return time.time() < self._valid_until


class ClientKeyAsApiKey:
    """No server key configured: the client's own key (Bearer token or `api-key`) is sent as
    `api-key`, as the Go proxy did."""

    reusable = False

    def headers_for(self, authorization: str, api_key: str) -> Headers | None:
        key = presented_key(authorization, api_key)
        return None if key is None else ((API_KEY_HEADER, key),)


def read_key_file(path: Path, label: str = "api_key_file") -> str | None:
    """The key in the file (surrounding whitespace removed), None when it is empty."""
    try:
        return path.read_text().strip() or None
    except OSError as exc:
        raise CredentialError(f"{label}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CredentialError(f"{label}: {path} is not UTF-8 text") from None
