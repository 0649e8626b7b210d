"""deploy/observability: the Prometheus scrape config reaches the gateway's /metrics where compose
serves it, Grafana's provisioning finds its datasource and dashboard where compose mounts them, and
every dashboard query reads only the gateway's metrics contract (names, labels, histogram buckets).
How the same port is used by Kubernetes and systemd: test_kubernetes.py and test_consistency.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .helpers import REPO, compose_resolved, remap, service_environment, service_mounts
from .observability import (
    COMPOSE_CONFIG,
    DASHBOARD,
    METRICS,
    METRICS_PATH,
    OBSERVABILITY_PROFILE,
    TARGET_LABELS,
    PromQLError,
    all_panels,
    check_expression,
    dashboard,
    dashboard_providers,
    datasources,
    metrics_section,
    parse_promql,
    prometheus_config,
    scrape_targets,
    series,
)

PANEL_KINDS_WITHOUT_QUERIES = {"row", "text", "news", "dashlist"}


def _bind_mounts(service: str) -> dict[str, str]:
    """container path -> host path, of the service's bind mounts."""
    return {m.target: str(REPO / m.source) for m in service_mounts(compose_resolved()["services"][service])
            if not m.named}


def _provisioned_datasource() -> dict[str, Any]:
    (datasource,) = [d for d in datasources() if d["type"] == "prometheus"]
    return datasource


