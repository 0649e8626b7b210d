"""Settings -> the compiled `Gateway` the core decides with. Once per worker, at start.

This is where the settings' I/O happens (reading key files), so the core does none: it gets
backends whose credential providers answer from memory, a route table with every path prefix
built, and the `/v1/models` answers serialized.
"""

from __future__ import annotations

import time

from .auth.client import Client, ClientKeys
from .auth.keyfiles import CredentialError, KeyFile
from .auth.upstream import ApiKeyFile, ClientKeyAsApiKey, EntraToken, StaticApiKey, UpstreamCredential
from .config import BackendSettings, ConfigError, Settings
from .core.catalogue import ENDPOINT_NAMES
from .breaker.board import BoardReader
from .usage.board import SpendReader
from .core.gateway import ByokTarget, Gateway, Limits, NoSpend, NoTrips, SpendBoard, TripBoard
from .core.models_endpoint import ModelsEndpoint
from .core.routes import EndpointOptions, RouteTable, compile_openai_routes, compile_routes
from .routing import BYOK_CLUSTER, DEFAULT_BACKEND, Backend, ModelMapper, Pool, PoolMember, cluster_name, pool_cluster_name


def upstream_credential(name: str, backend: BackendSettings, settings: Settings) -> UpstreamCredential:
    """The credential provider for a backend: the Entra ID token the token process keeps, a key file (re-read
    when it changes), a static key, or, with none, the client's own key (the Go proxy's behaviour)."""
    label = "azure" if name == DEFAULT_BACKEND else f"backends.{name}"
    bearer = backend.type == "openai"
    entra = backend.entra_credential
    if entra is not None:
        return EntraToken(settings.token_path(entra), entra.label)
    if backend.api_key_file is not None:
        try:
            return ApiKeyFile(backend.api_key_file, f"{label}.api_key_file", bearer)
        except CredentialError as exc:
            raise ConfigError(str(exc)) from None
    if backend.api_key is not None:
        return StaticApiKey(backend.api_key.get_secret_value(), bearer)
    return ClientKeyAsApiKey()


def _model_targets(settings: Settings, backends: dict[str, Backend]) -> dict[str, str | Pool]:
    """Each model's deployment, or its pool (numbered as rendering numbers them: `settings.pools`' order)."""
    targets: dict[str, str | Pool] = {m: t for m, t in settings.models.items() if isinstance(t, str)}
    for index, (model, members) in enumerate(settings.pools.items()):
        targets[model] = Pool(pool_cluster_name(index), tuple(
            PoolMember(str(i), backends[m.backend], m.deployment, settings.circuit_of(m))
            for i, m in enumerate(members)), settings.failover.max_attempts)
    return targets


def compile_gateway(settings: Settings, created: int | None = None, trips: TripBoard | None = None,
                    spend: SpendBoard | None = None) -> Gateway:
    """`created`: the time `/v1/models` reports (default: now); `trips`: the circuit breaker's board
    (default: the running breaker's file, when pools exist)."""
    backends = {
        name: Backend(name, cluster_name(name), upstream_credential(name, backend, settings))
        for name, backend in settings.all_backends.items()
    }
    models = ModelMapper(_model_targets(settings, backends), settings.unmapped_models, backends[DEFAULT_BACKEND])
    def routes_for(backend: str) -> RouteTable:
        if settings.all_backends[backend].type == "openai":
            return compile_openai_routes()
        options = {
            name: EndpointOptions(settings.api_version_for(name, backend), v1=settings.endpoint(name).api == "v1")
            for name in ENDPOINT_NAMES
        }
        return compile_routes(options, settings.backend_api_version(backend), models.known_deployments)

    return Gateway(
        backends=backends,
        routes=routes_for(DEFAULT_BACKEND),
        # Pool members on other backends are sent with their backend's api-version.
        member_routes={name: routes_for(name) for name in backends if name != DEFAULT_BACKEND},
        models=models,
        models_endpoint=ModelsEndpoint(models.known_models, int(time.time()) if created is None else created),
        limits=Limits(settings.limits.max_request_body_bytes),
        trips=trips or (BoardReader(settings.breaker_paths.trips, len(settings.circuits)) if settings.pools else NoTrips()),
        default_model=settings.default_model,
        clients=_client_keys(settings),
        spend=spend or (SpendReader(settings.usage_paths.board, len(settings.token_limited_keys))
                        if settings.token_limited_keys else NoSpend()),
        byok=ByokTarget(byok.host_suffix, byok.port, BYOK_CLUSTER) if (byok := settings.clients.byok_settings) else None,
        include_stream_usage=settings.stream_usage_added,
        checks_tunnels=settings.forward_proxy.enabled and bool(settings.clients.keys),
    )


def _client_keys(settings: Settings) -> ClientKeys | None:
    if not settings.clients.keys:
        return None
    slots = {key.name: slot for slot, key in enumerate(settings.token_limited_keys)}
    clients = {key.name: Client(key.name, None if key.models is None else frozenset(key.models), slots.get(key.name, -1))
               for key in settings.clients.keys}
    try:
        files = {KeyFile(key.key_file, f"clients.keys ({key.name}).key_file"): clients[key.name]
                 for key in settings.clients.keys if key.key_file is not None}
    except CredentialError as exc:
        raise ConfigError(str(exc)) from None
    return ClientKeys({key.key_sha256: clients[key.name] for key in settings.clients.keys}, files)


def refreshable_credentials(gateway: Gateway) -> list[ApiKeyFile | EntraToken | ClientKeys]:
    """What can change under a running worker: key files (Azure's and the clients'), Entra ID tokens."""
    found: list[ApiKeyFile | EntraToken | ClientKeys] = [
        b.credential for b in gateway.backends.values() if isinstance(b.credential, (ApiKeyFile, EntraToken))]
    if gateway.clients is not None and gateway.clients.has_files:
        found.append(gateway.clients)
    return found
