"""The gateway's metrics contract (what its /metrics serves: names, types, labels) and what reads it:
deploy/observability's Prometheus scrape config, Grafana provisioning and dashboard. PromQL is read
here with a small tokenizer (no promtool offline): enough to name every metric, label, function and
grouping label an expression uses."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .helpers import REPO

OBSERVABILITY = REPO / "deploy" / "observability"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus.yml"
GRAFANA = OBSERVABILITY / "grafana"
GRAFANA_DATASOURCES = GRAFANA / "provisioning" / "datasources"
GRAFANA_DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards"
DASHBOARD = GRAFANA / "dashboards" / "aoai-gateway.json"
COMPOSE_CONFIG = REPO / "deploy" / "compose" / "config.yaml"
OBSERVABILITY_PROFILE = "observability"
OBSERVABILITY_SERVICES = {"prometheus", "grafana"}

# The `metrics:` section's defaults (the gateway's config schema): this machine only.
METRICS_DEFAULTS = {"enabled": True, "address": "127.0.0.1", "port": 9464}
METRICS_PATH = "/metrics"
# Kubernetes: the label a Prometheus pod carries to get through the gateway's NetworkPolicy to /metrics.
SCRAPER_LABEL = {"aoai-gateway/metrics-scraper": "true"}

MODEL, CLIENT = "gen_ai_request_model", "client"


@dataclass(frozen=True)
class Metric:
    kind: str  # counter, gauge, histogram
    labels: frozenset[str]


# The metrics contract: every name the gateway's /metrics serves, with its labels.
METRICS: dict[str, Metric] = {
    "aoai_gateway_requests_total": Metric("counter", frozenset({MODEL, "deployment", "backend", CLIENT, "status_class"})),
    "gen_ai_client_token_usage": Metric("histogram", frozenset({MODEL, "gen_ai_token_type", CLIENT})),
    "aoai_gateway_tokens_total": Metric("counter", frozenset({MODEL, CLIENT, "type"})),
    "gen_ai_server_request_duration_seconds": Metric("histogram", frozenset({MODEL, "backend", "status_class"})),
    "aoai_gateway_time_to_first_byte_seconds": Metric("histogram", frozenset({MODEL, "backend"})),
    "aoai_gateway_failovers_total": Metric("counter", frozenset({MODEL})),
    "aoai_gateway_circuit_open": Metric("gauge", frozenset({"member"})),
    "aoai_gateway_circuit_trips_total": Metric("counter", frozenset({"member"})),
    "aoai_gateway_member_failures_total": Metric("counter", frozenset({"member"})),
    "aoai_gateway_incomplete_requests_total": Metric("counter", frozenset({MODEL, CLIENT})),
    "aoai_gateway_extproc_workers_up": Metric("gauge", frozenset()),
    "aoai_gateway_extproc_workers": Metric("gauge", frozenset()),
    "aoai_gateway_client_tokens_remaining": Metric("gauge", frozenset({CLIENT, "window"})),
    "aoai_gateway_info": Metric("gauge", frozenset({"version"})),
    "aoai_gateway_start_time_seconds": Metric("gauge", frozenset()),
}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})


def series() -> dict[str, tuple[str, frozenset[str]]]:
    """Every series name a scrape yields -> (its metric, its labels without the target's)."""
    names: dict[str, tuple[str, frozenset[str]]] = {}
    for name, metric in METRICS.items():
        if metric.kind == "histogram":
            names[f"{name}_bucket"] = (name, metric.labels | {"le"})
            names[f"{name}_sum"] = (name, metric.labels)
            names[f"{name}_count"] = (name, metric.labels)
        else:
            names[name] = (name, metric.labels)
    return names


# --- PromQL ------------------------------------------------------------------------------------

AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
})
FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev", "histogram_stdvar",
    "histogram_sum", "double_exponential_smoothing", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate", "resets", "round",
    "scalar", "sgn", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc", "sqrt", "time", "timestamp",
    "vector", "year", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
    "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg",
    "rad", "pi",
})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2"})
GROUPING = ("by", "without", "on", "ignoring", "group_left", "group_right")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?\S+")
_SELECTOR = re.compile(r"(?P<name>[A-Za-z_:][\w:]*)?\s*\{(?P<body>[^{}]*)\}")
_MATCHER = re.compile(r'\s*(?P<label>[A-Za-z_]\w*)\s*(?P<op>=~|!~|!=|=)\s*(?P<value>"#\d+")\s*(?:,|$)')
_GROUPING_CLAUSE = re.compile(r"\b(?P<keyword>" + "|".join(GROUPING) + r")\s*\((?P<labels>[^()]*)\)")
_NUMBER = re.compile(r"(?<![\w.])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)")
_IDENTIFIER = re.compile(r"(?<![\w.])(?P<name>[A-Za-z_:][\w:]*)(?P<call>\s*\()?")
_SELECTOR_MARK = "__selector__"