def _expressions() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every dashboard query."""
    return [(panel["title"], target["refId"], target["expr"])
            for panel in all_panels(dashboard()) for target in panel.get("targets") or []]


# --- Prometheus --------------------------------------------------------------------------------


def test_prometheus_scrapes_the_extproc_where_compose_serves_metrics() -> None:
    config = prometheus_config()
    assert config["global"]["scrape_interval"] == "15s"
    scrape, targets = scrape_targets(config)
    assert scrape.get("metrics_path", "/metrics") == METRICS_PATH
    assert scrape.get("scheme", "http") == "http"
    services = compose_resolved()["services"]
    metrics = metrics_section(COMPOSE_CONFIG.read_text())
    assert metrics["enabled"] is True
    # The compose config the extproc service mounts is the one read here.
    extproc_config = service_environment(services["extproc"])["AOAI_GATEWAY_CONFIG"]
    assert _bind_mounts("extproc")[extproc_config] == str(COMPOSE_CONFIG)
    # Reachable from the prometheus container: every interface of the extproc container, on the compose
    # network, and the port Prometheus asks for.
    assert metrics["address"] == "0.0.0.0"
    assert targets == [f"extproc:{metrics['port']}"]
    assert str(metrics["port"]) in [str(p) for p in services["extproc"].get("expose") or []]


def test_prometheus_runs_the_mounted_config_and_stores_on_a_volume() -> None:
    service = compose_resolved()["services"]["prometheus"]
    mounts = {m.target: m for m in service_mounts(service)}
    config_path = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file="))
    assert mounts[config_path].read_only and not mounts[config_path].named
    assert (REPO / mounts[config_path].source).resolve() == (REPO / "deploy/observability/prometheus.yml").resolve()
    storage = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--storage.tsdb.path="))
    assert mounts[storage].named and not mounts[storage].read_only
    listen = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--web.listen-address="))
    published = [p.rpartition(":")[2] for p in service["ports"]]
    assert published == [listen.rpartition(":")[2]]


# --- Grafana provisioning ----------------------------------------------------------------------


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    datasource = _provisioned_datasource()
    assert datasource["uid"] == "prometheus" and datasource["access"] == "proxy"
    url = urlsplit(datasource["url"])
    services = compose_resolved()["services"]
    assert url.hostname == "prometheus" and url.hostname in services
    listen = next(a.split("=", 1)[1] for a in services["prometheus"]["command"] if a.startswith("--web.listen-address="))
    assert str(url.port) == listen.rpartition(":")[2]
    # $__rate_interval is at least 4 scrape intervals when Grafana knows the interval.
    assert datasource["jsonData"]["timeInterval"] == prometheus_config()["global"]["scrape_interval"]


def test_grafana_finds_its_provisioning_and_dashboards_where_compose_mounts_them() -> None:
    mounts = _bind_mounts("grafana")
    grafana = compose_resolved()["services"]["grafana"]
    assert all(m.read_only for m in service_mounts(grafana) if not m.named)
    provisioning = "/etc/grafana/provisioning"  # the image's GF_PATHS_PROVISIONING
    for kind in ("datasources", "dashboards"):
        host = remap(f"{provisioning}/{kind}", mounts)
        assert host != f"{provisioning}/{kind}", f"{kind} provisioning is not mounted"
        assert list(Path(host).glob("*.yml")), f"no {kind} provisioning in {host}"
    (provider,) = dashboard_providers()
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    folder = Path(remap(provider["options"]["path"], mounts))
    assert (folder / DASHBOARD.name).resolve() == DASHBOARD.resolve()
    home = service_environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(remap(home, mounts)).resolve() == DASHBOARD.resolve()


def test_grafana_lets_anonymous_visitors_view_only() -> None:
    environment = service_environment(compose_resolved()["services"]["grafana"])
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert environment.get("GF_USERS_ALLOW_SIGN_UP", "false") == "false"
    assert not any(re.search(r"PASSWORD|SECRET|TOKEN", key) for key in environment), "no credentials in the file"


# --- the dashboard -----------------------------------------------------------------------------


def test_dashboard_is_provisionable() -> None:
    board = dashboard()
    assert board["uid"] == "aoai-gateway" and board["title"]
    assert 36 <= board["schemaVersion"] <= 42
    assert "__inputs" not in board and "${DS_" not in DASHBOARD.read_text(), "an export for import, not provisioning"
    assert board.get("id") is None, "a provisioned dashboard gets its id from Grafana"
    ids = [panel["id"] for panel in all_panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_every_panel_queries_the_provisioned_datasource() -> None:
    uid = _provisioned_datasource()["uid"]
    expected = {"type": "prometheus", "uid": uid}
    board = dashboard()
    queried = 0
    for panel in all_panels(board):
        if panel["type"] in PANEL_KINDS_WITHOUT_QUERIES:
            assert not panel.get("targets"), panel["title"]
            continue
        assert panel.get("datasource") == expected, panel["title"]
        assert panel.get("targets"), f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected, (panel["title"], target["refId"])
            assert target["expr"].strip(), (panel["title"], target["refId"])
            queried += 1
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    assert queried >= 10
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == expected, variable["name"]
        assert variable["type"] != "datasource", "the provisioned datasource, by uid"


def test_panels_fit_the_grid_without_overlapping() -> None:
    boxes = []
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for other_title, other in boxes:
            overlap = (pos["x"] < other["x"] + other["w"] and other["x"] < pos["x"] + pos["w"]
                       and pos["y"] < other["y"] + other["h"] and other["y"] < pos["y"] + pos["h"])
            assert not overlap, (panel["title"], other_title)
        boxes.append((panel["title"], pos))


@pytest.mark.parametrize("title, ref, expr", [pytest.param(*e, id=f"{e[0]} {e[1]}") for e in _expressions()])
def test_every_query_reads_only_the_metrics_contract(title: str, ref: str, expr: str) -> None:
    expression = parse_promql(expr)
    assert expression.selectors, f"{title} {ref}: no metric"
    assert check_expression(expression) == [], f"{title} {ref}: {expr}"
    defined = {variable["name"] for variable in dashboard()["templating"]["list"]}
    assert expression.variables <= defined, f"{title} {ref}: undefined variables"


def test_legends_name_labels_the_queries_keep() -> None:
    for panel in all_panels(dashboard()):
        for target in panel.get("targets") or []:
            expression = parse_promql(target["expr"])
            legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat") or ""))
            if expression.grouping:
                kept = expression.grouping - {"le"}
            else:
                kept = set(TARGET_LABELS).union(*(series()[m][1] for m in expression.metrics))
            assert legend_labels <= kept, (panel["title"], target["refId"], legend_labels - kept)


def test_template_variables_list_values_of_contract_labels() -> None:
    for variable in dashboard()["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)", query)
        assert match, f"{variable['name']}: {query}"
        metric, label = match.groups()
        assert metric in METRICS and label in METRICS[metric].labels, query
        if variable.get("includeAll"):
            assert variable.get("allValue") == ".*", "All must also match series of metrics without the label's values"


def test_the_dashboard_covers_the_whole_contract() -> None:
    """Each metric of the gateway's /metrics is on a panel; the latency panels show p50 and p95."""
    used = set()
    quantiles: dict[str, set[str]] = {}
    for _, _, expr in _expressions():
        expression = parse_promql(expr)
        for metric in expression.metrics:
            base = re.sub(r"_(bucket|sum|count)$", "", metric) if metric not in METRICS else metric
            used.add(base)
        for q, rest in re.findall(r"histogram_quantile\(\s*([\d.]+)\s*,(.*)", expr):
            for metric in parse_promql(rest.rsplit(")", 1)[0]).metrics:
                quantiles.setdefault(metric, set()).add(q)
    assert used == set(METRICS), set(METRICS) ^ used
    for histogram in ("gen_ai_server_request_duration_seconds_bucket", "aoai_gateway_time_to_first_byte_seconds_bucket"):
        assert {"0.5", "0.95"} <= quantiles[histogram], histogram


