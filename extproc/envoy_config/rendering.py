"""Render envoy/envoy.yaml for the current settings, and validate the result with Envoy itself.

The template is a complete Envoy config; rendering sets a few values at named places (listener
`http`/`https`, clusters `extproc`/`azure`, the ext_proc filter) so there is one file to read and
no copies to drift apart.
"""

from __future__ import annotations

import collections
import copy
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..auth.client import CLIENT_HEADER
from ..auth.upstream import UPSTREAM_AUTHORIZATION_HEADER
from ..config import BackendSettings, ConfigError, Settings, UnmappedModelPolicy
from ..core.catalogue import headers_only_prefixes
from ..config.schema import PoolMember
from ..routing import BYOK_CLUSTER, DEFAULT_BACKEND, POOL_METADATA_NAMESPACE, REQUEST_METADATA_NAMESPACE, cluster_name, pool_cluster_name

# The routes a request takes before the ext_proc decides lead to this cluster, which is never defined:
# Envoy answers 404 itself, so an undecided request cannot leave it.
UNDECIDED_CLUSTER = "aoai_gateway_undecided"
POOL_MODEL = "pool_model"  # the template's model of a pool's cluster and route, copied once per pool
BREAKER_LOG_CLUSTER = "breaker_log"  # the circuit breaker's gRPC access log (kept only with pools)
USAGE_LOG_CLUSTER = "usage_log"  # the usage process's gRPC access log (kept only when it runs)
BREAKER_HEALTH_HOST = "circuit-{}"  # a member's health check Host (extproc/breaker/service.py reads it)
TEMPLATE_ENV = "AOAI_GATEWAY_ENVOY_TEMPLATE"
REPO_TEMPLATE = Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml"
SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, some others
)


@dataclass(frozen=True)
class DownstreamTls:
    cert_file: Path
    key_file: Path


def template_path() -> Path:
    return Path(os.environ.get(TEMPLATE_ENV) or REPO_TEMPLATE)


def system_ca_bundle() -> Path:
    for candidate in SYSTEM_CA_BUNDLES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError("no system CA bundle found; set azure.ca_file (AZURE_OPENAI_CA_FILE)")


def _named(items: list[dict[str, Any]], name: str, kind: str) -> dict[str, Any]:
    for item in items:
        if item.get("name") == name:
            return item
    raise ConfigError(f"the Envoy template has no {kind} named {name!r}")


