"""The config model: YAML + the older proxies' environment variables, strict validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.config import ConfigError, UnmappedModelPolicy, load_settings, redacted_dump


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_env() -> None:
    settings = load_settings(env={})
    assert settings.azure.endpoint is None
    assert settings.unmapped_models is UnmappedModelPolicy.PASSTHROUGH
    assert (settings.listen.http_port, settings.listen.https_port) == (8080, 8443)
    assert settings.envoy.admin_port == 9901


def test_yaml_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
azure:
  endpoint: https://res.openai.azure.com/
  api_key_file: key.txt
  ca_file: ca.pem
models: {gpt-4o: prod-4o}
unmapped_models: reject
endpoints:
  responses: {api: v1}
listen: {http_port: 9000, https_port: null}
""")
    (tmp_path / "key.txt").write_text("file-secret\n")
    settings = load_settings(path, env={})
    assert settings.azure.endpoint == "https://res.openai.azure.com"
    assert settings.azure.resolved_api_key() == "file-secret"
    assert settings.azure.ca_file == tmp_path / "ca.pem"  # relative to the file
    assert settings.models == {"gpt-4o": "prod-4o"}
    assert settings.endpoint("responses").api == "v1"
    assert settings.listen.https_port is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("azure: {endpoint: https://x, apikey: 1}", "azure.apikey: unknown key"),
        ("colour: blue", "colour: unknown key"),
        ("azure: {endpoint: ftp://x}", "azure.endpoint"),
        ("azure: {endpoint: https://x.openai.azure.com/openai}", "azure.endpoint"),
        ("listen: {http_port: 70000}", "listen.http_port"),
        ("unmapped_models: guess", "unmapped_models"),
        ("endpoints: {chat: {api: v1}}", "endpoints"),
        ("endpoints: {embeddings: {api: v2}}", "endpoints.embeddings.api"),
        ("listen: {tls_cert_file: a.pem}", "listen"),
        ("limits: {max_request_body_bytes: 10}", "limits.max_request_body_bytes"),
        ("limits: {max_request_body_bytes: 1048575}", "limits.max_request_body_bytes"),  # under Envoy's buffers
        ("models: {gpt-4o: ''}", "models"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), env={})
    assert field in str(caught.value)


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "a: [b"), env={})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(write(tmp_path, "- a"), env={})


def test_env_of_the_fastapi_proxy() -> None:
    settings = load_settings(env={
        "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com",
        "AZURE_OPENAI_API_KEY": "k1",
        "AZURE_OPENAI_API_VERSION": "2024-06-01",
        "AZURE_MODEL_MAP": '{"gpt-3.5-turbo": "my-gpt35"}',
    })
    assert settings.azure.resolved_api_key() == "k1"
    assert settings.azure.api_version == "2024-06-01"
    assert settings.models == {"gpt-3.5-turbo": "my-gpt35"}


def test_env_of_the_go_proxy() -> None:
    settings = load_settings(env={
        "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com",
        "AZURE_OPENAI_TOKEN": "k2",
        "AZURE_OPENAI_APIVERSION": "2024-02-01",
        "AZURE_OPENAI_MODEL_MAPPER": "gpt-3.5-turbo=gpt-35-turbo, gpt-4=gpt4",
        "AZURE_OPENAI_PROXY_ADDRESS": "127.0.0.1:9999",
    })
    assert settings.azure.resolved_api_key() == "k2"
    assert settings.azure.api_version == "2024-02-01"
    assert settings.models == {"gpt-3.5-turbo": "gpt-35-turbo", "gpt-4": "gpt4"}
    assert (settings.listen.address, settings.listen.http_port) == ("127.0.0.1", 9999)


def test_env_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "azure: {endpoint: https://file.openai.azure.com, api_key: from-file}")
    settings = load_settings(path, env={"AZURE_OPENAI_ENDPOINT": "https://env.openai.azure.com", "AZURE_OPENAI_API_KEY": "from-env"})
    assert settings.azure.endpoint == "https://env.openai.azure.com"
    assert settings.azure.resolved_api_key() == "from-env"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"AZURE_MODEL_MAP": "{nope"}, "AZURE_MODEL_MAP"),
        ({"AZURE_MODEL_MAP": '["a"]'}, "AZURE_MODEL_MAP"),
        ({"AZURE_OPENAI_MODEL_MAPPER": "a=b,c"}, "AZURE_OPENAI_MODEL_MAPPER"),
        ({"AZURE_OPENAI_PROXY_ADDRESS": "nohost"}, "AZURE_OPENAI_PROXY_ADDRESS"),
        ({"AZURE_OPENAI_ENDPOINT": "r.openai.azure.com"}, "azure.endpoint"),
    ],
)
def test_bad_env_names_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(env=env)


def test_unreadable_key_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="azure.api_key_file"):
        load_settings(write(tmp_path, "azure: {api_key_file: /nonexistent/key}"), env={})


def test_redacted_dump_hides_the_key() -> None:
    dump = redacted_dump(load_settings(env={"AZURE_OPENAI_API_KEY": "super-secret-value"}))
    assert "super-secret-value" not in repr(dump)
    assert dump["azure"]["api_key"] == "<redacted>"


def test_config_without_an_endpoint_shows_what_up_runs(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """`up` starts the emulator with a key: `config` says so instead of 'the client's token is forwarded'."""
    import json

    from extproc.cli import main

    for name in [n for n in os.environ if n.startswith(("AZURE_", "AOAI_GATEWAY_"))]:
        monkeypatch.delenv(name)
    assert main(["config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "emulator" in shown["effective"]["upstream"]
    assert "emulator-key" in shown["effective"]["api_key_source"] and "forwarded" not in shown["effective"]["api_key_source"]
    assert shown["azure"]["api_key"] == "<redacted>" and "emulator" in shown["effective"]["models"]
    assert shown["models"] == {} and shown["azure"]["endpoint"].startswith("http://127.0.0.1:")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "mine")
    monkeypatch.setenv("AZURE_OPENAI_MODEL_MAPPER", "gpt-4o=gpt-4o")
    assert main(["config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["effective"]["api_key_source"].startswith("azure.api_key") and shown["models"] == {"gpt-4o": "gpt-4o"}
    assert "models" not in shown["effective"]
    assert "mine" not in json.dumps(shown)


def test_an_empty_api_key_is_refused_not_taken_for_no_key(tmp_path: Path) -> None:
    """Fail closed: `api_key: ""` must not quietly mean "forward each client's own key"."""
    with pytest.raises(ConfigError, match="azure.api_key.*empty"):
        load_settings(write(tmp_path, "azure: {api_key: '  '}"), env={})