class PromQLError(ValueError):
    pass


@dataclass
class Selector:
    metric: str
    matchers: dict[str, str] = field(default_factory=dict)  # label -> operator and quoted value


@dataclass
class Expression:
    text: str
    selectors: list[Selector] = field(default_factory=list)
    functions: set[str] = field(default_factory=set)  # functions and aggregations called
    grouping: set[str] = field(default_factory=set)  # labels of by/without/on/ignoring/group_* clauses
    variables: set[str] = field(default_factory=set)  # Grafana's $variables (built-in $__* excluded)

    @property
    def metrics(self) -> set[str]:
        return {selector.metric for selector in self.selectors}


def parse_promql(text: str) -> Expression:
    """Every metric (with its label matchers), function and grouping label of a PromQL expression that
    may hold Grafana variables. Raises PromQLError on what it cannot read (a selector without a metric
    name, a malformed matcher, an unknown function or unbalanced brackets)."""
    expression = Expression(text)
    for match in _GRAFANA_VARIABLE.finditer(text):
        name = match.group(0).lstrip("$").strip("{}").split(":")[0]
        if not name.startswith("__"):
            expression.variables.add(name)
    if text.count("(") != text.count(")") or text.count("{") != text.count("}") or text.count("[") != text.count("]"):
        raise PromQLError(f"unbalanced brackets: {text}")
    # Strings first (their contents are values, not names), then ranges and offsets.
    literals: list[str] = []

    def literal(match: re.Match[str]) -> str:
        literals.append(match.group(0))
        return f'"#{len(literals) - 1}"'

    work = _STRING.sub(literal, text)
    work = _RANGE.sub(" ", work)
    work = _OFFSET.sub(" ", work)

    def selector(match: re.Match[str]) -> str:
        name, body = match["name"], match["body"]
        if not name or name in AGGREGATIONS | FUNCTIONS | KEYWORDS | set(GROUPING):
            raise PromQLError(f"a selector without a metric name: {match.group(0)!r} in {text}")
        matchers: dict[str, str] = {}
        position = 0
        body = body.strip()
        while position < len(body):
            found = _MATCHER.match(body, position)
            if found is None:
                raise PromQLError(f"cannot read the label matchers {{{body}}} in {text}")
            matchers[found["label"]] = found["op"] + literals[int(found["value"][2:-1])]
            position = found.end()
        expression.selectors.append(Selector(name, matchers))
        return f" {_SELECTOR_MARK} "

    work = _SELECTOR.sub(selector, work)
    for match in _GROUPING_CLAUSE.finditer(work):
        expression.grouping |= {label.strip() for label in match["labels"].split(",") if label.strip()}
    work = _GROUPING_CLAUSE.sub(" ", work)
    work = _NUMBER.sub(" ", work)
    work = re.sub(r'"#\d+"', " ", work)
    for match in _IDENTIFIER.finditer(work):
        name = match["name"]
        if name == _SELECTOR_MARK:
            continue
        if match["call"]:
            if name not in AGGREGATIONS | FUNCTIONS:
                raise PromQLError(f"unknown function {name}() in {text}")
            expression.functions.add(name)
        elif name in KEYWORDS:
            continue
        elif name in AGGREGATIONS | FUNCTIONS | set(GROUPING):
            raise PromQLError(f"{name} is not followed by its arguments in {text}")
        else:
            expression.selectors.append(Selector(name))
    leftover = re.sub(r"[\s()+\-*/%^,<>=!]|__selector__|\b(?:and|or|unless|bool)\b|[A-Za-z_:][\w:]*", "", work)
    if leftover:
        raise PromQLError(f"cannot read {leftover!r} in {text}")
    return expression


