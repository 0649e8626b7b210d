"""Every Envoy config the project ships, as each deployment artifact makes it: the ext_proc's
renderer run on that artifact's settings (config file, environment, mounts), then the result checked
by the real Envoy (`envoy --mode validate`, inside `prepare`), and tied back to the artifact: Envoy
reads the file the ext_proc writes, over a volume both mount, and finds the sockets there."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from extproc import envoy_config
from extproc.envoy_config.devtls import ensure_dev_certificates
from extproc.config import load_settings

from .flavours import Flavour, all_flavours, materialize
from .helpers import ENVOY_READY_SCRIPT_PORT, TEMPLATE

FLAVOURS = {flavour.name: flavour for flavour in all_flavours()}


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
    if name != "systemd":  # there ProtectSystem=strict makes every path read-only for Envoy
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
