"""Client keys (`clients.keys`) without Envoy: the settings (keys only as digests), the core's answers
(401 before anything else, the model list per key, /v1/models per key), and `keys new`.
Through the real Envoy and SDK: tests/e2e/test_client_keys.py."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from extproc.compile import compile_gateway
from extproc.config import ConfigError, load_settings
from extproc.config.redaction import redacted_dump
from extproc.core.decision import AwaitBody, Forward, Reply, RequestHead
from extproc.core.translator import Translator

TEAM_A_KEY = "sk-aoai-team-a-secret"
TEAM_B_KEY = "sk-aoai-team-b-secret"

CONFIG = f"""
azure: {{endpoint: https://main.openai.azure.com, api_key: azure-key}}
models: {{gpt-4o: chat, text-embedding-3-small: embed, dall-e-3: images}}
clients:
  keys:
    - {{name: team-a, key_env: TEAM_A}}
    - {{name: team-b, key_sha256: {hashlib.sha256(TEAM_B_KEY.encode()).hexdigest()}, models: [text-embedding-3-small]}}
state_dir: {{state}}
listen: {{https_port: null}}
"""


def settings(tmp_path: Path, text: str = CONFIG, env: dict[str, str] | None = None):
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace("{state}", str(tmp_path / "state")))
    return load_settings(path, env={"TEAM_A": TEAM_A_KEY} if env is None else env)


def translator(tmp_path: Path) -> Translator:
    return Translator(compile_gateway(settings(tmp_path)))


def post(t: Translator, path: str, body: dict, **head: str) -> Forward | Reply:
    decision = t.on_headers(RequestHead("POST", path, "application/json", has_body=True, **head))
    if isinstance(decision, AwaitBody):
        return decision.finish(orjson.dumps(body))
    return decision


CHAT = {"model": "gpt-4o", "messages": []}


@pytest.mark.parametrize(("head", "message"), [
    ({}, "You didn't provide an API key"),
    ({"authorization": "Bearer sk-aoai-wrong"}, "Incorrect API key provided"),
    ({"api_key": "sk-aoai-wrong"}, "Incorrect API key provided"),
    ({"authorization": "Basic dGVhbS1hOng="}, "Incorrect API key provided"),
])
def test_a_missing_or_unknown_key_is_refused_before_anything_else(tmp_path: Path, head: dict, message: str) -> None:
    reply = translator(tmp_path).on_headers(RequestHead("POST", "/v1/chat/completions", "application/json",
                                                        has_body=True, **head))
    assert isinstance(reply, Reply) and reply.status == 401  # no body is read for it
    error = orjson.loads(reply.body)["error"]
    assert error["code"] == "invalid_api_key" and message in error["message"]
    assert "wrong" not in error["message"] and "sk-aoai" not in error["message"]  # no part of the key


@pytest.mark.parametrize("head", [{"authorization": f"Bearer {TEAM_A_KEY}"}, {"api_key": TEAM_A_KEY}])
def test_a_known_key_is_replaced_by_azures(tmp_path: Path, head: dict) -> None:
    forward = post(translator(tmp_path), "/v1/chat/completions", CHAT, **head)
    assert isinstance(forward, Forward) and forward.credential == (("api-key", "azure-key"),)


def test_a_key_with_a_model_list_gets_only_those_models(tmp_path: Path) -> None:
    t = translator(tmp_path)
    b = {"authorization": f"Bearer {TEAM_B_KEY}"}
    refused = post(t, "/v1/chat/completions", CHAT, **b)
    assert isinstance(refused, Reply) and refused.status == 404
    error = orjson.loads(refused.body)["error"]
    assert error["code"] == "model_not_found" and "text-embedding-3-small" in error["message"]
    forward = post(t, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, **b)
    assert isinstance(forward, Forward) and forward.path.startswith("/openai/deployments/embed/")
    listed = t.on_headers(RequestHead("GET", "/v1/models", **b))
    assert isinstance(listed, Reply) and [m["id"] for m in orjson.loads(listed.body)["data"]] == ["text-embedding-3-small"]
    one = t.on_headers(RequestHead("GET", "/v1/models/gpt-4o", **b))
    assert isinstance(one, Reply) and one.status == 404
    everything = t.on_headers(RequestHead("GET", "/v1/models", authorization=f"Bearer {TEAM_A_KEY}"))
    assert isinstance(everything, Reply) and len(orjson.loads(everything.body)["data"]) == 3
    # Azure's own form: only a deployment of an allowed model; files and batches could reach any model.
    azure_form = t.on_headers(RequestHead("POST", "/openai/deployments/chat/chat/completions?api-version=2024-10-21",
                                          "application/json", has_body=True, **b))
    assert isinstance(azure_form, Reply) and azure_form.status == 404
    allowed = t.on_headers(RequestHead("POST", "/openai/deployments/embed/embeddings?api-version=2024-10-21",
                                       "application/json", has_body=True, **b))
    assert isinstance(allowed, AwaitBody)  # its body is read for deployments it names otherwise
    forward = allowed.finish(b'{"input": "x"}')
    assert isinstance(forward, Forward) and forward.body is None  # naming none: sent as it came
    for path in ("/v1/files", "/v1/batches", "/openai/files?api-version=2024-10-21", "/v1/responses/resp_1",
                 "/openai/v1/deployments/embed/embeddings", "/openai/deployments/embed/embeddings?deployment=chat"):
        refused = t.on_headers(RequestHead("GET", path, **b))
        assert isinstance(refused, Reply) and refused.status == 403, path


def test_keys_are_held_as_digests_and_never_shown(tmp_path: Path) -> None:
    loaded = settings(tmp_path)
    assert [k.key_sha256 for k in loaded.clients.keys] == [hashlib.sha256(k.encode()).hexdigest()
                                                          for k in (TEAM_A_KEY, TEAM_B_KEY)]
    shown = orjson.dumps(redacted_dump(loaded)).decode()
    assert TEAM_A_KEY not in shown and loaded.clients.keys[0].key_sha256 not in shown


def test_a_key_file_is_read_at_start_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "team-a.key").write_text(TEAM_A_KEY + "\n")
    loaded = settings(tmp_path, CONFIG.replace("key_env: TEAM_A", "key_file: team-a.key"), env={})
    assert loaded.clients.keys[0].key_sha256 == hashlib.sha256(TEAM_A_KEY.encode()).hexdigest()


@pytest.mark.parametrize(("text", "message"), [
    ("clients: {keys: [{name: a, key_env: NOPE}]}", "clients.keys[0].key_env: the variable 'NOPE' is not set"),
    ("clients: {keys: [{name: a}]}", "give one of key_sha256, key_env and key_file"),
    ("clients: {keys: [{name: a, key_sha256: abc}]}", "clients.keys.0.key_sha256"),
    ("clients: {keys: [{name: 'a b', key_env: K}]}", "clients.keys.0.name"),
    ("clients: {keys: [{name: a, key_env: K}, {name: a, key_env: K2}]}", "two keys have the same name"),
    ("clients: {keys: [{name: a, key_env: K}, {name: b, key_env: K}]}", "the same key is listed twice"),
])
def test_bad_client_keys_are_refused_at_start(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        settings(tmp_path, "azure: {endpoint: 'https://m.openai.azure.com', api_key: k}\n" + text + "\n",
                 env={"K": "one", "K2": "two"})


def test_client_keys_exclude_sending_the_clients_key_to_azure(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backend 'default' has no key of its own"):
        settings(tmp_path, "azure: {endpoint: 'https://m.openai.azure.com'}\nclients: {keys: [{name: a, key_env: K}]}\n",
                 env={"K": "one"})


def test_keys_new_prints_a_key_and_an_entry_holding_only_its_digest() -> None:
    out = subprocess.run([sys.executable, "-m", "extproc", "keys", "new", "--name", "team-c", "--models", "gpt-4o, x"],
                         capture_output=True, text=True, check=True).stdout
    key = out.splitlines()[0].rsplit(" ", 1)[1]
    assert key.startswith("sk-aoai-") and len(key) > 40
    [entry] = yaml.safe_load(out.split("clients.keys in the config file:\n", 1)[1])
    assert entry == {"name": "team-c", "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "models": ["gpt-4o", "x"]}
    assert key not in out.split("\n", 1)[1]  # the key only on its own line


@pytest.mark.parametrize(("text", "starts"), [
    ("azure: {endpoint: 'https://m.openai.azure.com', api_key: k}\nlisten: {address: 0.0.0.0}", False),
    ("azure: {endpoint: 'https://m.openai.azure.com', api_key: k}\nlisten: {address: '::'}", False),
    ("azure: {endpoint: 'https://m.openai.azure.com', api_key: k}\nlisten: {address: gateway.internal}", False),
    ("azure: {endpoint: 'https://m.openai.azure.com', api_key: k}\nlisten: {address: 127.0.0.2}", True),
    ("azure: {endpoint: 'https://m.openai.azure.com', api_key: k}\nlisten: {address: '::1'}", True),
    ("azure: {endpoint: 'https://m.openai.azure.com', api_key: k}\nlisten: {address: 0.0.0.0}\n"
     "clients: {keys: [{name: a, key_env: K}]}", True),
    ("azure: {endpoint: 'https://m.openai.azure.com', api_key: k}\nlisten: {address: 0.0.0.0}\n"
     "clients: {allow_unauthenticated: true}", True),
    # Nothing of the operator's to spend: each client's own Azure key is sent on.
    ("azure: {endpoint: 'https://m.openai.azure.com'}\nlisten: {address: 0.0.0.0}", True),
])
def test_beyond_loopback_a_gateway_holding_azure_keys_needs_client_keys(tmp_path: Path, text: str, starts: bool) -> None:
    if starts:
        settings(tmp_path, text + "\n", env={"K": "one"})
        return
    with pytest.raises(ConfigError, match="serves beyond this machine.*clients.allow_unauthenticated: true"):
        settings(tmp_path, text + "\n", env={"K": "one"})


def test_the_older_proxies_address_variable_is_held_to_the_same_rule(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    env = {"AZURE_OPENAI_ENDPOINT": "https://m.openai.azure.com", "AZURE_OPENAI_API_KEY": "k",
           "AZURE_OPENAI_PROXY_ADDRESS": "0.0.0.0:8080"}
    with pytest.raises(ConfigError, match="serves beyond this machine"):
        load_settings(path, env=env)


def _hcm(config: dict) -> dict:
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def _http_filters(config: dict) -> list[dict]:
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]


def test_requests_per_minute_is_one_envoy_token_bucket_per_key(tmp_path: Path) -> None:
    from extproc import envoy_config

    limited = CONFIG.replace("models: [text-embedding-3-small]}", "models: [text-embedding-3-small], requests_per_minute: 6000}")
    limited = limited.replace("key_env: TEAM_A}", "key_env: TEAM_A, requests_per_minute: 3}")
    config = envoy_config.render(settings(tmp_path, limited), None)
    envoy_config.validate(envoy_config.write(config, tmp_path / "envoy.yaml"))
    names = [f["name"] for f in _http_filters(config)]
    assert names.index("envoy.filters.http.ext_proc") < names.index("envoy.filters.http.local_ratelimit") \
        < names.index("envoy.filters.http.header_mutation")  # after the name is set, before it is removed
    rate_limit = next(f for f in _http_filters(config) if f["name"] == "envoy.filters.http.local_ratelimit")["typed_config"]
    assert rate_limit["descriptors"] == [
        {"entries": [{"key": "client", "value": "team-a"}],
         "token_bucket": {"max_tokens": 3, "tokens_per_fill": 1, "fill_interval": "20s"}},
        {"entries": [{"key": "client", "value": "team-b"}],  # 100 a second: 5 every 50 ms, Envoy's finest
         "token_bucket": {"max_tokens": 6000, "tokens_per_fill": 5, "fill_interval": "0.05s"}},
    ]
    from extproc.envoy_config.rendering import _refill

    for rate in (1, 3, 7, 600, 1200, 1300, 1799, 1800, 2999, 5000, 6000, 123457, 6_000_000):
        tokens, fill_ms = _refill(rate)
        assert fill_ms >= 50 and tokens * 60_000 == rate * fill_ms, rate  # exactly the rate
    assert rate_limit["response_headers_to_add"][0]["header"] == {"key": "retry-after", "value": "1"}
    # team-a (3 a minute) has its own reply saying 20 s; team-b (6,000) keeps the filter's 1 s.
    mappers = _hcm(config)["local_reply_config"]["mappers"]
    keyed = [m for m in mappers if "header_filter" in str(m["filter"])]
    assert len(keyed) == 1 and keyed[0]["headers_to_add"][0]["header"] == {"key": "retry-after", "value": "20"}
    assert keyed[0]["filter"]["and_filter"]["filters"][1]["header_filter"]["header"]["string_match"] == {"exact": "team-a"}
    assert mappers.index(keyed[0]) + 1 == next(i for i, m in enumerate(mappers)
                                               if "local_rate_limited" in str(m["filter"]) and m is not keyed[0])
    log_format = _hcm(config)["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert log_format["client"] == "%DYNAMIC_METADATA(aoai.request:client)%"  # the key's name in each line
    no_keys = envoy_config.render(settings(tmp_path, "azure: {endpoint: https://m.openai.azure.com, api_key: k}\n"
                                                     "state_dir: {state}\nlisten: {https_port: null}\n"), None)
    assert "client" not in _hcm(no_keys)["access_log"][0]["typed_config"]["log_format"]["json_format"]
    without = envoy_config.render(settings(tmp_path), None)  # keys, no rates: no filter, the header still removed
    assert "envoy.filters.http.local_ratelimit" not in [f["name"] for f in _http_filters(without)]
    assert "x-aoai-client" in orjson.dumps(without).decode()


def test_a_key_limited_to_a_pool_cannot_name_a_same_named_deployment_on_the_default_backend(tmp_path: Path) -> None:
    """Azure-form requests go to the default backend: a pool member's deployment name on another backend may
    name another model there."""
    text = f"""
azure: {{endpoint: https://main.openai.azure.com, api_key: azure-key}}
backends: {{east: {{endpoint: https://east.openai.azure.com, api_key: east-key}}}}
models: {{gpt-4o: chat, cheap: [{{backend: east, deployment: chat}}]}}
clients: {{keys: [{{name: team-b, key_sha256: {hashlib.sha256(TEAM_B_KEY.encode()).hexdigest()}, models: [cheap]}}]}}
state_dir: {{state}}
listen: {{https_port: null}}
"""
    t = Translator(compile_gateway(settings(tmp_path, text, env={})))
    refused = t.on_headers(RequestHead("POST", "/openai/deployments/chat/chat/completions?api-version=2024-10-21",
                                       "application/json", has_body=True, authorization=f"Bearer {TEAM_B_KEY}"))
    assert isinstance(refused, Reply) and refused.status == 404


def test_cors_origins_are_lower_case_as_browsers_send_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cors.allowed_origins"):
        settings(tmp_path, CONFIG + "cors: {allowed_origins: ['https://Chat.example.com']}\n")


ON_YOUR_DATA = {"model": "text-embedding-3-small", "input": "x", "data_sources": [{"type": "azure_search", "parameters": {
    "endpoint": "https://s.search.windows.net", "embedding_dependency": {"type": "deployment_name", "deployment_name": "{}"}}}]}


def _naming(deployment: str) -> dict:
    return orjson.loads(orjson.dumps(ON_YOUR_DATA).replace(b"{}", deployment.encode()))


def test_a_limited_key_names_no_other_deployment_by_a_side_road(tmp_path: Path) -> None:
    """Azure reads deployments in more places than the path and the model: "on your data"'s embedding
    deployment, the image tool's header and body entry. A key with a model list may name only its own."""
    text = CONFIG.replace("models: [text-embedding-3-small]", "models: [text-embedding-3-small, dall-e-3]")
    t = Translator(compile_gateway(settings(tmp_path, text)))
    b = {"authorization": f"Bearer {TEAM_B_KEY}"}
    for refused, name in ((post(t, "/v1/embeddings", _naming("chat"), **b), "chat"),
                          (post(t, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"},
                                image_deployment="chat", **b), "chat"),
                          (post(t, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x",
                                                      "tools": [{"type": "image_generation", "model": "gpt-4o"}]}, **b),
                           "gpt-4o"),
                          (t.on_headers(RequestHead("POST", "/openai/deployments/embed/embeddings?api-version=2024-10-21",
                                                    "application/json", has_body=True, image_deployment="chat", **b)),
                           "chat")):
        assert isinstance(refused, Reply) and refused.status == 404, refused
        assert f"`{name}`" in orjson.loads(refused.body)["error"]["message"]
    for allowed in (post(t, "/v1/embeddings", _naming("embed"), **b),
                    post(t, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"},
                         image_deployment="images", **b),
                    # the image tool's model by its deployment's name (a model's name would reach Azure as written,
                    # and a deployment of that name may be another one)
                    post(t, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x",
                                               "tools": [{"type": "image_generation", "model": "images"}]}, **b)):
        assert isinstance(allowed, Forward), allowed
    by_model_name = post(t, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x",
                                               "tools": [{"type": "image_generation", "model": "dall-e-3"}]}, **b)
    assert isinstance(by_model_name, Reply) and by_model_name.status == 404
    # A key with every model: anything, as before.
    assert isinstance(post(t, "/v1/embeddings", _naming("chat"), authorization=f"Bearer {TEAM_A_KEY}"), Forward)


def test_unmapped_models_reject_holds_for_side_roads_too(tmp_path: Path) -> None:
    text = CONFIG.replace("clients:", "unmapped_models: reject\nclients:")
    t = Translator(compile_gateway(settings(tmp_path, text)))
    a = {"authorization": f"Bearer {TEAM_A_KEY}"}
    assert isinstance(post(t, "/v1/embeddings", _naming("embed"), **a), Forward)
    for refused in (post(t, "/v1/embeddings", _naming("secret-deployment"), **a),
                    post(t, "/v1/chat/completions", CHAT, image_deployment="secret-deployment", **a),
                    t.on_headers(RequestHead("GET", "/v1/models", image_deployment="secret-deployment", **a))):
        assert isinstance(refused, Reply) and refused.status == 404
        assert "secret-deployment" in orjson.loads(refused.body)["error"]["message"]


@pytest.mark.parametrize("body", [
    # Readers differ on case (a case-insensitive one takes `Data_Sources`, or Azure's older camelCase): every
    # such member is checked (duplicates: test_what_is_checked_is_what_azure_reads).
    b'{"model": "text-embedding-3-small", "dataSources": [{"parameters": {"embeddingDependency": '
    b'{"deploymentName": "chat"}}}]}',
    b'{"model": "text-embedding-3-small", "Data_Sources": [{"Parameters": {"Embedding_Dependency": '
    b'{"Deployment_Name": "chat"}}}]}',
    b'{"model": "text-embedding-3-small", "tools": [{"type": "IMAGE_GENERATION", "model": "chat"}]}',
    b'{"model": "text-embedding-3-small", "tools": [{"type": "image_generation", "Model": "chat", "model": "embed"}]}',
])
def test_a_side_road_hidden_by_duplicates_or_case_is_still_checked(tmp_path: Path, body: bytes) -> None:
    t = Translator(compile_gateway(settings(tmp_path)))
    decision = t.on_headers(RequestHead("POST", "/v1/embeddings", "application/json",
                                        authorization=f"Bearer {TEAM_B_KEY}", has_body=True))
    assert isinstance(decision, AwaitBody)
    refused = decision.finish(body)
    assert isinstance(refused, Reply) and refused.status == 404 and b"chat" in refused.body


def test_what_is_checked_is_what_azure_reads(tmp_path: Path) -> None:
    """A body with such members at all goes on as the document that was checked, written out again: a duplicate
    the check did not see (the first `deployment_name` below) is gone."""
    t = Translator(compile_gateway(settings(tmp_path)))
    body = (b'{"model": "text-embedding-3-small", "input": "x", "data_sources": [{"parameters": {"embedding_dependency":'
            b' {"deployment_name": "chat", "deployment_name": "embed"}}}]}')
    for head in (RequestHead("POST", "/v1/embeddings", "application/json", authorization=f"Bearer {TEAM_B_KEY}",
                             has_body=True),
                 RequestHead("POST", "/openai/deployments/embed/embeddings?api-version=2024-10-21", "application/json",
                             authorization=f"Bearer {TEAM_B_KEY}", has_body=True)):
        decision = t.on_headers(head)
        assert isinstance(decision, AwaitBody)
        forward = decision.finish(body)
        assert isinstance(forward, Forward) and forward.body is not None
        sent = orjson.loads(forward.body)
        assert sent["data_sources"][0]["parameters"]["embedding_dependency"] == {"deployment_name": "embed"}
        assert b'"chat"' not in forward.body
        hidden = decision.finish(b'{"model": "text-embedding-3-small", "data_sources": [{"parameters": '
                                 b'{"embedding_dependency": {"deployment_name": "chat"}}}], "data_sources": []}')
        assert isinstance(hidden, Forward) and hidden.body is not None and b'"chat"' not in hidden.body
    # Azure's own form for a limited key: its body is read, the side road refused.
    azure_form = t.on_headers(RequestHead("POST", "/openai/deployments/embed/chat/completions?api-version=2024-10-21",
                                          "application/json", authorization=f"Bearer {TEAM_B_KEY}", has_body=True))
    assert isinstance(azure_form, AwaitBody)
    refused = azure_form.finish(orjson.dumps(_naming("chat")))
    assert isinstance(refused, Reply) and refused.status == 404


def test_the_image_header_sent_twice_is_checked_as_both(tmp_path: Path) -> None:
    from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from extproc.processor.messages import request_head

    headers = pb.HttpHeaders(headers=HeaderMap(headers=[
        HeaderValue(key=":method", raw_value=b"POST"), HeaderValue(key=":path", raw_value=b"/v1/embeddings"),
        HeaderValue(key="x-ms-oai-image-generation-deployment", raw_value=b"chat"),
        HeaderValue(key="x-ms-oai-image-generation-deployment", raw_value=b"images")]))
    head = request_head(headers)._replace(authorization=f"Bearer {TEAM_B_KEY}")
    assert head.image_deployment == "chat,images"
    decision = Translator(compile_gateway(settings(tmp_path))).on_headers(head)
    assert isinstance(decision, AwaitBody)
    refused = decision.finish(b'{"model": "text-embedding-3-small", "input": "x"}')
    assert isinstance(refused, Reply) and refused.status == 404


def test_a_key_file_is_read_again_when_it_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A rotated Secret: the new key works at the worker's next refresh, the old one no longer does; a file that
    goes missing keeps the key read before (a Secret being rewritten must not lock its client out)."""
    import os
    import time

    from extproc.compile import refreshable_credentials

    key_file = tmp_path / "team-c.key"
    key_file.write_text("sk-aoai-first\n")
    text = CONFIG.replace("clients:\n  keys:\n", "clients:\n  keys:\n    - {name: team-c, key_file: team-c.key}\n")
    gateway = compile_gateway(settings(tmp_path, text))
    clients = gateway.clients
    assert clients is not None and clients in refreshable_credentials(gateway)
    assert clients.identify("Bearer sk-aoai-first", "").name == "team-c"  # type: ignore[union-attr]
    assert clients.refresh() is False  # unchanged: a stat, no read
    key_file.write_text("sk-aoai-second\n")
    os.utime(key_file, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert clients.refresh() is True
    assert clients.identify("Bearer sk-aoai-first", "") is None
    assert clients.identify("Bearer sk-aoai-second", "").name == "team-c"  # type: ignore[union-attr]
    assert clients.identify(f"Bearer {TEAM_A_KEY}", "").name == "team-a"  # type: ignore[union-attr]
    key_file.unlink()
    assert clients.refresh() is False
    assert clients.identify("Bearer sk-aoai-second", "").name == "team-c"  # type: ignore[union-attr]
    assert "sk-aoai" not in caplog.text
