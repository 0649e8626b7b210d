"""Bring your own key without Envoy: the token's format (the Node proxy's), the core's decision (the resource
as the Host, the client's key as api-key, its deployment or model map), the settings and the rendered Envoy
config. Through the real Envoy, a DNS server the test controls and the emulator: tests/e2e/test_byok.py."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from extproc import envoy_config
from extproc.compile import compile_gateway
from extproc.config import ConfigError, load_settings
from extproc.core.decision import AwaitBody, Forward, Reply, RequestHead
from extproc.core.translator import Translator
from extproc.processor.messages import body_forward_response
from extproc.routing.byok import NotByok, parse_byok

KEY = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(("token", "resource", "deployment", "deployments", "version"), [
    (f"contoso:gpt4o:{KEY}", "contoso", "gpt4o", None, None),
    (f"Contoso-East:gpt4o:{KEY}:2024-10-21", "contoso-east", "gpt4o", None, "2024-10-21"),
    (f"c1:gpt-4o|dep1,text-embedding-3-small|emb:{KEY}:2025-04-01-preview", "c1", None,
     {"gpt-4o": "dep1", "text-embedding-3-small": "emb"}, "2025-04-01-preview"),
])
def test_the_node_proxys_format(token: str, resource: str, deployment: str | None, deployments: dict | None,
                                version: str | None) -> None:
    parsed = parse_byok(token)
    assert parsed is not None and parsed.resource == resource and parsed.key == KEY
    assert parsed.deployment == deployment and parsed.deployments == deployments and parsed.api_version == version


@pytest.mark.parametrize("token", [
    f"evil.example:d:{KEY}", f"127.0.0.1:d:{KEY}", f"a_b:d:{KEY}", f"-a:d:{KEY}", f"{'a' * 65}:d:{KEY}",
    f"c:d:{KEY}:latest", f"c:d:short", f"c:d/..:{KEY}", f"c:a|b,a|c:{KEY}", f"c:a|:{KEY}", f"c:d:{KEY}:v:extra",
    f"c::{KEY}", "c:d", f"c:d:{KEY}!",
])
def test_anything_else_with_a_colon_is_refused(token: str) -> None:
    with pytest.raises(NotByok):
        parse_byok(token)


def test_a_token_without_a_colon_is_an_ordinary_key() -> None:
    assert parse_byok(KEY) is None


def settings(tmp_path: Path, byok: str = "true", extra: str = ""):
    path = tmp_path / "gateway.yaml"
    path.write_text(f"azure: {{endpoint: 'https://m.openai.azure.com', api_key: server}}\nstate_dir: {tmp_path / 's'}\n"
                    f"listen: {{https_port: null}}\nclients: {{byok: {byok}{extra}}}\n")
    return load_settings(path, env={})


def decide(t: Translator, token: str, body: dict, path: str = "/v1/chat/completions") -> Forward | Reply:
    decision = t.on_headers(RequestHead("POST", path, "application/json", f"Bearer {token}", has_body=True))
    return decision.finish(orjson.dumps(body)) if isinstance(decision, AwaitBody) else decision


def test_the_clients_resource_is_the_host_and_its_key_the_api_key(tmp_path: Path) -> None:
    t = Translator(compile_gateway(settings(tmp_path)))
    forward = decide(t, f"contoso:dep:{KEY}", {"model": "gpt-4o"})
    assert isinstance(forward, Forward) and forward.cluster == "byok"
    assert forward.authority == "contoso.openai.azure.com" and forward.credential == (("api-key", KEY),)
    assert forward.path == "/openai/deployments/dep/chat/completions?api-version=2024-10-21"
    mutation = body_forward_response(forward).request_body.response.header_mutation
    assert {h.header.key: h.header.raw_value for h in mutation.set_headers}[":authority"] == b"contoso.openai.azure.com"
    assert "authorization" in mutation.remove_headers
    us = Translator(compile_gateway(settings(tmp_path, "{host_suffix: openai.azure.us, port: 8443}")))
    assert decide(us, f"contoso:dep:{KEY}", {"model": "m"}).authority == "contoso.openai.azure.us:8443"  # type: ignore[union-attr]
    ordinary = decide(t, "plain-key", {"model": "gpt-4o"})  # the gateway's resource and key
    assert isinstance(ordinary, Forward) and ordinary.cluster == "azure" and ordinary.credential == (("api-key", "server"),)
    refused = decide(t, "contoso.evil.example:dep:" + KEY, {"model": "gpt-4o"})
    assert isinstance(refused, Reply) and refused.status == 401 and KEY.encode() not in refused.body
    assert decide(t, f"contoso:dep:{KEY}", {}, "/v1/files").status == 404  # type: ignore[union-attr]
    assert not compile_gateway(settings(tmp_path)).credentials_reusable  # decisions holding client keys: not cached


def test_byok_is_exclusive_with_client_keys_and_rendered_only_when_on(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="byok"):
        settings(tmp_path, "true", ", keys: [{name: a, key_sha256: '" + "0" * 64 + "'}]")
    config = envoy_config.render(settings(tmp_path, "{host_suffix: openai.azure.cn, dns_resolver: '127.0.0.1:53'}"), None)
    envoy_config.validate(envoy_config.write(config, tmp_path / "envoy.yaml"))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route = next(r for r in hcm["route_config"]["virtual_hosts"][0]["routes"] if r["route"].get("cluster") == "byok")
    assert route["match"]["headers"][1]["string_match"]["safe_regex"]["regex"] == r"[a-z0-9-]+\.openai\.azure\.cn"
    extproc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    assert extproc["typed_config"]["mutation_rules"] == {"allow_all_routing": True}
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "byok")
    resolver = cluster["cluster_type"]["typed_config"]["dns_cache_config"]["typed_dns_resolver_config"]
    assert resolver["typed_config"]["resolvers"] == [{"socket_address": {"address": "127.0.0.1", "port_value": 53}}]
    off = orjson.dumps(envoy_config.render(settings(tmp_path, "false"), None)).decode()
    assert '"byok"' not in off and "dynamic_forward_proxy" not in off and "allow_all_routing" not in off


@pytest.mark.parametrize("resolver", ["999.1.1.1:53", "10.0.0.1:70000", "dns.example:53", "10.0.0.1"])
def test_the_dns_resolver_is_an_address_and_port(tmp_path: Path, resolver: str) -> None:
    with pytest.raises(ConfigError, match="dns_resolver"):
        settings(tmp_path, f"{{dns_resolver: '{resolver}'}}")
