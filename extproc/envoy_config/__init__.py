"""Envoy's configuration: envoy/envoy.yaml rendered for the settings (`rendering`), the local
development CA for HTTPS (`devtls`), and the Envoy binary with `--mode validate` (`binary`).
Nothing here prints: callers say what they did (`dev_ca_notice`)."""

from __future__ import annotations

from pathlib import Path

from ..config import Settings
from .binary import envoy_binary, validate
from .devtls import ensure_dev_certificates
from .rendering import REPO_TEMPLATE, TEMPLATE_ENV, DownstreamTls, NoAliasDumper, render, write

__all__ = [
    "REPO_TEMPLATE",
    "TEMPLATE_ENV",
    "DownstreamTls",
    "NoAliasDumper",
    "dev_ca_notice",
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


def dev_ca_notice(settings: Settings) -> str | None:
    """What to tell the user when HTTPS uses the development CA (after `prepare` made it)."""
    if not _uses_dev_ca(settings):
        return None
    ca = settings.state_path / "tls" / "ca.crt"
    return f"HTTPS uses a local development CA; clients trust it with SSL_CERT_FILE={ca}"


def prepare(settings: Settings, output: Path | None = None, *, check: bool = True) -> Path:
    """Render, write and (unless told not to) validate the Envoy config for `settings`."""
    path = write(render(settings, downstream_tls(settings)), output or settings.state_path / "envoy.yaml")
    if check:
        validate(path, settings.envoy.binary)
    return path
