"""Pools without Envoy running: the settings, the core's decision (every member's path and credential),
the ext_proc's answer (dynamic metadata), and the rendered Envoy config (checked by `envoy --mode validate`).
The failover itself runs in tests/e2e/test_pools.py."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from google.protobuf.json_format import MessageToDict

from extproc import envoy_config
from extproc.compile import compile_gateway
from extproc.config import ConfigError, load_settings
from extproc.envoy_config.devtls import ensure_dev_certificates
from extproc.core.decision import AwaitBody, Forward, Reply, RequestHead, Try
from extproc.core.translator import Translator
from extproc.processor.messages import body_forward_response
from extproc.routing import POOL_METADATA_NAMESPACE

POOLS = """
azure: {endpoint: https://main.openai.azure.com, api_key: main-key}
backends:
  east: {endpoint: https://east.openai.azure.com, api_key: east-key}
  west: {endpoint: http://127.0.0.1:9999, api_key_env: WEST_KEY, api_version: 2025-04-01-preview}
  north: {endpoint: https://north.example.com, api_key: north-key, ca_file: {ca}}
models:
  gpt-4o:
    - {backend: east, deployment: gpt-4o-east, priority: 5, weight: 3}
    - {backend: north, deployment: gpt-4o-north, priority: 5}
    - {backend: west, deployment: gpt-4o-west, priority: 9}
  same:
    - {backend: east, deployment: shared}
    - {backend: default, deployment: shared}
  text-embedding-3-small: embeddings
state_dir: {state}
extproc: {workers: 1}
listen: {https_port: null}
"""


def settings(tmp_path: Path, text: str = POOLS, env: dict[str, str] | None = None):
    path = tmp_path / "gateway.yaml"
    ca = ensure_dev_certificates(tmp_path / "pki").ca_cert
    path.write_text(text.replace("{state}", str(tmp_path / "state")).replace("{ca}", str(ca)))
    return load_settings(path, env={"WEST_KEY": "west-key"} if env is None else env)


def decide(tmp_path: Path, path: str, body: dict, **head: str):
    translator = Translator(compile_gateway(settings(tmp_path)))
    decision = translator.on_headers(RequestHead("POST", path, "application/json", has_body=True, **head))
    assert isinstance(decision, AwaitBody)
    return decision.finish(orjson.dumps(body))


def test_a_pool_forward_carries_every_members_path_and_credential(tmp_path: Path) -> None:
    forward = decide(tmp_path, "/v1/chat/completions?x=1", {"model": "gpt-4o", "messages": []},
                     authorization="Bearer client-key")
    assert isinstance(forward, Forward)
    assert forward.cluster == "pool-0" and forward.credential == () and forward.body is None
    query = "?x=1&api-version=2024-10-21"
    assert forward.tries == (
        Try("0", "/openai/deployments/gpt-4o-east/chat/completions" + query, (("api-key", "east-key"),)),
        Try("1", "/openai/deployments/gpt-4o-north/chat/completions" + query, (("api-key", "north-key"),)),
        Try("2", "/openai/deployments/gpt-4o-west/chat/completions?x=1&api-version=2025-04-01-preview",
            (("api-key", "west-key"),)),  # its backend's own api-version
    )
    # What Envoy gets: the tries as dynamic metadata; no credential in the headers, the client's removed.
    response = body_forward_response(forward)
    metadata = MessageToDict(response.dynamic_metadata)
    assert set(metadata) == {POOL_METADATA_NAMESPACE + member for member in "012"} | {"aoai.request"}
    assert metadata["aoai.request"] == {"model": "gpt-4o"}  # the member that answers names its deployment
    assert metadata[POOL_METADATA_NAMESPACE + "2"] == {"path": forward.tries[2].path, "headers": [["api-key", "west-key"]]}
    mutation = response.request_body.response.header_mutation
    assert {h.header.key for h in mutation.set_headers} == {":path", "x-aoai-gateway-cluster"}
    assert set(mutation.remove_headers) == {"authorization", "proxy-authorization", "api-key"}


def test_a_body_that_names_the_deployment_needs_one_name_across_the_pool(tmp_path: Path) -> None:
    refused = decide(tmp_path, "/v1/responses", {"model": "gpt-4o", "input": "hi"})
    assert isinstance(refused, Reply) and refused.status == 400
    assert orjson.loads(refused.body)["error"]["code"] == "unsupported_for_pool"
    forward = decide(tmp_path, "/v1/responses", {"model": "same", "input": "hi"})
    assert isinstance(forward, Forward) and forward.cluster == "pool-1"
    assert orjson.loads(forward.body or b"") == {"model": "shared", "input": "hi"}
    assert [t.credential for t in forward.tries] == [(("api-key", "east-key"),), (("api-key", "main-key"),)]


def test_models_outside_pools_keep_the_default_backend(tmp_path: Path) -> None:
    forward = decide(tmp_path, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"})
    assert isinstance(forward, Forward) and forward.cluster == "azure" and forward.tries == ()
    assert forward.credential == (("api-key", "main-key"),)


@pytest.mark.parametrize(("text", "message"), [
    ("models: {m: []}", "a pool needs at least one member"),
    ("models: {m: [{backend: nope, deployment: d}]}", "models.m[0].backend: unknown backend 'nope'"),
    ("models: {m: [{backend: default, deployment: d}, {backend: default, deployment: d}]}", "listed twice"),
    ("models: {m: [{backend: default, deployment: 'a/b'}]}", "not a deployment name"),
    ("models: {m: [{backend: default, deployment: d, weight: 0}]}", "weight"),
    ("backends: {default: {endpoint: 'https://x.openai.azure.com'}}", "that name is the `azure:` section's"),
    ("backends: {x: {api_key: k}}", "backends.x.endpoint: required"),
    ("backends: {x: {endpoint: 'https://x.openai.azure.com', api_key_env: NOT_SET}}", "'NOT_SET' is not set"),
    ("backends: {x: {endpoint: 'https://x.openai.azure.com', api_key: k, api_key_env: K}}", "give one of"),
    ("backends: {x: {endpoint: 'https://x.openai.azure.com', type: oai}}", "backends.x.type"),
    ("backends: {x: {endpoint: 'https://api.openai.com', type: openai}}", "an openai-type backend needs its key"),
    ("azure: {type: openai}", "azure.type"),
    ("backends: {a: {endpoint: 'https://a.example', type: openai, api_key: k},"
     " b: {endpoint: 'https://b.example', type: openai, api_key: k}}\n"
     "models: {m: [{backend: a, deployment: gpt-4o}, {backend: b, deployment: gpt-4o-mini}]}",
     "openai-type members name different models"),
    ("circuit_breaker: {failure_statuses: [429, '599-500']}", "from the lower status to the higher"),
    ("circuit_breaker: {failure_statuses: ['200-299']}", "only error statuses"),
    ("circuit_breaker: {failure_statuses: ['5xx']}", "circuit_breaker.failure_statuses"),
    ("circuit_breaker: {failure_statuses: []}", "at least one status"),
    ("circuit_breaker: {trip_seconds: 100, max_trip_seconds: 10}", "longer than max_trip_seconds"),
    ("circuit_breaker: {failures: 0}", "circuit_breaker.failures"),
    ("circuit_breaker: {trips: 3}", "circuit_breaker.trips: unknown key"),
    ("default_model: ' '", "default_model"),
    ("failover: {max_attempts: 0}", "failover.max_attempts"),
])
def test_inconsistent_pools_are_refused_at_start_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        settings(tmp_path, "azure: {endpoint: 'https://main.openai.azure.com', api_key: k}\n" + text + "\n", env={})


def test_the_config_command_shows_pools_and_redacts_every_key(tmp_path: Path) -> None:
    from extproc.config.redaction import redacted_dump

    dumped = orjson.dumps(redacted_dump(settings(tmp_path))).decode()
    for key in ("main-key", "east-key", "west-key", "north-key"):
        assert key not in dumped
    shown = redacted_dump(settings(tmp_path))["effective"]["pools"]
    assert shown["gpt-4o"][0] == "east/gpt-4o-east (priority 5, weight 3)"


def test_rendered_pools_are_valid_envoy_with_members_as_endpoints(tmp_path: Path) -> None:
    config = envoy_config.render(settings(tmp_path), None)
    path = envoy_config.write(config, tmp_path / "envoy.yaml")
    envoy_config.validate(path)  # the real Envoy accepts it
    for key in ("main-key", "east-key", "west-key", "north-key"):  # keys come per request, never from a file
        assert key not in path.read_text()
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert "pool_model" not in clusters and {"pool-0", "pool-1"} <= set(clusters)
    levels = clusters["pool-0"]["load_assignment"]["endpoints"]
    assert [level["priority"] for level in levels] == [0, 1]  # 5 and 9, counted from 0
    east, north = levels[0]["lb_endpoints"]
    assert east["endpoint"]["hostname"] == "east.openai.azure.com" and east["load_balancing_weight"] == 3
    # The cluster's own TLS socket; its circuit, whose health the breaker answers on its Unix socket.
    assert east["metadata"]["filter_metadata"] == {"aoai": {"member": "0", "circuit": "0", "name": "east/gpt-4o-east"}}
    assert east["endpoint"]["health_check_config"] == {
        "hostname": "circuit-0", "address": {"pipe": {"path": str(tmp_path / "state" / "run" / "breaker.sock")}}}
    [health_check] = clusters["pool-0"]["health_checks"]
    assert health_check["transport_socket_match_criteria"] == {"plain": True}  # never TLS to the breaker
    assert clusters["pool-0"]["common_lb_config"] == {"healthy_panic_threshold": {"value": 0}, "update_merge_window": "0s"}
    # Priority 2 gets nothing while a priority-1 member is in (Envoy's default factor spills at once).
    assert clusters["pool-0"]["load_assignment"]["policy"] == {"overprovisioning_factor": 100000}
    # `same` shares no (backend, deployment) with gpt-4o: circuits 3 and 4.
    assert [e["metadata"]["filter_metadata"]["aoai"]["circuit"]
            for e in clusters["pool-1"]["load_assignment"]["endpoints"][0]["lb_endpoints"]] == ["3", "4"]
    assert clusters["breaker_log"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": str(tmp_path / "state" / "run" / "breaker-log.sock")}}
    assert north["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {"member": "1"}
    [west] = levels[1]["lb_endpoints"]
    assert west["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {"plain": True}
    matches = {m["name"]: m for m in clusters["pool-0"]["transport_socket_matches"]}
    north_tls = matches["member-1"]["transport_socket"]["typed_config"]
    assert north_tls["common_tls_context"]["validation_context"]["trusted_ca"] == {
        "filename": str(tmp_path / "pki" / "ca.crt")}
    assert north_tls["auto_host_sni"] and north_tls["auto_sni_san_validation"]
    assert matches["plain"]["transport_socket"]["name"] == "envoy.transport_sockets.raw_buffer"
    tls = clusters["pool-0"]["transport_socket"]["typed_config"]
    assert tls["auto_host_sni"] and tls["auto_sni_san_validation"]

    for listener in config["static_resources"]["listeners"]:
        ext_proc = next(f for f in listener["filter_chains"][-1]["filters"][0]["typed_config"]["http_filters"]
                        if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]
        # The largest pool has three members: their namespaces, and nothing else, are accepted.
        assert ext_proc["metadata_options"]["receiving_namespaces"]["untyped"] == [
            "aoai.request", "aoai.pool.0", "aoai.pool.1", "aoai.pool.2"]
        routes = listener["filter_chains"][-1]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        by_cluster = {r["route"].get("cluster"): r for r in routes if "route" in r}
        assert "pool_model" not in by_cluster
        first = by_cluster["pool-0"]
        assert first["match"]["headers"][0]["string_match"]["exact"] == "pool-0"
        retry = first["route"]["retry_policy"]
        assert retry["num_retries"] == 2 and retry["per_try_timeout"] == "600s"
        # circuit_breaker.failure_statuses' default: 429 and 500-599, sent to the next member.
        assert retry["retriable_status_codes"] == [429, *range(500, 600)]
        assert retry["retry_on"] == "retriable-status-codes,reset,connect-failure"
        router = next(f for f in listener["filter_chains"][-1]["filters"][0]["typed_config"]["http_filters"]
                      if f["name"] == "envoy.filters.http.router")["typed_config"]
        [breaker_log] = router["upstream_log"]
        assert breaker_log["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "breaker_log"
        assert retry["retry_priority"]["typed_config"]["update_frequency"] == 2  # two members at the first level
        assert "retry_priority" not in by_cluster["pool-1"]["route"]["retry_policy"]  # one level
        assert by_cluster["pool-1"]["route"]["retry_policy"]["num_retries"] == 1  # two members: one retry


def test_without_pools_nothing_of_them_is_rendered(tmp_path: Path) -> None:
    config = envoy_config.render(settings(tmp_path, "azure: {endpoint: 'https://main.openai.azure.com'}\n"
                                                     "state_dir: {state}\nlisten: {https_port: null}\n"), None)
    assert [c["name"] for c in config["static_resources"]["clusters"]] == ["extproc", "azure", "usage_log"]
    text = orjson.dumps(config).decode()
    assert "upstream_log" not in text and "breaker_log" not in text  # no breaker, no access log to it
    assert "pool_model" not in text and "pool-" not in text and "previous_priorities" not in text
    assert "aoai.pool" not in text  # the ext_proc filter accepts only what a request is for (aoai.request)
    assert "mutation_rules" not in text  # nor x-envoy-* headers


def test_a_query_that_metadata_cannot_carry_is_refused_not_forwarded(tmp_path: Path) -> None:
    """The tries travel as protobuf Struct text: a path that is not plain ASCII is a 404, never a guess."""
    refused = decide(tmp_path, "/v1/chat/completions?q=\udcff", {"model": "gpt-4o", "messages": []})
    assert isinstance(refused, Reply) and refused.status == 404


def test_a_backends_files_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "east").write_text("east-from-file\n")
    loaded = settings(tmp_path, "azure: {endpoint: 'https://main.openai.azure.com', api_key: k}\n"
                                "backends: {east: {endpoint: 'https://e.openai.azure.com', api_key_file: keys/east}}\n",
                      env={})
    assert loaded.backends["east"].api_key_file == tmp_path / "keys" / "east"
    assert loaded.backends["east"].resolved_api_key() == "east-from-file"


OPENAI_POOL = """
azure: {endpoint: https://main.openai.azure.com, api_key: main-key}
backends:
  oai: {type: openai, endpoint: https://api.openai.com, api_key: sk-oai}
models:
  gpt-4o:
    - {backend: default, deployment: gpt-4o-prod}
    - {backend: oai, deployment: gpt-4o-2024-08-06, priority: 2}
state_dir: {state}
listen: {https_port: null}
"""


def test_an_openai_member_gets_openais_path_a_bearer_key_and_its_model_in_the_body(tmp_path: Path) -> None:
    translator = Translator(compile_gateway(settings(tmp_path, OPENAI_POOL, env={})))
    decision = translator.on_headers(RequestHead("POST", "/v1/chat/completions?api-version=1&x=1", "application/json",
                                                 has_body=True, api_key="client"))
    assert isinstance(decision, AwaitBody)
    forward = decision.finish(b'{"model": "gpt-4o", "messages": []}')
    assert isinstance(forward, Forward)
    azure, openai = forward.tries
    assert azure.path == "/openai/deployments/gpt-4o-prod/chat/completions?x=1&api-version=2024-10-21"
    assert azure.credential == (("api-key", "main-key"),)
    assert openai.path == "/v1/chat/completions?x=1"  # no api-version for OpenAI
    assert openai.credential == (("authorization", "Bearer sk-oai"),)
    # Azure reads the deployment from the path; OpenAI reads the body, which every try shares.
    assert forward.body == b'{"model": "gpt-4o-2024-08-06", "messages": []}'


def test_an_openai_member_is_rendered_with_the_system_cas_and_its_own_name(tmp_path: Path) -> None:
    config = envoy_config.render(settings(tmp_path, OPENAI_POOL, env={}), None)
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "pool-0")
    hosts = [e["endpoint"]["hostname"] for level in cluster["load_assignment"]["endpoints"] for e in level["lb_endpoints"]]
    assert hosts == ["main.openai.azure.com", "api.openai.com"]
    assert "sk-oai" not in orjson.dumps(config).decode()


DEFAULT_MODEL = """
azure: {endpoint: https://main.openai.azure.com, api_key: main-key}
models: {gpt-4o: chat}
default_model: gpt-4o
endpoints: {responses: {api: classic}}
state_dir: {state}
listen: {https_port: null}
"""


@pytest.mark.parametrize(("path", "body", "sent_path", "sent_body"), [
    # The deployment is in the path: the body goes on as sent.
    ("/v1/chat/completions", b'{"messages": []}', "/openai/deployments/chat/chat/completions?api-version=2024-10-21", None),
    # The deployment is read from the body (responses): the model is added to it.
    ("/v1/responses", b'{"input": "hi"}', "/openai/responses?api-version=2025-04-01-preview",
     b'{"model":"chat","input": "hi"}'),
    ("/v1/responses", b'{ }', "/openai/responses?api-version=2025-04-01-preview", b'{"model":"chat" }'),
])
def test_default_model_serves_a_request_that_names_none(tmp_path: Path, path: str, body: bytes, sent_path: str,
                                                         sent_body: bytes | None) -> None:
    translator = Translator(compile_gateway(settings(tmp_path, DEFAULT_MODEL, env={})))
    decision = translator.on_headers(RequestHead("POST", path, "application/json", has_body=True))
    assert isinstance(decision, AwaitBody)
    forward = decision.finish(body)
    assert isinstance(forward, Forward), forward
    assert forward.path == sent_path and forward.body == sent_body
    # A model that is named, even null, is not replaced by the default.
    named = translator.on_headers(RequestHead("POST", path, "application/json", has_body=True))
    assert isinstance(named, AwaitBody)
    refused = named.finish(b'{"model": null, "input": "hi"}')
    assert isinstance(refused, Reply) and refused.status == 400


def test_without_default_model_a_request_naming_no_model_keeps_openais_400(tmp_path: Path) -> None:
    translator = Translator(compile_gateway(settings(tmp_path, DEFAULT_MODEL.replace("default_model: gpt-4o\n", ""),
                                                     env={})))
    decision = translator.on_headers(RequestHead("POST", "/v1/chat/completions", "application/json", has_body=True))
    assert isinstance(decision, AwaitBody)
    refused = decision.finish(b'{"messages": []}')
    assert isinstance(refused, Reply) and refused.status == 400 and b"you must provide a model" in refused.body