def test_the_promql_reader_catches_mistakes() -> None:
    """The checks above really find a wrong name, label, grouping or histogram use."""
    def problems(expr: str) -> list[str]:
        return check_expression(parse_promql(expr))

    assert problems('histogram_quantile(0.95, sum by (le, backend) '
                    '(rate(gen_ai_server_request_duration_seconds_bucket{gen_ai_request_model=~"$m"}[5m])))') == []
    assert problems("sum(rate(aoai_gateway_request_total[5m]))")  # a typo in the name
    assert problems('sum(rate(aoai_gateway_requests_total{model="gpt-4o"}[5m]))')  # no such label
    assert problems("sum by (member) (rate(aoai_gateway_requests_total[5m]))")  # nor grouping label
    assert problems("histogram_quantile(0.9, sum(rate(gen_ai_client_token_usage_bucket[5m])))")  # without le
    assert problems("histogram_quantile(0.9, sum by (le) (gen_ai_client_token_usage_bucket))")  # not rated
    assert problems("sum(gen_ai_client_token_usage_bucket)")  # buckets without a quantile
    assert problems("gen_ai_client_token_usage")  # a histogram's own name is no series
    assert problems("aoai_gateway_failovers_total")  # a counter without rate()
    for unreadable in ("rates(aoai_gateway_requests_total[5m])", 'sum(rate({__name__="x"}[5m]))',
                       "sum(rate(aoai_gateway_requests_total[5m])", 'aoai_gateway_info{version~"x"}'):
        with pytest.raises(PromQLError):
            parse_promql(unreadable)
    expression = parse_promql('sum by (client) (rate(aoai_gateway_tokens_total{type=~"in|out", client=~"$client"}[$__rate_interval])) * 60')
    assert expression.metrics == {"aoai_gateway_tokens_total"} and expression.grouping == {"client"}
    assert expression.functions == {"sum", "rate"} and expression.variables == {"client"}
    assert expression.selectors[0].matchers == {"type": '=~"in|out"', "client": '=~"$client"'}


def test_published_observability_ports_match_the_containers() -> None:
    services = compose_resolved()["services"]
    grafana = services["grafana"]
    assert [p.rpartition(":")[2] for p in grafana["ports"]] == ["3000"], "Grafana's own port inside"
    assert OBSERVABILITY_PROFILE in grafana["profiles"]


def test_the_contract_is_what_the_gateway_serves(tmp_path: Path) -> None:
    """The metrics contract above against the usage process's own /metrics, with every metric present (pools,
    a token-limited key, a cut stream, a failover): a name or label that drifts on either side fails here."""
    import hashlib

    from prometheus_client import generate_latest

    from extproc.config import load_settings
    from extproc.usage.ledger import Request
    from extproc.usage.service import UsageService

    from .observability import METRICS, series

    config = tmp_path / "gateway.yaml"
    config.write_text(f"""
azure: {{endpoint: https://main.openai.azure.com, api_key: k}}
backends: {{east: {{endpoint: https://east.openai.azure.com, api_key: k2}}}}
models: {{gpt-4o: [{{backend: default, deployment: chat}}, {{backend: east, deployment: chat-east}}]}}
clients: {{keys: [{{name: team-a, key_sha256: {hashlib.sha256(b"a").hexdigest()}, tokens_per_minute: 100}}]}}
state_dir: {tmp_path / "state"}
listen: {{https_port: null}}
""")
    service = UsageService(load_settings(config, env={}), None)
    service.breaker = {"pools": {"gpt-4o": [
        {"backend": "default", "deployment": "chat", "state": "tripped", "trips": 1, "failures": 3},
        {"backend": "east", "deployment": "chat-east", "state": "closed", "trips": 0, "failures": 0}]}}
    service.ledger.record(Request(200, "gpt-4o", "chat-east", "east", "team-a", 1.0, 0.2, 2, 10, 5, 15, 2, 1), 1e9)
    service.ledger.record(Request(200, "gpt-4o", "chat", "default", "team-a", 1.0, 0.2, 1, cut=True), 1e9)
    served: dict[str, set[str]] = {}
    for line in generate_latest(service.ledger.registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, labels = line.partition("{")
            name = name.split(" ")[0]
            served.setdefault(name, set()).update(re.findall(r'(\w+)="', labels))
    expected = series()
    assert set(served) == set(expected)
    for name, labels in served.items():
        assert labels == set(expected[name][1]), name
    assert set(METRICS) == {expected[name][0] for name in served}
