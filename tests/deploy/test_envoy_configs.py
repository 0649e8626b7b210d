"""Every Envoy config the project ships, as each deployment artifact makes it: the ext_proc's
renderer run on that artifact's settings (config file, environment, mounts), then the result checked
by the real Envoy (`envoy --mode validate`, inside `prepare`), and tied back to the artifact: Envoy
reads the file the ext_proc writes, over a volume both mount, and finds the sockets there."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc import envoy_config
from extproc.envoy_config.devtls import ensure_dev_certificates
from extproc.config import load_settings
from tests.unit.test_proxyca import handshake

from .flavours import Flavour, all_flavours, forward_proxy_flavours, materialize
from .helpers import ENVOY_READY_SCRIPT_PORT, TEMPLATE, require_tool

FORWARD_PROXY_FLAVOURS = {flavour.name: flavour for flavour in forward_proxy_flavours()}
FLAVOURS = {flavour.name: flavour for flavour in all_flavours()} | FORWARD_PROXY_FLAVOURS


def _shared_volume(flavour: Flavour, container_path: str) -> str:
    """The volume both processes mount at the directory holding `container_path`."""
    candidates = [p for p in flavour.extproc_mounts if container_path.startswith(p.rstrip("/") + "/")]
    assert candidates, f"{container_path} is on no volume of the ext_proc"
    mount = max(candidates, key=len)
    assert flavour.envoy_mounts.get(mount) == flavour.extproc_mounts[mount], (
        f"Envoy does not mount the ext_proc's {mount}"
    )
    return mount


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_rendered_config_is_valid_and_wired(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    flavour = FLAVOURS[name]
    # Envoy runs the file the ext_proc renders, from a volume both mount (Envoy read-only where it can).
    assert flavour.envoy_config_path == flavour.rendered_path
    shared = _shared_volume(flavour, flavour.rendered_path)
    if not name.startswith("systemd"):  # there ProtectSystem=strict makes every path read-only for Envoy
        assert shared in flavour.read_only_envoy_mounts
    assert "--disable-hot-restart" in flavour.envoy_argv
    # In the ext_proc's own paths: the sockets and the HTTPS certificate are where Envoy can read them.
    in_container = flavour.container_settings()
    for socket in in_container.socket_paths():
        assert _shared_volume(flavour, str(socket)) == shared
    if in_container.listen.https_port is not None:
        for path in (in_container.listen.tls_cert_file or in_container.state_path / "tls" / "server.crt",
                     in_container.listen.tls_key_file or in_container.state_path / "tls" / "server.key"):
            _shared_volume(flavour, str(path))

    with tempfile.TemporaryDirectory(prefix="aoai-") as tmp:  # short: Unix socket paths
        root = Path(tmp)
        layout = materialize(flavour, root)
        template = layout.env["AOAI_GATEWAY_ENVOY_TEMPLATE"]
        assert Path(template).resolve() == TEMPLATE, "the image/unit renders from envoy/envoy.yaml"
        monkeypatch.setenv(envoy_config.TEMPLATE_ENV, template)
        settings = load_settings(env=layout.env)
        rendered = envoy_config.prepare(settings, layout.host(flavour.rendered_path))  # validates with Envoy
        config = yaml.safe_load(rendered.read_text())

        # The sockets are in the shared volume, where Envoy's extproc cluster looks for them.
        shared_host = layout.host(shared)
        sockets = settings.socket_paths()
        assert sockets and all(p.parent == shared_host for p in sockets), sockets
        cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "extproc")
        pipes = [e["endpoint"]["address"]["pipe"]["path"]
                 for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
        assert pipes == [str(p) for p in sockets]
        assert [layout.host(str(p)) for p in in_container.socket_paths()] == sockets

    # The probes check what the settings configure.
    for probe in flavour.extproc_probes:
        assert "-m extproc health" in " ".join(probe), probe
    assert flavour.extproc_probes, "the ext_proc needs a gRPC health check"
    for probe in flavour.envoy_probes:
        ports = ENVOY_READY_SCRIPT_PORT.findall(" ".join(probe))
        assert ports == [str(settings.envoy.admin_port)], probe
        assert "GET /ready" in " ".join(probe)
    admin = config["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1"


def _connection_managers(listener: dict[str, Any]) -> list[dict[str, Any]]:
    return [f["typed_config"] for chain in listener["filter_chains"] for f in chain["filters"]
            if f["name"] == "envoy.filters.network.http_connection_manager"]


@pytest.mark.parametrize("name", list(FORWARD_PROXY_FLAVOURS))
def test_forward_proxy_is_rendered_and_wired(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each artifact's forward_proxy section, turned on as its comments say: Envoy gets the CONNECT virtual host on
    every listener and the internal listener with the certificate the ext_proc signed, from a volume Envoy mounts;
    the CA is the one the artifact says (the gateway's own in its state dir, or the operator's Secret, which Envoy
    never mounts); clients trusting the bundle accept that certificate for each intercepted host."""
    flavour = FORWARD_PROXY_FLAVOURS[name]
    in_container = flavour.container_settings()
    options = in_container.forward_proxy
    assert options.enabled, f"{name}: the commented forward_proxy section does not turn the mode on"
    for file in ("leaf.crt", "leaf.key"):  # signed by the ext_proc at start, read by Envoy: a volume both mount
        _shared_volume(flavour, str(in_container.forward_proxy_dir / file))
    if flavour.forward_proxy_ca is None:
        assert options.ca_cert_file is None and options.ca_key_file is None, "the gateway's own CA, in its state dir"
    else:  # every replica signs with the operator's CA: a Secret only the ext_proc mounts
        assert (str(options.ca_cert_file), str(options.ca_key_file)) == flavour.forward_proxy_ca
        secret_mount = str(Path(flavour.forward_proxy_ca[0]).parent)
        assert secret_mount in flavour.extproc_mounts and secret_mount not in flavour.envoy_mounts
        assert flavour.extproc_mounts[secret_mount] not in flavour.envoy_mounts.values(), "Envoy never sees the CA's key"

    with tempfile.TemporaryDirectory(prefix="aoai-") as tmp:
        layout = materialize(flavour, Path(tmp))
        monkeypatch.setenv(envoy_config.TEMPLATE_ENV, layout.env["AOAI_GATEWAY_ENVOY_TEMPLATE"])
        settings = load_settings(env=layout.env)
        rendered = envoy_config.prepare(settings, layout.host(flavour.rendered_path))  # validates with Envoy
        config = yaml.safe_load(rendered.read_text())
        resources = config["static_resources"]
        directory = layout.host(str(in_container.forward_proxy_dir))
        assert directory == settings.forward_proxy_dir

        (inner,) = [listener for listener in resources["listeners"] if listener["name"] == "forward_proxy_inner"]
        assert "internal_listener" in inner
        (chain,) = inner["filter_chains"]
        assert chain["filter_chain_match"]["server_names"] == options.hosts
        (certificate,) = chain["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"]
        assert certificate["certificate_chain"]["filename"] == str(directory / "leaf.crt")
        assert certificate["private_key"]["filename"] == str(directory / "leaf.key")
        assert all("upgrade_configs" not in hcm for hcm in _connection_managers(inner)), "no CONNECT inside a tunnel"
        outer = [listener for listener in resources["listeners"] if listener is not inner]
        assert outer and len(outer) == (in_container.listen.http_port is not None) + (in_container.listen.https_port is not None)
        for listener in outer:
            for hcm in _connection_managers(listener):
                assert "CONNECT" in [u["upgrade_type"] for u in hcm.get("upgrade_configs") or []], listener["name"]
                (vhost,) = [v for v in hcm["route_config"]["virtual_hosts"] if v["name"] == "forward_proxy"]
                assert vhost["domains"] == [f"{host}:443" for host in options.hosts]
                (route,) = vhost["routes"]
                assert "connect_matcher" in route["match"]
                assert route["route"]["cluster"] == "forward_proxy_tunnel"
                assert [u["upgrade_type"] for u in route["route"]["upgrade_configs"]] == ["CONNECT"]
        (tunnel,) = [c for c in resources["clusters"] if c["name"] == "forward_proxy_tunnel"]
        (endpoint,) = [e for group in tunnel["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
        assert endpoint["endpoint"]["address"]["envoy_internal_address"]["server_listener_name"] == "forward_proxy_inner"

        # The certificate Envoy shows is accepted, for each host, by a client trusting the bundle the artifact hands
        # out, and by OpenSSL's own verifier against the CA alone (name constraints included).
        ca = directory / "ca.crt"
        if flavour.forward_proxy_ca is not None:
            secret_cert = layout.host(flavour.forward_proxy_ca[0])
            assert ca.read_bytes() == secret_cert.read_bytes()
            assert not (directory / "ca.key").exists(), "the operator's key is not copied into the shared volume"
        else:
            assert (directory / "ca.key").is_file()
        openssl = require_tool("openssl", "the Debian package openssl")
        for host in options.hosts:
            handshake(directory / "leaf.crt", directory / "leaf.key", directory / "bundle.pem", host)
            result = subprocess.run([openssl, "verify", "-x509_strict", "-CAfile", str(ca), "-verify_hostname", host,
                                     str(directory / "leaf.crt")], capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, result.stdout + result.stderr


def test_template_as_shipped_is_valid(tmp_path: Path) -> None:
    """envoy/envoy.yaml itself, unrendered: only the TLS files it names are moved to files that exist."""
    dev = ensure_dev_certificates(tmp_path / "tls")
    text = TEMPLATE.read_text()
    listeners = yaml.safe_load(text)["static_resources"]["listeners"]
    for listener in listeners:
        for chain in listener["filter_chains"]:
            context = chain.get("transport_socket", {}).get("typed_config", {}).get("common_tls_context", {})
            for certificate in context.get("tls_certificates", []):
                text = text.replace(certificate["certificate_chain"]["filename"], str(dev.server_cert))
                text = text.replace(certificate["private_key"]["filename"], str(dev.server_key))
    copy = tmp_path / "envoy.yaml"
    copy.write_text(text)
    envoy_config.validate(copy)
