"""What the translation core decides for one request: plain data, no gRPC, no Envoy types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from ..auth.upstream import Headers


@dataclass(frozen=True, slots=True)
class RequestHead:
    """The parts of the client's request headers the core needs."""

    method: str
    path: str  # with the query string, as on the wire
    content_type: str = ""
    authorization: str = ""
    api_key: str = ""
    has_body: bool = False
    content_length: int = -1  # the declared Content-Length; -1 when none (HTTP/2 may omit it)


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the request upstream: the new :path, the credential headers, the Envoy cluster, maybe a new body."""

    path: str
    credential: Headers
    cluster: str
    body: bytes | None = None  # None: the client's body goes on untouched (never echoed)


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the client directly, without calling upstream: a JSON body (OpenAI's shape for errors)."""

    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class AwaitBody:
    """The decision needs the body (the model is in it); `finish` completes it."""

    finish: Callable[[bytes], Union[Forward, Reply]]


HeadersDecision = Union[Forward, Reply, AwaitBody]
BodyDecision = Union[Forward, Reply]
