"""Forward-proxy mode's settings and rendering (without traffic: tests/e2e/test_forward_proxy.py): the hosts
accepted, every piece present and valid for Envoy with the mode on, none of them without it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from extproc import envoy_config
from extproc.config import ConfigError, load_settings

BASE = """
azure: {endpoint: https://main.openai.azure.com, api_key: azure-key}
models: {gpt-4o: chat}
state_dir: {state}
listen: {https_port: null}
"""


def settings(tmp_path: Path, extra: str = ""):
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE.replace("{state}", str(tmp_path / "state")) + extra)
    return load_settings(path, env={})


@pytest.mark.parametrize("host", ["API.openai.com", "1.2.3.4", "api.openai.com.", "localhost", "*.openai.com",
                                  "api.openai.com:443", "x..y", ""])
def test_hosts_are_plain_dns_names(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="forward_proxy.hosts"):
        settings(tmp_path, f"forward_proxy: {{enabled: true, hosts: ['{host}']}}\n")


def test_a_ca_needs_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="together"):
        settings(tmp_path, "forward_proxy: {enabled: true, ca_cert_file: ca.crt}\n")


def test_off_renders_none_of_it(tmp_path: Path) -> None:
    text = orjson.dumps(envoy_config.render(settings(tmp_path), None)).decode()
    for piece in ("forward_proxy", "internal_listener", "upgrade_configs", "connect_matcher",
                  "flush_log_on_tunnel_successfully_established", "aoai.tunnel"):
        assert piece not in text, piece


def test_on_every_piece_is_rendered_and_envoy_accepts_it(tmp_path: Path) -> None:
    config = settings(tmp_path, "forward_proxy: {enabled: true, hosts: [api.openai.com, api.example.org]}\n")
    path = envoy_config.prepare(config, tmp_path / "envoy.yaml")  # makes the certificates, validates with Envoy
    rendered = envoy_config.render(config, None)
    resources = rendered["static_resources"]
    outer, inner = resources["listeners"][0], resources["listeners"][-1]
    assert inner["name"] == "forward_proxy_inner" and "internal_listener" in inner
    chain = inner["filter_chains"][0]
    assert chain["filter_chain_match"]["server_names"] == ["api.openai.com", "api.example.org"]
    hcm = outer["filter_chains"][0]["filters"][0]["typed_config"]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    assert vhost["domains"] == ["api.openai.com:443", "api.example.org:443"]
    assert [u["upgrade_type"] for u in hcm["upgrade_configs"]] == ["CONNECT"]
    inner_hcm = chain["filters"][0]["typed_config"]
    assert "upgrade_configs" not in inner_hcm  # a CONNECT inside a tunnel is refused
    assert [v["name"] for v in inner_hcm["route_config"]["virtual_hosts"]] == ["openai"]
    # The browser guard lets the intercepted Hosts in: inside the tunnel, and on the listener (HTTP_PROXY requests).
    assert "api\\\\.openai\\\\.com" in orjson.dumps(inner_hcm["http_filters"]).decode()
    assert "api\\\\.openai\\\\.com" in orjson.dumps(hcm["http_filters"]).decode()
    assert any(e["name"] == "envoy.bootstrap.internal_listener" for e in rendered["bootstrap_extensions"])
    assert "forward_proxy_tunnel" in [c["name"] for c in resources["clusters"]]
    assert (config.forward_proxy_dir / "leaf.crt").is_file() and path.is_file()