def _http_filters(listener: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for chain in listener["filter_chains"]:
        for network_filter in chain["filters"]:
            yield from network_filter["typed_config"]["http_filters"]


def _connection_managers(listener: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for chain in listener["filter_chains"]:
        for network_filter in chain["filters"]:
            yield network_filter["typed_config"]


def _distinct_connection_managers(listeners: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each connection manager once: the HTTPS listener may share the HTTP one's (a YAML alias in the
    template), and an edit that adds to a list must not be made twice."""
    seen: set[int] = set()
    for listener in listeners:
        for hcm in _connection_managers(listener):
            if id(hcm) not in seen:
                seen.add(id(hcm))
                yield hcm


def _seconds(value: float) -> str:
    return f"{value:g}s"


def render(settings: Settings, downstream_tls: DownstreamTls | None, template: Path | None = None) -> dict[str, Any]:
    """The Envoy config for `settings`, as a dict ready to dump."""
    template = template or template_path()
    try:
        config: dict[str, Any] = yaml.safe_load(template.read_text())
    except OSError as exc:
        raise ConfigError(
            f"cannot read the Envoy config template {template} ({exc.strerror}); it is envoy/envoy.yaml "
            f"beside the package unless {TEMPLATE_ENV} names another file"
        ) from exc
    config["admin"]["address"]["socket_address"]["port_value"] = settings.envoy.admin_port
    resources = config["static_resources"]
    # Forward-proxy mode's pieces are set aside (or removed) first, and put in place after every other edit.
    forward_proxy = _forward_proxy_pieces(settings, config)

    listeners: list[dict[str, Any]] = []
    for name, port in (("http", settings.listen.http_port), ("https", settings.listen.https_port)):
        listener = _named(resources["listeners"], name, "listener")
        if port is None:
            continue
        listener["address"]["socket_address"].update(address=settings.listen.address, port_value=port)
        # Envoy holds a body without a declared length to the larger of the virtual host's limit and
        # the connection's buffer: a template with a buffer above the limit must not raise the limit.
        listener["per_connection_buffer_limit_bytes"] = min(
            listener["per_connection_buffer_limit_bytes"], settings.limits.max_request_body_bytes)
        idle = _seconds(settings.envoy.upstream_idle_timeout_seconds)
        streamed = headers_only_prefixes(settings.unmapped_models is UnmappedModelPolicy.REJECT)
        for hcm in _connection_managers(listener):
            hcm["stream_idle_timeout"] = idle
            window = hcm.get("http2_protocol_options", {}).get("initial_stream_window_size", 0)
            if window > settings.limits.max_request_body_bytes:
                raise ConfigError(f"the Envoy template's HTTP/2 stream window ({window} bytes) is above "
                                  "limits.max_request_body_bytes: HTTP/2 bodies would be held to the window")
            for vhost in hcm["route_config"]["virtual_hosts"]:
                vhost["request_body_buffer_limit"] = settings.limits.max_request_body_bytes
                _streamed_routes_from_catalogue(vhost["routes"], streamed)
                body_idle = _seconds(settings.limits.body_idle_timeout_seconds)
                for route in vhost["routes"]:
                    if "route" not in route:  # a direct response (forward-proxy mode's refused CONNECT)
                        continue
                    # Undecided (the body is still arriving): a body that stops gets a 408 soon;
                    # decided (waiting on or streaming from Azure): the long idle timeout.
                    route["route"]["idle_timeout"] = body_idle if _undecided(route) else idle
        largest_pool = max((len(members) for members in settings.pools.values()), default=0)
        for http_filter in _http_filters(listener):
            if http_filter["name"] == EXT_PROC_FILTER:
                http_filter["typed_config"]["message_timeout"] = _message_timeout(settings)
                # What the request is for (aoai.request, for the access logs) and the namespaces a pool's tries
                # come in (extproc/processor/messages.py), and no others.
                http_filter["typed_config"]["metadata_options"] = {"receiving_namespaces": {
                    "untyped": [REQUEST_METADATA_NAMESPACE] + [f"{POOL_METADATA_NAMESPACE}{i}" for i in range(largest_pool)]}}
                # x-envoy-max-retries: only pools set it; the Host (bring your own key's resource), which Envoy
                # ignores from an ext_proc unless told (allow_all_routing).
                rules = {"allow_envoy": True} if largest_pool else {}
                if settings.clients.byok_settings is not None:
                    rules["allow_all_routing"] = True
                if rules:
                    http_filter["typed_config"]["mutation_rules"] = rules
                else:
                    http_filter["typed_config"].pop("mutation_rules", None)
        if name == "https":
            if downstream_tls is None:
                raise ConfigError("listen.https_port is set but no TLS certificate and key were given")
            tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
            tls["tls_certificates"] = [
                {
                    "certificate_chain": {"filename": str(downstream_tls.cert_file)},
                    "private_key": {"filename": str(downstream_tls.key_file)},
                }
            ]
        listeners.append(listener)
    resources["listeners"] = listeners

    if any(cluster.get("name") == UNDECIDED_CLUSTER for cluster in resources["clusters"]):
        raise ConfigError(f"the Envoy template defines the cluster {UNDECIDED_CLUSTER!r}, which must not exist")
    extproc = _named(resources["clusters"], "extproc", "cluster")
    for health_check in extproc.get("health_checks", []):
        # A worker is not held to a stricter deadline than its requests are (message_timeout).
        health_check["timeout"] = _seconds(max(1.0, settings.extproc.message_timeout_ms / 1000))
    extproc["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(path)}}}} for path in settings.socket_paths()]}
    ]

    _upstream_cluster(_named(resources["clusters"], cluster_name(DEFAULT_BACKEND), "cluster"), DEFAULT_BACKEND, settings.azure)
    _pools(settings, resources, listeners)
    _breaker_log(settings, resources, listeners)
    _usage_log(settings, resources, listeners)
    _client_keys(settings, listeners)
    _cors(settings, listeners)
    _browser_guard(settings, listeners)
    _byok(settings, resources, listeners)
    if not settings.entra_credentials:
        _without_upstream_authorization(listeners)
    if forward_proxy is not None:
        _forward_proxy(settings, resources, listeners, *forward_proxy)
    return config


def _message_timeout(settings: Settings) -> str:
    """Each ext_proc filter's deadline for one answer (extproc.message_timeout_ms)."""
    return f"{settings.extproc.message_timeout_ms / 1000:g}s"


FORWARD_PROXY_VHOST, FORWARD_PROXY_LISTENER, FORWARD_PROXY_CLUSTER = "forward_proxy", "forward_proxy_inner", "forward_proxy_tunnel"


def _forward_proxy_pieces(settings: Settings, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Without forward_proxy.enabled, every piece of the mode removed from the template (CONNECT is then no upgrade:
    the ext_proc answers it, as any other method it does not serve); with it, the virtual host and the internal
    listener taken out, to be put back by `_forward_proxy` once the connection manager is final."""
    resources = config["static_resources"]
    inner = _named(resources["listeners"], FORWARD_PROXY_LISTENER, "listener")
    resources["listeners"].remove(inner)
    vhost = None
    for listener in resources["listeners"]:
        for hcm in _connection_managers(listener):
            vhosts = hcm["route_config"]["virtual_hosts"]
            found = [v for v in vhosts if v["name"] == FORWARD_PROXY_VHOST]
            if found:
                vhost = found[0]
                vhosts.remove(vhost)
            if not settings.forward_proxy.enabled:
                hcm.pop("upgrade_configs", None)
                hcm.pop("access_log_options", None)
                for log in hcm.get("access_log", []):
                    if "log_format" in log["typed_config"]:
                        log["typed_config"]["log_format"]["json_format"].pop("tunnel", None)
                mappers = hcm.get("local_reply_config", {}).get("mappers", [])
                mappers[:] = [m for m in mappers if "forward_proxy_refused" not in str(m)]
                for other in vhosts:
                    other["routes"] = [r for r in other["routes"] if "connect_matcher" not in r["match"]]
    if vhost is None:
        raise ConfigError(f"the Envoy template has no virtual host named {FORWARD_PROXY_VHOST!r}")
    if settings.forward_proxy.enabled:
        return vhost, inner
    resources["clusters"].remove(_named(resources["clusters"], FORWARD_PROXY_CLUSTER, "cluster"))
    config["bootstrap_extensions"] = [e for e in config.get("bootstrap_extensions", [])
                                      if e["name"] != "envoy.bootstrap.internal_listener"]
    if not config["bootstrap_extensions"]:
        del config["bootstrap_extensions"]
    return None


def _forward_proxy(settings: Settings, resources: dict[str, Any], listeners: list[dict[str, Any]],
                   vhost: dict[str, Any], inner: dict[str, Any]) -> None:
    """The intercepted hosts' CONNECT virtual host on the listeners, and the internal listener the tunnels end in:
    TLS with the forward-proxy certificate for those names, then a copy of the listeners' connection manager
    without the CONNECT upgrade (a CONNECT inside a tunnel is refused)."""
    hosts = settings.forward_proxy.hosts
    vhost["domains"] = [f"{host}:443" for host in hosts]
    hcm = None
    for hcm in _distinct_connection_managers(listeners):
        hcm["route_config"]["virtual_hosts"].insert(0, copy.deepcopy(vhost))
        # With client keys the ext_proc checks each tunnelled CONNECT's key (Proxy-Authorization); without, nothing
        # to check.
        for upgrade in hcm["upgrade_configs"]:
            for http_filter in list(upgrade["filters"]):
                if http_filter["name"] != EXT_PROC_FILTER:
                    continue
                if settings.clients.keys:
                    http_filter["typed_config"]["message_timeout"] = _message_timeout(settings)
                else:
                    upgrade["filters"].remove(http_filter)
        if not settings.clients.keys:
            for other in hcm["route_config"]["virtual_hosts"]:
                for route in other["routes"]:
                    if "connect_matcher" in route["match"]:
                        route.pop("typed_per_filter_config", None)
        # Python 3.11's http.client (requests, urllib) sends its CONNECT as HTTP/1.0, which Envoy refuses (426)
        # unless told otherwise (then any HTTP/1.0 request on the listeners is served, as an HTTP/1.1 one is).
        hcm.setdefault("http_protocol_options", {})["accept_http_10"] = True
        # A tunnel is no API request: its CONNECT (logged when established and when closed) is not counted; a refused
        # one (403 elsewhere, 407 without a key) is, like any refusal.
        for log in _usage_loggers(hcm):
            log["filter"] = {"or_filter": {"filters": [
                {"header_filter": {"header": {"name": ":method", "string_match": {"exact": "CONNECT"}, "invert_match": True}}},
                {"status_code_filter": {"comparison": {"op": "GE", "value": {
                    "default_value": 300, "runtime_key": "aoai_gateway.unused_refused_connect"}}}}]}}
    assert hcm is not None
    inner_hcm = copy.deepcopy(hcm)
    inner_hcm["stat_prefix"] = "forward_proxy"
    inner_hcm.pop("upgrade_configs", None)
    inner_hcm.pop("access_log_options", None)
    inner_hcm["http_protocol_options"].pop("accept_http_10")  # HTTP/1.0 only on the listeners (the CONNECT's)
    if not inner_hcm["http_protocol_options"]:
        del inner_hcm["http_protocol_options"]
    for log in _usage_loggers(inner_hcm):  # no CONNECT inside
        del log["filter"]
    inner_hcm["route_config"]["virtual_hosts"] = [v for v in inner_hcm["route_config"]["virtual_hosts"]
                                                  if v["name"] != FORWARD_PROXY_VHOST]
    chain = inner["filter_chains"][0]
    chain["filter_chain_match"]["server_names"] = list(hosts)
    certificate = chain["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0]
    certificate["certificate_chain"] = {"filename": str(settings.forward_proxy_dir / "leaf.crt")}
    certificate["private_key"] = {"filename": str(settings.forward_proxy_dir / "leaf.key")}
    chain["filters"][0]["typed_config"] = inner_hcm
    listeners.append(inner)


def _without_upstream_authorization(listeners: list[dict[str, Any]]) -> None:
    """No backend uses Entra ID: the mutations that carry its token past the credential removal go (clients'
    copies of the internal header are still removed on arrival)."""
    def carries(mutation: dict[str, Any]) -> bool:
        return mutation.get("remove") == UPSTREAM_AUTHORIZATION_HEADER or \
            UPSTREAM_AUTHORIZATION_HEADER in str(mutation.get("append", {}).get("header", {}).get("value", ""))

    for listener in listeners:
        for hcm in _connection_managers(listener):
            for http_filter in hcm["http_filters"]:
                if http_filter["name"] == "envoy.filters.http.header_mutation":
                    mutations = http_filter["typed_config"]["mutations"]["request_mutations"]
                    mutations[:] = [m for m in mutations if not carries(m)]


RBAC_FILTER = "envoy.filters.http.rbac"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
DFP_FILTER = "envoy.filters.http.dynamic_forward_proxy"


def _byok(settings: Settings, resources: dict[str, Any], listeners: list[dict[str, Any]]) -> None:
    """Bring your own key's route (its Host held to RESOURCE.<suffix>[:port]), filter and cluster, with the CA and
    DNS resolver the settings name; none of it when it is off."""
    byok = settings.clients.byok_settings
    cluster = _named(resources["clusters"], BYOK_CLUSTER, "cluster")
    if byok is None:
        resources["clusters"].remove(cluster)
    else:
        if byok.ca_file is not None:
            cluster["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"] = {
                "filename": str(byok.ca_file)}
        cache = cluster["cluster_type"]["typed_config"]["dns_cache_config"]
        if byok.dns_resolver is not None:
            address, _, port = byok.dns_resolver.rpartition(":")
            cache["typed_dns_resolver_config"] = {
                "name": "envoy.network.dns_resolver.cares",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                    "resolvers": [{"socket_address": {"address": address, "port_value": int(port)}}],
                    "use_resolvers_as_fallback": False,
                }}
    # The resource name's full rule is the ext_proc's; RE2 caps a route regex's program at 100.
    host = r"[a-z0-9-]+\." + re.escape(byok.host_suffix) if byok else ""
    if byok is not None and byok.port != 443:
        host += f":{byok.port}"
    for hcm in _distinct_connection_managers(listeners):
        if byok is None:
            hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != DFP_FILTER]
        else:  # one DNS cache: the filter's and the cluster's configs must be the same
            next(f for f in hcm["http_filters"] if f["name"] == DFP_FILTER)["typed_config"]["dns_cache_config"] = \
                cluster["cluster_type"]["typed_config"]["dns_cache_config"]
        for vhost in hcm["route_config"]["virtual_hosts"]:
            routes = vhost["routes"]
            for route in list(routes):
                if route.get("route", {}).get("cluster") != BYOK_CLUSTER:
                    continue
                if byok is None:
                    routes.remove(route)
                else:
                    route["match"]["headers"][1]["string_match"]["safe_regex"]["regex"] = host


def _browser_guard(settings: Settings, listeners: list[dict[str, Any]]) -> None:
    """The rbac filter's lists: the allowed origins (none: any request naming an origin is refused), and the
    allowed Host names, or no Host policy where the gateway is not a loopback one spending its own key."""
    origins = [{"header": {"name": "origin", "string_match": {"exact": origin}}} for origin in settings.cors.allowed_origins]
    # Beyond loopback, naming the gateway's names turns the rule on (compose: its service name).
    guard_hosts = settings.holds_credentials and not settings.clients.keys and (
        settings.loopback_only or bool(settings.listen.allowed_hosts))
    hosts = [{"header": {"name": ":authority", "string_match": {"safe_regex": {
        "regex": "(?i)" + re.escape(host) + "(:[0-9]+)?"}}}} for host in settings.listen.allowed_hosts]
    # Forward-proxy mode's intercepted names, on their ports: inside a tunnel, and on the listeners for plain-HTTP
    # proxy requests (`HTTP_PROXY`, absolute form). No page can rebind a name it does not own.
    if settings.forward_proxy.enabled:
        hosts += [{"header": {"name": ":authority", "string_match": {"safe_regex": {
            "regex": "(?i)" + re.escape(host) + "(:(80|443))?"}}}} for host in settings.forward_proxy.hosts]
    for hcm in _distinct_connection_managers(listeners):
        for http_filter in hcm["http_filters"]:
            if http_filter["name"] != RBAC_FILTER:
                continue
            policies = http_filter["typed_config"]["rules"]["policies"]
            rules = policies["foreign-origin"]["permissions"][0]["and_rules"]["rules"]
            del rules[1:]
            if origins:
                rules.append({"not_rule": {"or_rules": {"rules": origins}}} if len(origins) > 1 else {"not_rule": origins[0]})
            if guard_hosts:
                policies["foreign-host"]["permissions"][0]["not_rule"]["or_rules"]["rules"].extend(hosts)
            else:
                del policies["foreign-host"]


CORS_FILTER = "envoy.filters.http.cors"


def _cors(settings: Settings, listeners: list[dict[str, Any]]) -> None:
    """The allowed origins into the virtual host's CORS policy; no origins: no CORS filter or policy."""
    origins = [{"exact": origin} for origin in settings.cors.allowed_origins]
    for listener in listeners:
        for hcm in _connection_managers(listener):
            if not origins:
                hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != CORS_FILTER]
            for vhost in hcm["route_config"]["virtual_hosts"]:
                per_filter = vhost.get("typed_per_filter_config", {})
                if not origins:
                    per_filter.pop(CORS_FILTER, None)
                    if not per_filter:
                        vhost.pop("typed_per_filter_config", None)
                elif CORS_FILTER in per_filter:
                    per_filter[CORS_FILTER]["allow_origin_string_match"] = origins


MIN_FILL_MS = 50  # Envoy's finest token bucket refill


def _refill(rate_per_minute: int) -> tuple[int, int]:
    """(tokens, milliseconds) per refill giving exactly `rate_per_minute`: the fewest tokens whose interval is
    a whole number of milliseconds, at least Envoy's 50 (60,000 ms is a whole number of refills of 1 at most)."""
    for tokens in range(1, rate_per_minute + 1):
        fill_ms, remainder = divmod(60_000 * tokens, rate_per_minute)
        if not remainder and fill_ms >= MIN_FILL_MS:
            return tokens, fill_ms
    return rate_per_minute, 60_000  # unreachable: tokens = rate gives 60,000 ms


def _client_keys(settings: Settings, listeners: list[dict[str, Any]]) -> None:
    """One token bucket per client key with requests_per_minute (Envoy's local rate limit), the filter and
    its local reply only when there is one, the removals of the client-name header only with client keys
    (without them the config is what it was). A minute's worth may come at once; the bucket refills
    evenly (Envoy's finest fill is 50 ms)."""
    limited = [key for key in settings.clients.keys if key.requests_per_minute]
    descriptors, slower = [], []
    for key in limited:
        rate = key.requests_per_minute or 1
        tokens, fill_ms = _refill(rate)
        descriptors.append({"entries": [{"key": "client", "value": key.name}], "token_bucket": {
            "max_tokens": rate, "tokens_per_fill": tokens, "fill_interval": _seconds(fill_ms / 1000)}})
        if (wait := math.ceil(fill_ms / 1000)) > 1:  # the filter says 1 s; a slower key's own reply says more
            slower.append((key.name, wait))
    for hcm in _distinct_connection_managers(listeners):
        if not settings.clients.keys:
            for early in hcm.get("early_header_mutation_extensions", []):
                mutations = early["typed_config"]["mutations"]
                mutations[:] = [m for m in mutations if m.get("remove") != CLIENT_HEADER]
            for http_filter in hcm["http_filters"]:
                if http_filter["name"] == "envoy.filters.http.header_mutation":
                    mutations = http_filter["typed_config"]["mutations"]["request_mutations"]
                    mutations[:] = [m for m in mutations if m.get("remove") != CLIENT_HEADER]
            # No key's name to log either.
            for log in hcm.get("access_log", []):
                if "log_format" in log["typed_config"]:
                    log["typed_config"]["log_format"]["json_format"].pop("client", None)
        mappers = hcm.get("local_reply_config", {}).get("mappers", [])
        if not limited:
            mappers[:] = [m for m in mappers if "local_rate_limited" not in str(m.get("filter"))]
        elif slower:
            # Each slower key's Retry-After: its own refill (its name is still on the request when the
            # rate limit answers), in copies of the rate limit's reply placed before it.
            at = next(i for i, m in enumerate(mappers) if "local_rate_limited" in str(m.get("filter")))
            mappers[at:at] = [_with_retry_after(mappers[at], name, wait) for name, wait in slower]
        filters = hcm["http_filters"]
        for http_filter in list(filters):
            if http_filter["name"] != "envoy.filters.http.local_ratelimit":
                continue
            if not limited:
                filters.remove(http_filter)
                continue
            http_filter["typed_config"]["descriptors"] = descriptors


def _with_retry_after(mapper: dict[str, Any], client: str, seconds: int) -> dict[str, Any]:
    """The rate limit's reply mapper for one key only, with that key's Retry-After."""
    keyed = copy.deepcopy(mapper)
    keyed["filter"] = {"and_filter": {"filters": [mapper["filter"], {"header_filter": {"header": {
        "name": CLIENT_HEADER, "string_match": {"exact": client}}}}]}}
    keyed["headers_to_add"] = [{"header": {"key": "retry-after", "value": str(seconds)},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    return keyed


def _breaker_log(settings: Settings, resources: dict[str, Any], listeners: list[dict[str, Any]]) -> None:
    """The routers' upstream_log to the breaker and its cluster: with pools only (nothing to log else)."""
    cluster = _named(resources["clusters"], BREAKER_LOG_CLUSTER, "cluster")
    for listener in listeners:
        for http_filter in _http_filters(listener):
            if http_filter["name"] != "envoy.filters.http.router":
                continue
            config = http_filter["typed_config"]
            if not settings.pools:
                config.pop("upstream_log", None)
                continue
            for logger in config.get("upstream_log", []):
                if logger["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == BREAKER_LOG_CLUSTER:
                    first = logger["filter"]["and_filter"]["filters"][1]["or_filter"]["filters"][0]
                    first["status_code_filter"]["comparison"]["value"]["default_value"] = settings.circuit_breaker.statuses[0]
    if not settings.pools:
        resources["clusters"].remove(cluster)
        return
    cluster["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(settings.breaker_paths.access_log)}}}}]}]


def _usage_log(settings: Settings, resources: dict[str, Any], listeners: list[dict[str, Any]]) -> None:
    """The connection managers' access log to the usage process and its cluster: only when that process runs."""
    cluster = _named(resources["clusters"], USAGE_LOG_CLUSTER, "cluster")
    if settings.usage_process:
        cluster["load_assignment"]["endpoints"] = [
            {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(settings.usage_paths.access_log)}}}}]}]
        return
    resources["clusters"].remove(cluster)
    for hcm in _distinct_connection_managers(listeners):
        hcm["access_log"] = [log for log in hcm.get("access_log", []) if not _is_usage_logger(log)]


def _usage_loggers(hcm: dict[str, Any]) -> list[dict[str, Any]]:
    return [log for log in hcm.get("access_log", []) if _is_usage_logger(log)]


def _is_usage_logger(log: dict[str, Any]) -> bool:
    """The access log whose entries go to the usage process."""
    return log["typed_config"].get("common_config", {}).get("grpc_service", {}).get(
        "envoy_grpc", {}).get("cluster_name") == USAGE_LOG_CLUSTER


def _pools(settings: Settings, resources: dict[str, Any], listeners: list[dict[str, Any]]) -> None:
    """One cluster and one route per pool, from the template's models (removed from the output)."""
    model_cluster = _named(resources["clusters"], POOL_MODEL, "cluster")
    resources["clusters"].remove(model_cluster)
    pools = list(settings.pools.values())
    clusters = [_pool_cluster(model_cluster, pool_cluster_name(i), members, settings) for i, members in enumerate(pools)]
    resources["clusters"].extend(clusters)
    done: set[int] = set()  # the HTTPS listener may share its route list with the HTTP one
    for listener in listeners:
        for hcm in _connection_managers(listener):
            for vhost in hcm["route_config"]["virtual_hosts"]:
                routes = vhost["routes"]
                if id(routes) in done:
                    continue
                done.add(id(routes))
                at = next((i for i, r in enumerate(routes) if r.get("route", {}).get("cluster") == POOL_MODEL), None)
                if at is None:
                    raise ConfigError(f"the Envoy template has no route to the cluster {POOL_MODEL!r}")
                model_route = routes.pop(at)
                routes[at:at] = [_pool_route(model_route, pool_cluster_name(i), members, settings)
                                 for i, members in enumerate(pools)]


def _pool_route(model: dict[str, Any], name: str, members: list[PoolMember], settings: Settings) -> dict[str, Any]:
    route = copy.deepcopy(model)
    route["match"]["headers"][0]["string_match"]["exact"] = name
    route["route"]["cluster"] = name
    retry = route["route"]["retry_policy"]
    # No member twice in one request: a member that just failed would most likely fail again.
    retry["num_retries"] = min(settings.failover.max_attempts, len(members)) - 1
    retry["per_try_timeout"] = _seconds(settings.failover.try_timeout_seconds)
    sizes = collections.Counter(member.priority for member in members)
    retry["retriable_status_codes"] = list(settings.circuit_breaker.statuses)
    if len(sizes) > 1:
        # Retries stay within a priority (another member each time: previous_hosts) until as many
        # tries as its largest level has members were made, then move to the next priority.
        retry["retry_priority"] = {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": max(sizes.values()),
            },
        }
    return route


