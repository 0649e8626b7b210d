"""What the translation core decides for one request: plain data, no gRPC, no Envoy types.

The types made for every request are NamedTuples: immutable and hashable like a frozen dataclass,
at a fifth of its construction cost (a frozen dataclass's __init__ cost ~1 µs each, measured).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Union

from ..auth.upstream import Headers


class RequestHead(NamedTuple):
    """The parts of the client's request headers the core needs."""

    method: str
    path: str  # with the query string, as on the wire
    content_type: str = ""
    authorization: str = ""
    api_key: str = ""
    has_body: bool = False
    content_length: int = -1  # the declared Content-Length; -1 when none (HTTP/2 may omit it)
    # Azure's header naming the deployment the Responses API's image tool calls: a deployment by another road.
    image_deployment: str = ""
    proxy_authorization: str = ""  # forward-proxy mode: a CONNECT's credential (the app's client key)


class Try(NamedTuple):
    """How one member of a pool is called: Envoy applies it to the try that member gets."""

    member: str  # the member's id (its Envoy endpoint's metadata `aoai.member`)
    path: str
    credential: Headers


class Forward(NamedTuple):
    """Send the request upstream: the new :path, the credential headers, the Envoy cluster, maybe a new body.
    To a pool, `tries` holds each member's path and credential (`path` and `credential` are then unused)."""

    path: str
    credential: Headers
    cluster: str
    body: bytes | None = None  # None: the client's body goes on untouched (never echoed)
    tries: tuple[Try, ...] = ()
    # To a pool with tripped members: retries for this request (Envoy's x-envoy-max-retries), so that no
    # member still in is tried twice; None: the route's own (every member in).
    max_retries: int | None = None
    client: str = ""  # the client key's name (clients.keys): Envoy's per-key rate limit and access log
    authority: str = ""  # bring your own key: the client's resource (host[:port]), which Envoy connects to
    # What the request is for, as Envoy's access logs and the usage process name it (not for routing): the model
    # the client asked for, the deployment and backend it goes to ("" for a pool: the member that answers says).
    model: str = ""
    deployment: str = ""
    backend: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the client directly, without calling upstream: a JSON body (OpenAI's shape for errors)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()  # beside content-type (e.g. Retry-After)
    client: str = ""  # the client key's name when it was known (Envoy's access logs, the usage process)


class Tunnel(NamedTuple):
    """Forward-proxy mode: open the CONNECT's tunnel (Envoy's route has chosen it: an intercepted host); `client`
    is the key it was opened with. The requests inside are decided one by one, each needing its own key."""

    client: str


class AwaitBody(NamedTuple):
    """The decision needs the body (the model is in it); `finish` completes it."""

    finish: Callable[[bytes], Union[Forward, Reply]]


HeadersDecision = Union[Forward, Reply, AwaitBody, Tunnel]
BodyDecision = Union[Forward, Reply]
