"""The rbac filter that keeps web pages out (another site's Origin; a rebound DNS name in Host) as rendered for
Envoy. Through the real Envoy and a real Chromium: tests/e2e/test_browser_guard.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from extproc import envoy_config
from extproc.config import ConfigError, load_settings

KEY_HASH = "0" * 64


def rendered_rules(tmp_path: Path, text: str, validate: bool = False) -> dict[str, Any]:
    path = tmp_path / "gateway.yaml"
    text = text.replace("listen: {", "listen: {https_port: null, ") if "listen:" in text else \
        text + "\nlisten: {https_port: null}"  # no TLS files here
    path.write_text(f"state_dir: {tmp_path / 'state'}\n{text}\n")
    config = envoy_config.render(load_settings(path, env={}), None)
    if validate:
        envoy_config.validate(envoy_config.write(config, tmp_path / "envoy.yaml"))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert names.index("envoy.filters.http.rbac") < names.index("envoy.filters.http.ext_proc")  # before Python
    rbac = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.rbac")
    assert rbac["typed_config"]["rules"]["action"] == "DENY"
    return rbac["typed_config"]["rules"]["policies"]


AZURE = "azure: {endpoint: 'https://m.openai.azure.com', api_key: k}"


def test_the_default_gateway_refuses_every_origin_and_foreign_hosts(tmp_path: Path) -> None:
    policies = rendered_rules(tmp_path, AZURE, validate=True)
    assert policies["foreign-origin"]["permissions"] == [
        {"and_rules": {"rules": [{"header": {"name": "origin", "present_match": True}}]}}]
    assert "foreign-host" in policies


def test_allowed_origins_are_the_exceptions(tmp_path: Path) -> None:
    one = rendered_rules(tmp_path, AZURE + "\ncors: {allowed_origins: ['http://localhost:3000']}")
    assert one["foreign-origin"]["permissions"][0]["and_rules"]["rules"][1] == {
        "not_rule": {"header": {"name": "origin", "string_match": {"exact": "http://localhost:3000"}}}}
    two = rendered_rules(tmp_path, AZURE + "\ncors: {allowed_origins: ['http://localhost:3000', 'https://a.example']}",
                         validate=True)
    exceptions = two["foreign-origin"]["permissions"][0]["and_rules"]["rules"][1]["not_rule"]["or_rules"]["rules"]
    assert [rule["header"]["string_match"]["exact"] for rule in exceptions] == ["http://localhost:3000", "https://a.example"]


@pytest.mark.parametrize("text", [
    # Client keys: a page does not know one (browsers send no Authorization by themselves).
    AZURE + f"\nclients: {{keys: [{{name: a, key_sha256: '{KEY_HASH}'}}]}}",
    # Beyond loopback the operator decided who reaches it (allow_unauthenticated).
    AZURE + "\nlisten: {address: 0.0.0.0}\nclients: {allow_unauthenticated: true}",
    # Each client's own Azure key: nothing of the gateway's to spend.
    "azure: {endpoint: 'https://m.openai.azure.com'}",
])
def test_no_host_policy_where_there_is_no_key_of_the_gateways_for_a_page_to_spend(tmp_path: Path, text: str) -> None:
    policies = rendered_rules(tmp_path, text)
    assert "foreign-host" not in policies and "foreign-origin" in policies


def test_beyond_loopback_listing_the_gateways_names_turns_the_host_rule_on(tmp_path: Path) -> None:
    """The compose file's case: 0.0.0.0 inside a container published on 127.0.0.1."""
    policies = rendered_rules(tmp_path, AZURE + "\nlisten: {address: 0.0.0.0, allowed_hosts: [envoy]}\n"
                                        "clients: {allow_unauthenticated: true}", validate=True)
    assert any(p.fullmatch("envoy:8080") for p in _host_patterns(policies))
    assert not any(p.fullmatch("evil.example:8080") for p in _host_patterns(policies))


def _host_patterns(policies: dict[str, Any]) -> list[re.Pattern[str]]:
    rules = policies["foreign-host"]["permissions"][0]["not_rule"]["or_rules"]["rules"]
    return [re.compile(rule["header"]["string_match"]["safe_regex"]["regex"]) for rule in rules
            if rule["header"]["name"] == ":authority"]


@pytest.mark.parametrize(("host", "served"), [
    ("localhost", True), ("localhost:8080", True), ("LocalHost.", True), ("app.localhost:3000", True),
    ("127.0.0.1:8080", True), ("127.9.9.9", True), ("[::1]:8443", True), ("gw.internal:8080", True),
    ("gw.internal", True), ("GW.INTERNAL", True),
    ("localhost.evil.example", False), ("127.0.0.1.nip.io", False), ("evil.example:8080", False),
    ("gw.internal.evil.example", False), ("gwXinternal", False), ("[::2]", False), ("", False),
    ("localhost:80:80", False), ("gw.internal:", False),
])
def test_host_names_served_on_a_loopback_gateway(tmp_path: Path, host: str, served: bool) -> None:
    """Envoy's regexes are RE2, whose syntax here is Python's too (a full match, as Envoy's safe_regex)."""
    policies = rendered_rules(tmp_path, AZURE + "\nlisten: {allowed_hosts: [gw.internal]}", validate=True)
    assert any(pattern.fullmatch(host) for pattern in _host_patterns(policies)) is served


def test_a_connect_is_left_to_the_ext_proc_whatever_its_host(tmp_path: Path) -> None:
    """It answers that the gateway is no forward proxy (tests/e2e/test_errors.py); nothing is tunnelled."""
    rules = rendered_rules(tmp_path, AZURE)["foreign-host"]["permissions"][0]["not_rule"]["or_rules"]["rules"]
    assert {"header": {"name": ":method", "string_match": {"exact": "CONNECT"}}} in rules


@pytest.mark.parametrize("host", ["*.example.com", "gw.internal:8080", "http://gw.internal", "-gw", "a b", ""])
def test_allowed_hosts_are_plain_names(tmp_path: Path, host: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"{AZURE}\nlisten: {{allowed_hosts: ['{host}']}}\n")
    with pytest.raises(ConfigError, match="allowed_hosts"):
        load_settings(path, env={})
