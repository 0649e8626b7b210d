"""The compiled gateway: everything the core needs per request, built once per worker from the
settings (extproc/compile.py) and never replaced. Its parts answer from memory; the one thing that
changes under it is the key a key-file provider holds, which the worker refreshes off the request path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

from ..auth.client import ClientKeys
from ..routing import Backend, ModelMapper
from .models_endpoint import ModelsEndpoint
from .routes import RouteTable

# The ext_proc's gRPC limit is the body limit plus room for headers and framing.
GRPC_MESSAGE_HEADROOM = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_body_bytes: int

    @property
    def grpc_max_message_bytes(self) -> int:
        return self.max_request_body_bytes + GRPC_MESSAGE_HEADROOM


class TripBoard(Protocol):
    """The circuit breaker's trips as a worker sees them (extproc/breaker/board.py reads the clock)."""

    def availability(self, circuits: tuple[int, ...]) -> tuple[int, int, float]:
        """(how many of these circuits may be tried; how many Envoy may still pick, tripped ones it has not
        yet seen tripped included; when none may be tried: seconds until the first may)."""
        ...


class NoTrips:
    def availability(self, circuits: tuple[int, ...]) -> tuple[int, int, float]:
        return len(circuits), len(circuits), 0.0


class SpendBoard(Protocol):
    """The client keys' token spend as a worker sees it (extproc/usage/board.py reads the clock)."""

    def wait(self, key: int) -> tuple[str, float]:
        """The window ("minute", "day") the key's spend has filled and the seconds until it frees; ("", 0.0): none."""
        ...


class NoSpend:
    def wait(self, key: int) -> tuple[str, float]:
        return "", 0.0


@dataclass(frozen=True, slots=True)
class ByokTarget:
    """Bring your own key: where the clients' resources are (RESOURCE.<host_suffix>[:port]) and Envoy's cluster
    that connects to them."""

    host_suffix: str
    port: int
    cluster: str

    def authority(self, resource: str) -> str:
        host = f"{resource}.{self.host_suffix}"
        return host if self.port == 443 else f"{host}:{self.port}"


@dataclass(frozen=True)
class Gateway:
    backends: Mapping[str, Backend]  # by name, each with its Envoy cluster and credential provider
    models: ModelMapper  # model -> backend and deployment
    routes: RouteTable
    models_endpoint: ModelsEndpoint
    limits: Limits
    member_routes: Mapping[str, RouteTable] = field(default_factory=dict)  # other backends' (their api-version)
    trips: TripBoard = field(default_factory=NoTrips)  # pools' members the circuit breaker has tripped
    default_model: str | None = None  # serves a request whose body names no model
    clients: ClientKeys | None = None  # clients.keys; None: no client authentication
    byok: ByokTarget | None = None  # clients.byok; None: off
    spend: SpendBoard = field(default_factory=NoSpend)  # client keys' token limits (the usage process's board)
    # usage.include_stream_usage: streamed chat and completions requests ask Azure for their token usage
    include_stream_usage: bool = False
    # forward_proxy.enabled with client keys: the ext_proc sees each CONNECT (to an intercepted host) and checks
    # its Proxy-Authorization
    checks_tunnels: bool = False

    @property
    def credentials_reusable(self) -> bool:
        """Whether decisions may be cached: no backend sends the client's own key, nor bring-your-own-key."""
        return self.byok is None and all(backend.credential.reusable for backend in self.backends.values())
