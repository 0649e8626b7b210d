"""Forward-proxy mode's settings, rendering and CONNECT check (without traffic: tests/e2e/test_forward_proxy.py): the
hosts accepted, every piece present and valid for Envoy with the mode on, none of them without it; with client keys,
a CONNECT's Proxy-Authorization checked by the core."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import orjson
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc import envoy_config
from extproc.auth.client import proxy_key
from extproc.compile import compile_gateway
from extproc.config import ConfigError, load_settings
from extproc.core import errors
from extproc.core.decision import Reply, RequestHead, Tunnel
from extproc.core.translator import Translator
from extproc.processor.messages import request_head, tunnel_response

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
                  "flush_log_on_tunnel_successfully_established", "aoai.tunnel", "accept_http_10"):
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
    assert hcm["http_protocol_options"] == {"accept_http_10": True}  # Python 3.11's CONNECT
    assert "http_protocol_options" not in inner_hcm
    assert [v["name"] for v in inner_hcm["route_config"]["virtual_hosts"]] == ["openai"]
    # The browser guard lets the intercepted Hosts in: inside the tunnel, and on the listener (HTTP_PROXY requests).
    assert "api\\\\.openai\\\\.com" in orjson.dumps(inner_hcm["http_filters"]).decode()
    assert "api\\\\.openai\\\\.com" in orjson.dumps(hcm["http_filters"]).decode()
    assert any(e["name"] == "envoy.bootstrap.internal_listener" for e in rendered["bootstrap_extensions"])
    assert "forward_proxy_tunnel" in [c["name"] for c in resources["clusters"]]
    assert (config.forward_proxy_dir / "leaf.crt").is_file() and path.is_file()


APP_KEY = "sk-aoai-forward-app"
KEYS = f"clients: {{keys: [{{name: app, key_sha256: {hashlib.sha256(APP_KEY.encode()).hexdigest()}}}]}}\n"


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(("value", "key"), [
    (f"Bearer {APP_KEY}", APP_KEY), (f"bearer  {APP_KEY} ", APP_KEY), (_basic(f"app:{APP_KEY}"), APP_KEY),
    (_basic(f"{APP_KEY}:"), APP_KEY), (_basic(f"{APP_KEY}"), APP_KEY), (_basic("a:b:c"), "b:c"),
    ("", None), ("Bearer", None), ("Basic", None), ("Basic !!!", None), ("Basic " + "é", None),
    ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), None), (_basic(":"), None), (f"Digest {APP_KEY}", None)])
def test_the_key_a_connect_carries(value: str, key: str | None) -> None:
    assert proxy_key(value) == key


def test_a_connect_opens_a_tunnel_only_with_a_client_key(tmp_path: Path) -> None:
    translator = Translator(compile_gateway(settings(tmp_path, "forward_proxy: {enabled: true}\n" + KEYS)))
    tunnel = translator.on_headers(RequestHead("CONNECT", "", proxy_authorization=_basic(f"app:{APP_KEY}")))
    assert tunnel == Tunnel("app")
    for value in ("", _basic("app:sk-aoai-wrong"), f"Bearer {APP_KEY}x"):
        refused = translator.on_headers(RequestHead("CONNECT", "", proxy_authorization=value))
        assert isinstance(refused, Reply) and refused.status == 407
        assert ("proxy-authenticate", 'Basic realm="aoai-gateway"') in refused.headers
        assert orjson.loads(refused.body)["error"]["code"] == "invalid_api_key"
    # The tunnel's own requests are decided like any other: their own key, never the CONNECT's.
    inside = translator.on_headers(RequestHead("GET", "/v1/models", proxy_authorization=f"Bearer {APP_KEY}"))
    assert isinstance(inside, Reply) and inside.status == 401
    # Without the mode a CONNECT is what it was: a request for a path the gateway does not serve.
    plain = Translator(compile_gateway(settings(tmp_path, KEYS)))
    refused = plain.on_headers(RequestHead("CONNECT", "", authorization=f"Bearer {APP_KEY}"))
    assert isinstance(refused, Reply) and refused.body == errors.CONNECT_REFUSED.body


def test_the_tunnels_answer_drops_the_credential_and_names_the_key() -> None:
    response = tunnel_response(Tunnel("app"))
    assert list(response.request_headers.response.header_mutation.remove_headers) == ["proxy-authorization"]
    assert not response.request_headers.response.header_mutation.set_headers
    assert dict(response.dynamic_metadata["aoai.request"]) == {"client": "app"}
    head = request_head(pb.HttpHeaders(headers=HeaderMap(headers=[
        HeaderValue(key=":method", raw_value=b"CONNECT"), HeaderValue(key="proxy-authorization", raw_value=b"Bearer k")])))
    assert head.method == "CONNECT" and head.proxy_authorization == "Bearer k"


def test_a_connect_with_two_proxy_credentials_is_refused(tmp_path: Path) -> None:
    """Neither is taken, in either order (a valid one does not hide a second)."""
    translator = Translator(compile_gateway(settings(tmp_path, "forward_proxy: {enabled: true}\n" + KEYS)))
    for values in ((f"Bearer {APP_KEY}", "Bearer sk-aoai-other"), ("Bearer sk-aoai-other", f"Bearer {APP_KEY}"),
                   (_basic(f"app:{APP_KEY}"), _basic(f"app:{APP_KEY}"))):
        head = request_head(pb.HttpHeaders(headers=HeaderMap(headers=[HeaderValue(key=":method", raw_value=b"CONNECT")] + [
            HeaderValue(key="proxy-authorization", raw_value=value.encode()) for value in values])))
        refused = translator.on_headers(head)
        assert isinstance(refused, Reply) and refused.status == 407, values


def test_with_client_keys_the_connect_is_checked_by_the_ext_proc(tmp_path: Path) -> None:
    def connect_filters(extra: str) -> tuple[list[str], str]:
        rendered = envoy_config.render(settings(tmp_path, "forward_proxy: {enabled: true}\n" + extra), None)
        hcm = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        refused = next(r for r in hcm["route_config"]["virtual_hosts"][1]["routes"] if "connect_matcher" in r["match"])
        filters = hcm["upgrade_configs"][0]["filters"]
        timeouts = [f["typed_config"].get("message_timeout") for f in filters if f["name"] == "envoy.filters.http.ext_proc"]
        return [f["name"].rsplit(".", 1)[1] for f in filters], str(refused.get("typed_per_filter_config")) + str(timeouts)

    names, rest = connect_filters(KEYS + "extproc: {message_timeout_ms: 3500}\n")
    assert names == ["rbac", "ext_proc", "set_filter_state", "router"]  # rbac: only a CONNECT (not `Upgrade: CONNECT`)
    assert "'disabled': True" in rest and "'3.5s'" in rest  # a CONNECT elsewhere is refused without asking
    names, rest = connect_filters("")
    assert names == ["rbac", "set_filter_state", "router"] and rest == "None[]"


def test_an_operators_ca_files_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = settings(tmp_path, "forward_proxy: {enabled: true, ca_cert_file: ca/ca.crt, ca_key_file: ca/ca.key}\n")
    assert config.forward_proxy.ca_cert_file == tmp_path / "ca" / "ca.crt"
    assert config.forward_proxy.ca_key_file == tmp_path / "ca" / "ca.key"


def test_up_tells_apps_what_to_set(tmp_path: Path) -> None:
    assert envoy_config.forward_proxy_notice(settings(tmp_path)) is None
    notice = envoy_config.forward_proxy_notice(settings(tmp_path, "forward_proxy: {enabled: true}\n"))
    assert notice is not None
    assert f"HTTPS_PROXY=http://127.0.0.1:8080 SSL_CERT_FILE={tmp_path / 'state' / 'forward-proxy' / 'bundle.pem'}" in notice
    keyed = envoy_config.forward_proxy_notice(settings(tmp_path, "forward_proxy: {enabled: true}\n" + KEYS))
    assert keyed is not None and "HTTPS_PROXY=http://NAME:KEY@127.0.0.1:8080 " in keyed
