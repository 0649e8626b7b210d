"""Paths and query strings: the api-version set exactly once, credentials taken out, dot segments
found in any spelling, Azure-form paths read as plain segments."""

from __future__ import annotations

import re
from typing import Callable
from urllib.parse import quote, unquote

# Query parameters that carry a credential somewhere (Azure's realtime `api-key`, API Management's
# `subscription-key`, ...): never sent upstream (the gateway sets its own credential), never logged.
CREDENTIAL_PARAMS = frozenset({
    "api-key", "api_key", "apikey", "key", "subscription-key", "subscription_key", "ocp-apim-subscription-key",
    "access_token", "access-token", "token", "code", "sig",
})
# Azure-form path segments: what Azure's own paths are made of (deployment names, ids, operations).
_SEGMENT = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9._-]*[A-Za-z0-9_-])?")


def _param_name(param: str) -> str:
    # Compared decoded and case-insensitively: Azure (ASP.NET) reads query keys that way, so
    # `API-Version=x` next to ours would be a second, conflicting api-version.
    return unquote(param.partition("=")[0]).strip().lower()


def _is_api_version(param: str) -> bool:
    return _param_name(param) == "api-version"


def _is_credential(param: str) -> bool:
    """A credential by any name a reader might give it: `api-key[]` (array syntax), `api-key%00`
    (a reader that stops at NUL), `a=1;api-key=X` (readers that also split on `;`)."""
    for piece in param.split(";"):
        name = "".join(c for c in _param_name(piece) if c.isprintable()).removesuffix("[]").strip()
        if name in CREDENTIAL_PARAMS:
            return True
    return False


def _dropped(param: str) -> bool:
    """An api-version (the gateway sets its own) or a credential."""
    return _is_api_version(param) or _is_credential(param)


def query_values(raw_query: str, name: str) -> list[str]:
    """The decoded values of every parameter called `name` (lowercase; keys compared as Azure does)."""
    return [unquote(p.partition("=")[2].replace("+", " ")) for p in raw_query.split("&") if _param_name(p) == name]


def without_credentials(raw_query: str) -> str:
    """The client's query (`a=1&b=2`, no `?`) without credential parameters, else untouched."""
    kept = [p for p in raw_query.split("&") if p and not _is_credential(p)]
    return "&".join(kept)


def azure_form_segments_ok(path: str) -> bool:
    """Whether every segment after `/openai/` is one Azure's paths are made of: letters, digits, `-`,
    `_` and inner dots. Refuses `deployments.`, `deployments;x=1`, `%20`, empty segments, controls:
    what one reader could take for a segment that another reads differently."""
    return all(_SEGMENT.fullmatch(segment) for segment in path[len("/openai/") :].split("/"))


def has_api_version(raw_query: str) -> bool:
    """Whether the query has an api-version parameter (by key, not a substring of another key)."""
    return bool(raw_query) and any(_is_api_version(p) for p in raw_query.split("&"))


QueryMerger = Callable[[str], str]


def query_merger(api_version: str | None) -> QueryMerger:
    """merge_query with the api-version fixed and its encoding done once, at compile time."""
    tail = None if api_version is None else "api-version=" + quote(api_version, safe="")
    alone = "?" + tail if tail is not None else ""

    def merge(raw_query: str) -> str:
        if not raw_query:
            return alone  # the common case: no client query at all
        kept = [p for p in raw_query.split("&") if p and not _dropped(p)]
        if tail is not None:
            kept.append(tail)
        return "?" + "&".join(kept) if kept else ""

    return merge


def merge_query(raw_query: str, api_version: str | None) -> str:
    """The client's query parameters, untouched and in order, with api-version set exactly once (or
    removed): the client's own api-version, in any case or encoding, is dropped, as are credentials."""
    return query_merger(api_version)(raw_query)


def escapes_its_prefix(path: str) -> bool:
    """Whether the path has a dot segment (`..`, `.`, also percent-encoded or after a backslash).

    Envoy does not normalize paths here and Azure may: `/v1/files/../deployments/x/...` would be
    routed as a file request and served as a call to deployment x. No API path has one.
    """
    if "." not in path and "%" not in path and "\\" not in path:
        return False
    return any(segment in (".", "..") for segment in unquote(path).replace("\\", "/").split("/"))
