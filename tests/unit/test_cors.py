"""CORS (`cors.allowed_origins`) as rendered for Envoy: its filter first (preflights never reach the
ext_proc), the origins exact, nothing of it without origins. Through the real Envoy:
tests/e2e/test_client_keys.py."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from extproc import envoy_config
from extproc.config import ConfigError, load_settings


def settings(tmp_path: Path, cors: str):
    path = tmp_path / "gateway.yaml"
    path.write_text("azure: {endpoint: 'https://m.openai.azure.com', api_key: k}\n"
                    f"state_dir: {tmp_path / 'state'}\nlisten: {{https_port: null}}\n{cors}\n")
    return load_settings(path, env={})


def test_allowed_origins_make_envoys_cors_policy_answered_before_the_ext_proc(tmp_path: Path) -> None:
    config = envoy_config.render(settings(tmp_path, "cors: {allowed_origins: ['https://chat.example.com', "
                                                    "'http://localhost:3000']}"), None)
    envoy_config.validate(envoy_config.write(config, tmp_path / "envoy.yaml"))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["http_filters"][0]["name"] == "envoy.filters.http.cors"
    policy = hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["allow_origin_string_match"] == [{"exact": "https://chat.example.com"}, {"exact": "http://localhost:3000"}]
    assert policy["allow_headers"].startswith("authorization, api-key, content-type")


def test_without_origins_there_is_no_cors_at_all(tmp_path: Path) -> None:
    text = orjson.dumps(envoy_config.render(settings(tmp_path, ""), None)).decode()
    # (The rbac filter's reply names cors.allowed_origins: how to let an origin in.)
    assert "cors" not in text.replace("circuit_breakers", "").replace("cors.allowed_origins", "")


@pytest.mark.parametrize("origin", ["*", "chat.example.com", "https://chat.example.com/", "https://a.example/path",
                                    "javascript:alert(1)"])
def test_an_origin_is_a_scheme_and_a_host(tmp_path: Path, origin: str) -> None:
    with pytest.raises(ConfigError, match="cors.allowed_origins"):
        settings(tmp_path, f"cors: {{allowed_origins: ['{origin}']}}")
