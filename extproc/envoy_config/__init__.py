"""Envoy's configuration: envoy/envoy.yaml rendered for the settings (`rendering`), the local
development CA for HTTPS (`devtls`), and the Envoy binary with `--mode validate` (`binary`).
Nothing here prints: callers say what they did (`dev_ca_notice`)."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, Settings
from .binary import envoy_binary, validate
from .devtls import ensure_dev_certificates
from .proxyca import ProxyCertificates, ensure_proxy_certificates
from .rendering import REPO_TEMPLATE, TEMPLATE_ENV, DownstreamTls, NoAliasDumper, render, write

__all__ = [
    "REPO_TEMPLATE",
    "TEMPLATE_ENV",
    "DownstreamTls",
    "NoAliasDumper",
    "dev_ca_notice",
    "forward_proxy_notice",
    "downstream_tls",
    "envoy_binary",
    "prepare",
    "render",
    "validate",
    "write",
]


def _uses_dev_ca(settings: Settings) -> bool:
    return settings.listen.https_port is not None and not (settings.listen.tls_cert_file and settings.listen.tls_key_file)


def downstream_tls(settings: Settings) -> DownstreamTls | None:
    """The HTTPS listener's certificate: the configured one, else the local development CA's (made
    on first use in <state_dir>/tls)."""
    if settings.listen.https_port is None:
        return None
    if settings.listen.tls_cert_file and settings.listen.tls_key_file:
        return DownstreamTls(settings.listen.tls_cert_file, settings.listen.tls_key_file)
    dev = ensure_dev_certificates(settings.state_path / "tls")
    return DownstreamTls(dev.server_cert, dev.server_key)


def forward_proxy_certificates(settings: Settings) -> ProxyCertificates:
    options = settings.forward_proxy
    try:
        return ensure_proxy_certificates(settings.forward_proxy_dir, options.hosts, options.ca_cert_file, options.ca_key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"forward_proxy: {exc}") from exc


def forward_proxy_notice(settings: Settings) -> str | None:
    """What apps need for the forward-proxy mode (after `prepare` made its certificates)."""
    options = settings.forward_proxy
    if not options.enabled:
        return None
    directory = settings.forward_proxy_dir
    host = "127.0.0.1" if settings.listen.address in ("0.0.0.0", "::") else settings.listen.address
    # With client keys the CONNECT needs one too: in the proxy URL (clients send it as Proxy-Authorization).
    userinfo = "NAME:KEY@" if settings.clients.keys else ""
    proxy = f"http://{userinfo}{host}:{settings.listen.http_port}" if settings.listen.http_port else "(an http_port is needed)"
    return (f"Forward proxy for {', '.join(options.hosts)}: its CA is {directory / 'ca.crt'}; apps set\n"
            f"  HTTPS_PROXY={proxy} SSL_CERT_FILE={directory / 'bundle.pem'} (system roots + that CA)\n"
            f"  and NO_PROXY for their other destinations (see the README's Forward-proxy mode)")


def dev_ca_notice(settings: Settings) -> str | None:
    """What to tell the user when HTTPS uses the development CA (after `prepare` made it)."""
    if not _uses_dev_ca(settings):
        return None
    ca = settings.state_path / "tls" / "ca.crt"
    return f"HTTPS uses a local development CA; clients trust it with SSL_CERT_FILE={ca}"


def prepare(settings: Settings, output: Path | None = None, *, check: bool = True) -> Path:
    """Render, write and (unless told not to) validate the Envoy config for `settings` (with the forward-proxy
    mode, its certificates made or renewed first: the config names them)."""
    if settings.forward_proxy.enabled:
        forward_proxy_certificates(settings)
    path = write(render(settings, downstream_tls(settings)), output or settings.state_path / "envoy.yaml")
    if check:
        validate(path, settings.envoy.binary)
    return path
