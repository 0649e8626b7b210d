"""What the client presented as its credential."""

from __future__ import annotations


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