def _pool_cluster(model: dict[str, Any], name: str, members: list[PoolMember], settings: Settings) -> dict[str, Any]:
    """Members as endpoints: Envoy's priorities count from 0 without gaps, so the configured ones
    (any numbers, lowest first) are mapped onto 0, 1, ...; plain-HTTP members (local emulators) and
    members with their own CA file get their own transport socket."""
    cluster = copy.deepcopy(model)
    cluster["name"] = name
    levels = {priority: level for level, priority in enumerate(sorted({m.priority for m in members}))}
    breaker = {"pipe": {"path": str(settings.breaker_paths.http)}}
    by_level: dict[int, list[dict[str, Any]]] = {}
    matches = []
    backends = settings.all_backends
    for i, member in enumerate(members):
        backend = backends[member.backend]
        host, port = backend.host, backend.port
        if host is None or port is None:
            raise ConfigError(f"backends.{member.backend}.endpoint is not set")
        socket_match: dict[str, Any] = {}
        if not backend.uses_tls:
            socket_match = {"plain": True}
        elif backend.ca_file is not None:
            socket_match = {"member": str(i)}
            tls = copy.deepcopy(model["transport_socket"])
            tls["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"] = {"filename": str(backend.ca_file)}
            matches.append({"name": f"member-{i}", "match": {"member": str(i)}, "transport_socket": tls})
        circuit = settings.circuit_of(member)
        # member and circuit: the pool's filters, the breaker and the usage process; name: the access log.
        metadata: dict[str, Any] = {"aoai": {"member": str(i), "circuit": str(circuit),
                                             "name": f"{member.backend}/{member.deployment}"}}
        if socket_match:
            metadata["envoy.transport_socket_match"] = socket_match
        by_level.setdefault(levels[member.priority], []).append({
            "endpoint": {"hostname": host, "address": {"socket_address": {"address": host, "port_value": port}},
                         # Its health is the breaker's word on its circuit.
                         "health_check_config": {"hostname": BREAKER_HEALTH_HOST.format(circuit), "address": breaker}},
            "load_balancing_weight": member.weight,
            "metadata": {"filter_metadata": metadata},
        })
    cluster["load_assignment"] = {
        **model["load_assignment"],  # its policy (overprovisioning) as the template says
        "cluster_name": name,
        "endpoints": [{"priority": level, "lb_endpoints": by_level[level]} for level in sorted(by_level)],
    }
    # Plain-HTTP members, and every member's health check (the breaker's Unix socket).
    matches.append({"name": "plain", "match": {"plain": True}, "transport_socket": {
        "name": "envoy.transport_sockets.raw_buffer",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"},
    }})
    # The cluster's own TLS socket serves the members without a CA file of their own: the system's CAs.
    validation = cluster["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
    uses_system_cas = any(backends[m.backend].uses_tls and backends[m.backend].ca_file is None for m in members)
    own_cas = [backends[m.backend].ca_file for m in members if backends[m.backend].ca_file is not None]
    validation["trusted_ca"] = {"filename": str(system_ca_bundle() if uses_system_cas or not own_cas else own_cas[0])}
    cluster["transport_socket_matches"] = matches
    return cluster


def _upstream_cluster(cluster: dict[str, Any], name: str, backend: BackendSettings) -> None:
    host, port = backend.host, backend.port
    if host is None or port is None:
        where = "azure.endpoint (AZURE_OPENAI_ENDPOINT)" if name == DEFAULT_BACKEND else f"backends.{name}.endpoint"
        raise ConfigError(f"{where} is not set")
    cluster["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"hostname": host, "address": {"socket_address": {"address": host, "port_value": port}}}}]}
    ]
    if backend.uses_tls:
        upstream_tls = cluster["transport_socket"]["typed_config"]
        upstream_tls["sni"] = host
        validation = upstream_tls["common_tls_context"]["validation_context"]
        validation["trusted_ca"] = {"filename": str(backend.ca_file or system_ca_bundle())}
        validation["match_typed_subject_alt_names"] = [{"san_type": "DNS", "matcher": {"exact": host}}]
    else:
        cluster.pop("transport_socket", None)  # http:// endpoints: local emulators only


def _undecided(route: dict[str, Any]) -> bool:
    return route.get("route", {}).get("cluster") == UNDECIDED_CLUSTER


def _streamed_routes_from_catalogue(routes: list[dict[str, Any]], prefixes: tuple[str, ...]) -> None:
    """Replace the template's streamed-upload routes (undecided, with a per-route ext_proc mode that
    reads no body) with one per prefix whose bodies stream (core.catalogue.headers_only_prefixes); in
    place, where the template has them (the HTTPS listener shares this list with the HTTP one)."""
    streamed = [i for i, route in enumerate(routes) if _undecided(route) and "typed_per_filter_config" in route]
    if not streamed:
        raise ConfigError("the Envoy template has no undecided route with a per-route ext_proc mode to stream "
                          "uploads; uploads would be buffered")
    first, model = streamed[0], routes[streamed[0]]
    generated = []
    for prefix in prefixes:
        route = copy.deepcopy({key: value for key, value in model.items() if key != "match"})
        # `/v1/responses/` (ids only) is a plain prefix; `/v1/files` also matches `/v1/files/...`.
        route = {"match": {"prefix" if prefix.endswith("/") else "path_separated_prefix": prefix}, **route}
        generated.append(route)
    kept = [route for i, route in enumerate(routes) if i not in streamed]
    routes[:] = kept[:first] + generated + kept[first:]


class NoAliasDumper(yaml.SafeDumper):
    """Write the HTTPS listener's connection manager out in full rather than as a YAML alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Rendered by aoai-gateway from envoy/envoy.yaml; edit the template or the settings, not this file.\n"
    path.write_text(header + yaml.dump(config, Dumper=NoAliasDumper, sort_keys=False))
    return path
