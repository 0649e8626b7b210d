"""The Envoy config rendered from envoy/envoy.yaml, checked by the real Envoy (`--mode validate`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509

from extproc import envoy_config
from extproc.compile import compile_gateway
from extproc.config import ConfigError, load_settings
from extproc.envoy_config.devtls import ensure_dev_certificates


@pytest.fixture
def tls(tmp_path: Path) -> envoy_config.DownstreamTls:
    dev = ensure_dev_certificates(tmp_path / "tls")
    return envoy_config.DownstreamTls(dev.server_cert, dev.server_key)


def settings_for(tmp_path: Path, **env: str):
    return load_settings(env={"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com", "AOAI_GATEWAY_STATE_DIR": str(tmp_path),
                              "AOAI_GATEWAY_WORKERS": "3", **env})


def ext_proc_filter(listener: dict) -> dict:
    filters = listener["filter_chains"][-1]["filters"][0]["typed_config"]["http_filters"]
    return next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]


def test_rendered_default_config_is_valid_and_safe(tmp_path: Path, tls) -> None:
    settings = settings_for(tmp_path)
    config = envoy_config.render(settings, tls)
    path = envoy_config.write(config, tmp_path / "envoy.yaml")
    envoy_config.validate(path)  # the real Envoy accepts it

    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    http, https = config["static_resources"]["listeners"]
    for listener in (http, https):
        ext_proc = ext_proc_filter(listener)
        assert ext_proc["failure_mode_allow"] is False
        assert ext_proc["processing_mode"]["request_body_mode"] == "BUFFERED"
        assert ext_proc["processing_mode"]["response_header_mode"] == "SKIP"
        # The body limit is the virtual host's, on every protocol; Envoy's own buffers stay small.
        (vhost,) = connection_manager(listener)["route_config"]["virtual_hosts"]
        assert vhost["request_body_buffer_limit"] == settings.limits.max_request_body_bytes
        assert listener["per_connection_buffer_limit_bytes"] == 1048576
        assert connection_manager(listener)["http2_protocol_options"]["initial_stream_window_size"] == 1048576
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    pipes = [e["endpoint"]["address"]["pipe"]["path"] for e in clusters["extproc"]["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert pipes == [str(p) for p in settings.socket_paths()] and len(pipes) == 3
    upstream_tls = clusters["azure"]["transport_socket"]["typed_config"]
    assert upstream_tls["sni"] == "res.openai.azure.com"
    assert upstream_tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "res.openai.azure.com"}}]


def test_http_emulator_endpoint_has_no_upstream_tls_and_custom_ca(tmp_path: Path, tls) -> None:
    config = envoy_config.render(settings_for(tmp_path, AZURE_OPENAI_ENDPOINT="http://127.0.0.1:9999"), tls)
    azure = next(c for c in config["static_resources"]["clusters"] if c["name"] == "azure")
    assert "transport_socket" not in azure
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    config = envoy_config.render(settings_for(tmp_path, AZURE_OPENAI_CA_FILE=str(ca)), tls)
    azure = next(c for c in config["static_resources"]["clusters"] if c["name"] == "azure")
    assert azure["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"] == {"filename": str(ca)}


def test_ports_limits_and_timeouts_come_from_settings(tmp_path: Path) -> None:
    config_file = tmp_path / "gw.yaml"
    config_file.write_text("listen: {http_port: 18080, https_port: null}\nenvoy: {admin_port: 19901, upstream_idle_timeout_seconds: 60}\n"
                           "extproc: {message_timeout_ms: 750}\nlimits: {max_request_body_bytes: 1048576}\n")
    settings = load_settings(config_file, env={"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"})
    config = envoy_config.render(settings, None)
    (listener,) = config["static_resources"]["listeners"]
    assert listener["name"] == "http" and listener["address"]["socket_address"]["port_value"] == 18080
    (vhost,) = connection_manager(listener)["route_config"]["virtual_hosts"]
    assert vhost["request_body_buffer_limit"] == 1048576
    assert ext_proc_filter(listener)["message_timeout"] == "0.75s"
    assert config["admin"]["address"]["socket_address"]["port_value"] == 19901
    assert compile_gateway(settings).limits.grpc_max_message_bytes > 1048576


def test_https_without_certificate_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="https_port"):
        envoy_config.render(settings_for(tmp_path), None)


def test_missing_endpoint_is_a_config_error(tmp_path: Path, tls) -> None:
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT"):
        envoy_config.render(load_settings(env={}), tls)


def test_a_missing_template_is_a_config_error_naming_the_variable(tmp_path: Path, tls, monkeypatch) -> None:
    monkeypatch.setenv(envoy_config.TEMPLATE_ENV, str(tmp_path / "nowhere.yaml"))
    with pytest.raises(ConfigError, match=r"nowhere\.yaml.*AOAI_GATEWAY_ENVOY_TEMPLATE"):
        envoy_config.render(settings_for(tmp_path), tls)


def test_a_template_whose_http2_window_exceeds_the_body_limit_is_refused(tmp_path: Path, tls, monkeypatch) -> None:
    """HTTP/2 bodies without a length are held to the larger of the limit and the stream window."""
    template = yaml.safe_load(envoy_config.REPO_TEMPLATE.read_text())
    for listener in template["static_resources"]["listeners"]:
        hcm = listener["filter_chains"][-1]["filters"][0]["typed_config"]
        hcm["http2_protocol_options"]["initial_stream_window_size"] = 64 * 1024 * 1024  # the limit is 32 MiB
    custom = tmp_path / "custom.yaml"
    custom.write_text(yaml.safe_dump(template))
    monkeypatch.setenv(envoy_config.TEMPLATE_ENV, str(custom))
    with pytest.raises(ConfigError, match="HTTP/2 stream window"):
        envoy_config.render(settings_for(tmp_path), tls)


def test_the_template_itself_is_the_default_config() -> None:
    template = yaml.safe_load(envoy_config.REPO_TEMPLATE.read_text())
    listeners = {listener["name"] for listener in template["static_resources"]["listeners"]}
    assert listeners == {"http", "https", "forward_proxy_inner"}  # the last: forward-proxy mode's, kept only with it
    assert template["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}


def test_validate_reports_envoys_own_words(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("static_resources: {clusters: [{name: x, type: NOPE}]}\n")
    with pytest.raises(ConfigError, match="Envoy rejected"):
        envoy_config.validate(bad)


def test_dev_certificates_are_reused_and_chain_to_the_ca(tmp_path: Path) -> None:
    first = ensure_dev_certificates(tmp_path)
    server_pem = first.server_cert.read_bytes()
    second = ensure_dev_certificates(tmp_path)
    assert second.server_cert.read_bytes() == server_pem  # reused, not regenerated
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0 and first.server_key.stat().st_mode & 0o077 == 0
    ca = x509.load_pem_x509_certificate(first.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(server_pem)
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)


def connection_manager(listener: dict) -> dict:
    return listener["filter_chains"][-1]["filters"][0]["typed_config"]


def test_only_the_ext_procs_decision_reaches_an_upstream(tmp_path: Path, tls) -> None:
    """The routing header is removed before the first route match; a route to Azure needs the exact
    value the ext_proc sets; everything else is answered by Envoy itself; trailers reach the ext_proc."""
    from extproc.processor.messages import ROUTE_HEADER
    from extproc.routing import DEFAULT_BACKEND, cluster_name

    AZURE_CLUSTER = cluster_name(DEFAULT_BACKEND)

    config = envoy_config.render(settings_for(tmp_path), tls)
    for listener in config["static_resources"]["listeners"]:
        hcm = connection_manager(listener)
        (early,) = hcm["early_header_mutation_extensions"]
        # (and the internal header an Entra ID token travels in: never a client's)
        assert early["typed_config"]["mutations"] == [{"remove": ROUTE_HEADER}, {"remove": "x-aoai-upstream-authorization"}]
        (vhost,) = hcm["route_config"]["virtual_hosts"]
        clusters = {c["name"] for c in config["static_resources"]["clusters"]}
        # Every route leads to a cluster; those that exist are reached only with the ext_proc's header.
        assert all("route" in r for r in vhost["routes"])
        upstream = [r for r in vhost["routes"] if r["route"]["cluster"] in clusters]
        assert upstream
        for route in upstream:
            assert route["route"]["cluster"] == AZURE_CLUSTER and "cluster_header" not in route["route"]
            assert route["match"]["headers"] == [{"name": ROUTE_HEADER, "string_match": {"exact": AZURE_CLUSTER}}]
            assert ROUTE_HEADER in route["request_headers_to_remove"]
            assert route["route"]["timeout"] == "0s"  # streams are not cut
        # The first match happens before the ext_proc runs: whatever it left undecided ends in a 404
        # (its route names a cluster that does not exist).
        undecided = [r for r in vhost["routes"] if r["route"]["cluster"] not in clusters]
        assert {r["route"]["cluster"] for r in undecided} == {"aoai_gateway_undecided"}
        assert all(r["route"]["cluster_not_found_response_code"] == "NOT_FOUND" for r in undecided)
        assert vhost["routes"][-1]["match"] == {"prefix": "/"} and vhost["routes"][-1] in undecided
        assert {"path_separated_prefix": "/v1/files"} in [r["match"] for r in vhost["routes"]]
        assert ext_proc_filter(listener)["processing_mode"]["request_trailer_mode"] == "SEND"
        for route in vhost["routes"]:
            override = route.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_proc")
            if override:
                assert override["overrides"]["processing_mode"]["request_trailer_mode"] == "SEND"


def test_paths_credentials_and_errors_are_hardened(tmp_path: Path, tls) -> None:
    config = envoy_config.render(settings_for(tmp_path), tls)
    for listener in config["static_resources"]["listeners"]:
        hcm = connection_manager(listener)
        assert hcm["normalize_path"] is True and hcm["merge_slashes"] is True
        assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
        assert hcm["request_headers_timeout"] == "10s" and hcm["request_timeout"] == "0s"
        names = [f["name"] for f in hcm["http_filters"]]
        assert names == ["envoy.filters.http.rbac", "envoy.filters.http.ext_proc", "envoy.filters.http.header_mutation",
                         "envoy.filters.http.lua", "envoy.filters.http.router"]  # lua: token usage from answers
        removed = [m["remove"] for m in hcm["http_filters"][2]["typed_config"]["mutations"]["request_mutations"]]
        assert removed == ["authorization", "proxy-authorization", "cookie", "x-api-key", "ocp-apim-subscription-key",
                           "x-goog-api-key"]
        assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "DROP_HEADER"
        # Envoy's own replies carry fixed messages: no response details, no Envoy text (upstream
        # addresses, reset reasons), except the ext_proc's own replies, kept as they are.
        mappers = hcm["local_reply_config"]["mappers"]
        assert "aoai_gateway_reply" in str(mappers[0]["filter"])
        for mapper in mappers[1:]:
            text = yaml.safe_dump(mapper["body_format_override"])
            assert "%RESPONSE_CODE_DETAILS%" not in text and "%LOCAL_REPLY_BODY%" not in text
            assert mapper["body_format_override"]["content_type"] == "application/json"
    monitors = config["overload_manager"]["resource_monitors"]
    assert [m["name"] for m in monitors] == ["envoy.resource_monitors.global_downstream_max_connections"]


def test_extproc_workers_are_health_checked(tmp_path: Path, tls) -> None:
    config = envoy_config.render(settings_for(tmp_path, AOAI_GATEWAY_WORKERS="2"), tls)
    extproc = next(c for c in config["static_resources"]["clusters"] if c["name"] == "extproc")
    (check,) = extproc["health_checks"]
    assert check["grpc_health_check"] == {} and check["timeout"] == "2s"  # the default message_timeout
    assert extproc["common_lb_config"]["healthy_panic_threshold"] == {"value": 0}
    slow = tmp_path / "slow.yaml"
    slow.write_text("extproc: {message_timeout_ms: 300}\n")
    settings = load_settings(slow, env={"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AOAI_GATEWAY_STATE_DIR": str(tmp_path)})
    extproc = next(c for c in envoy_config.render(settings, tls)["static_resources"]["clusters"] if c["name"] == "extproc")
    assert extproc["health_checks"][0]["timeout"] == "1s"  # never below a second


@pytest.mark.parametrize("policy", ["passthrough", "strip_dots", "reject"])
def test_streamed_routes_come_from_the_catalogue(tmp_path: Path, tls, policy: str) -> None:
    """Each endpoint the catalogue streams (and the Azure form) gets a route whose ext_proc mode reads
    no body; every other path is buffered. Under reject, where the ext_proc reads those bodies too, only
    the uploads and the paths that name their deployment stream (a body is never switched to buffered by
    the headers' answer). The HTTP and HTTPS listeners route alike."""
    from extproc.core.catalogue import AZURE_UPLOAD_PREFIXES, CATALOGUE, Upload

    config = envoy_config.render(settings_for(tmp_path, AOAI_GATEWAY_UNMAPPED_MODELS=policy), tls)
    tables = []
    for listener in config["static_resources"]["listeners"]:
        (vhost,) = connection_manager(listener)["route_config"]["virtual_hosts"]
        streamed = {}
        for route in vhost["routes"]:
            per_route = route.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_proc")
            if per_route:
                # Undecided: a cluster that does not exist, so Envoy answers 404 itself.
                assert route["route"]["cluster"] == "aoai_gateway_undecided"
                assert route["route"]["cluster_not_found_response_code"] == "NOT_FOUND"
                streamed[next(iter(route["match"].values()))] = per_route["overrides"]["processing_mode"]["request_body_mode"]
        tables.append(streamed)
        assert vhost["routes"][-1]["match"] == {"prefix": "/"} and "typed_per_filter_config" not in vhost["routes"][-1]
        assert vhost["routes"][-1]["route"]["cluster"] == "aoai_gateway_undecided"
    clusters = {c["name"] for c in config["static_resources"]["clusters"]}
    assert "aoai_gateway_undecided" not in clusters
    if policy == "reject":
        expected = {"/v1/files": "NONE"} | {prefix: "NONE" for prefix in AZURE_UPLOAD_PREFIXES} | {
            "/openai/deployments": "NONE", "/openai/v1/deployments": "NONE"}
    else:
        expected = {op.openai_path: "NONE" for op in CATALOGUE if op.upload is Upload.STREAMED} | {"/openai": "NONE"}
        assert "/v1/responses/" in expected and "/v1/files" in expected
    assert tables == [expected, expected]
