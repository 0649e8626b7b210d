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
from .keyfiles import KeyFile, file_stamp

log = logging.getLogger(__name__)

# Header (name, value) pairs to set on the upstream request.
Headers = tuple[tuple[str, str], ...]
API_KEY_HEADER = "api-key"
# The gateway's own Authorization (an Entra ID token) from the ext_proc to Envoy, past the filter that removes
# clients' credentials (envoy/envoy.yaml), which then sets Authorization from it.
UPSTREAM_AUTHORIZATION_HEADER = "x-aoai-upstream-authorization"


def key_headers(key: str, bearer: bool = False) -> Headers:
    """Azure's `api-key: KEY`, or OpenAI's `Authorization: Bearer KEY`."""
    return (("authorization", "Bearer " + key),) if bearer else ((API_KEY_HEADER, key),)


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
    """A key read from a file, and read again when the file changes (auth/keyfiles.py KeyFile)."""

    reusable = True

    def __init__(self, path: Path, label: str = "api_key_file", bearer: bool = False) -> None:
        self._file = KeyFile(path, label)
        self._bearer = bearer
        self._headers: Headers = key_headers(self._file.key or "", bearer)

    def headers_for(self, authorization: str, api_key: str) -> Headers:
        return self._headers

    def refresh(self, *, strict: bool = False) -> bool:
        """Re-read the file if it changed; True when a key is loaded (the last one, if the file went bad)."""
        if self._file.refresh(strict=strict):
            self._headers = key_headers(self._file.key or "", self._bearer)
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

    def refresh(self) -> bool:
        """Re-read the token file if it changed; True when a valid token is held."""
        stamp = file_stamp(self._path)
        if not stamp:
            return time.time() < self._valid_until
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