def _histogram_quantile_arguments(text: str) -> list[str]:
    """The text of each histogram_quantile(...) call's arguments."""
    calls = []
    for match in re.finditer(r"\bhistogram_quantile\s*\(", text):
        depth, start = 1, match.end()
        position = start
        while depth:
            depth += {"(": 1, ")": -1}.get(text[position], 0)
            position += 1
        calls.append(text[start:position - 1])
    return calls


def check_expression(expression: Expression) -> list[str]:
    """What the metrics contract does not allow in an expression (empty: nothing)."""
    problems = []
    known = series()
    labels_in_scope: set[str] = set(TARGET_LABELS)
    for selector in expression.selectors:
        if selector.metric not in known:
            problems.append(f"{selector.metric} is not a metric of the gateway's /metrics")
            continue
        _, labels = known[selector.metric]
        labels_in_scope |= labels
        for label in selector.matchers:
            if label not in labels | TARGET_LABELS:
                problems.append(f"{selector.metric} has no label {label}")
    for label in expression.grouping - labels_in_scope:
        problems.append(f"groups by {label}, which none of {sorted(expression.metrics)} has")
    # Histograms: quantiles over the rate of _bucket, grouped by le; _bucket read nowhere else.
    quantiles = _histogram_quantile_arguments(expression.text)
    inside = [parse_promql(argument.split(",", 1)[1]) for argument in quantiles]
    bucket_inside = sum(1 for e in inside for s in e.selectors if s.metric.endswith("_bucket"))
    bucket_total = sum(1 for s in expression.selectors if s.metric.endswith("_bucket"))
    if bucket_total != bucket_inside:
        problems.append("a _bucket series outside histogram_quantile()")
    for argument in inside:
        if not argument.selectors or not all(s.metric.endswith("_bucket") for s in argument.selectors):
            problems.append("histogram_quantile() of something other than _bucket series")
        if "le" not in argument.grouping:
            problems.append("histogram_quantile() over buckets not grouped by le")
        if not argument.functions & {"rate", "increase", "irate"}:
            problems.append("histogram_quantile() over buckets that are not rated")
    for selector in expression.selectors:
        metric = known.get(selector.metric, (None,))[0]
        if metric and METRICS[metric].kind == "counter" and not expression.functions & {"rate", "increase", "irate"}:
            problems.append(f"the counter {selector.metric} is read without rate() or increase()")
    return problems


# --- the artifacts -----------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def prometheus_config() -> dict[str, Any]:
    return load_yaml(PROMETHEUS_CONFIG)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _provisioned(directory: Path, key: str) -> list[dict[str, Any]]:
    """Grafana's provisioning files in `directory` (apiVersion 1), their `key` lists joined."""
    found = []
    for path in sorted(directory.glob("*.y*ml")):
        document = load_yaml(path)
        assert document["apiVersion"] == 1, path
        found += document[key]
    return found


def datasources() -> list[dict[str, Any]]:
    return _provisioned(GRAFANA_DATASOURCES, "datasources")


def dashboard_providers() -> list[dict[str, Any]]:
    return _provisioned(GRAFANA_DASHBOARD_PROVIDERS, "providers")


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    panels = []
    for panel in board.get("panels") or []:
        panels.append(panel)
        panels += panel.get("panels") or []
    return panels


def metrics_section(config_text: str) -> dict[str, Any]:
    """A gateway config's `metrics:` section with the defaults filled in."""
    document = yaml.safe_load(config_text) or {}
    return {**METRICS_DEFAULTS, **(document.get("metrics") or {})}


def commented_section(config_text: str, section: str) -> dict[str, Any] | None:
    """A section documented as a commented-out example (`# section:` and its `#   key: value` lines)."""
    lines = config_text.splitlines()
    for index, line in enumerate(lines):
        if re.match(rf"#\s?{re.escape(section)}:(\s|$)", line):
            block = [line.lstrip("#").lstrip()]
            for following in lines[index + 1:]:
                if not re.match(r"#\s{2,}\S", following):
                    break
                block.append(following[1:])
            return yaml.safe_load("\n".join(block))[section]
    return None


def scrape_targets(config: dict[str, Any], job: str = "aoai-gateway") -> tuple[dict[str, Any], list[str]]:
    (scrape,) = [s for s in config["scrape_configs"] if s["job_name"] == job]
    targets = [target for group in scrape.get("static_configs") or [] for target in group["targets"]]
    return scrape, targets
