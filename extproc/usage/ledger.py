"""What the usage process counts, from Envoy's access log entries (pure: the caller gives the clock).

`Request` is one logged request as the ledger reads it; `Ledger` turns it into the Prometheus metrics (its own
registry), the status page's last hour per minute, and the token-limited keys' spend. Label values are bounded:
models, deployments, backends and clients the settings do not name are counted as "other", and "none" stands for
a request without one (a file upload has no model; a request without a client key, no client).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..config import Settings
from .windows import KeyLimits, key_limits

OTHER, NONE = "other", "none"
TOKEN_TYPES = ("input", "output", "cached_input", "reasoning")
# OpenTelemetry's advice for gen_ai.client.token.usage and for durations.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
HOUR_MINUTES = 60


class Request(NamedTuple):
    """One request as Envoy logged it."""

    status: int  # 0: no answer was sent
    model: str = ""
    deployment: str = ""
    backend: str = ""
    client: str = ""
    duration_s: float = 0.0  # to the answer's last byte
    ttfb_s: float | None = None  # to the answer's first byte; None: none was sent
    tries: int = 0  # upstream tries (a pool's failovers are tries - 1)
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cut: bool = False  # the client went away before the answer's end (a cut stream: its usage never came)

    @property
    def tokens(self) -> int:
        if self.total_tokens is not None:
            return self.total_tokens
        return (self.input_tokens or 0) + (self.output_tokens or 0)


class Labels:
    """Bounded label values: what the settings name, else OTHER; NONE for nothing."""

    def __init__(self, settings: Settings) -> None:
        self.models = frozenset(settings.models)
        deployments = {d for d in settings.models.values() if isinstance(d, str)}
        deployments |= {member.deployment for members in settings.pools.values() for member in members}
        self.deployments = frozenset(deployments)
        self.backends = frozenset({*settings.all_backends, "byok"})
        self.clients = frozenset(key.name for key in settings.clients.keys)

    @staticmethod
    def _bounded(value: str, known: frozenset[str]) -> str:
        if not value:
            return NONE
        return value if value in known else OTHER

    def of(self, request: Request) -> tuple[str, str, str, str]:
        return (self._bounded(request.model, self.models), self._bounded(request.deployment, self.deployments),
                self._bounded(request.backend, self.backends), self._bounded(request.client, self.clients))


class Minute:
    __slots__ = ("number", "models", "clients")

    def __init__(self, number: int) -> None:
        self.number = number
        self.models: dict[str, list[int]] = {}  # label -> [requests, tokens]
        self.clients: dict[str, list[int]] = {}


class History:
    """The last hour, per minute: requests and tokens per model and per client (the status page's charts)."""

    def __init__(self) -> None:
        self._minutes: deque[Minute] = deque(maxlen=HOUR_MINUTES)

    def add(self, now: float, model: str, client: str, tokens: int) -> None:
        number = int(now // 60)
        if not self._minutes or self._minutes[-1].number < number:
            self._minutes.append(Minute(number))
        minute = self._minutes[-1]
        for table, name in ((minute.models, model), (minute.clients, client)):
            row = table.setdefault(name, [0, 0])
            row[0] += 1
            row[1] += tokens

    def series(self, now: float) -> dict[str, object]:
        """{minutes: [epoch seconds of each of the last 60 minutes], models|clients: {name: {requests, tokens}}},
        each list one value per minute, oldest first."""
        last = int(now // 60)
        first = last - HOUR_MINUTES + 1
        out: dict[str, dict[str, dict[str, list[int]]]] = {"models": {}, "clients": {}}
        for minute in self._minutes:
            if minute.number < first:
                continue
            at = minute.number - first
            for kind, table in (("models", minute.models), ("clients", minute.clients)):
                for name, (requests, tokens) in table.items():
                    row = out[kind].setdefault(name, {"requests": [0] * HOUR_MINUTES, "tokens": [0] * HOUR_MINUTES})
                    row["requests"][at] += requests
                    row["tokens"][at] += tokens
        return {"minutes": [(first + i) * 60 for i in range(HOUR_MINUTES)], **out}


class Hist:
    """One histogram's buckets (not cumulative: the observation's bucket only) and sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        total, out = 0, []
        for bound, count in zip((*(floatToGoString(b) for b in bounds), "+Inf"), self.counts):
            total += count
            out.append((bound, total))
        return out


# (name without _total, help, labels) of each metric the ledger keeps.
REQUESTS = ("aoai_gateway_requests", "Requests the gateway answered, by what they were for and the status class of "
            "the answer", ("gen_ai_request_model", "deployment", "backend", "client", "status_class"))
TOKENS = ("aoai_gateway_tokens", "Tokens Azure reported, by type (cached_input is part of input, reasoning part of "
          "output)", ("gen_ai_request_model", "client", "type"))
TOKEN_USAGE = ("gen_ai_client_token_usage", "Tokens per request as Azure reported them (OpenTelemetry GenAI "
               "gen_ai.client.token.usage)", ("gen_ai_request_model", "gen_ai_token_type", "client"))
DURATION = ("gen_ai_server_request_duration_seconds", "From the request's first byte to the answer's last, as Envoy "
            "saw it", ("gen_ai_request_model", "backend", "status_class"))
TTFB = ("aoai_gateway_time_to_first_byte_seconds", "From the request's first byte to the answer's first (a stream's "
        "first chunk)", ("gen_ai_request_model", "backend"))
FAILOVERS = ("aoai_gateway_failovers", "Tries of a pool request beyond its first", ("gen_ai_request_model",))
CUT = ("aoai_gateway_incomplete_requests", "Requests the client went away from before the answer ended (a stream "
       "cut short: its tokens are not known)", ("gen_ai_request_model", "client"))


class Ledger:
    """Counts in plain dicts (a request costs a few dict updates: the usage process hears of every request), turned
    into Prometheus metric families only when scraped (`collect`)."""

    def __init__(self, settings: Settings) -> None:
        self.labels = Labels(settings)
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests: dict[tuple[str, ...], int] = {}
        self.tokens: dict[tuple[str, ...], int] = {}
        self.token_usage: dict[tuple[str, ...], Hist] = {}
        self.duration: dict[tuple[str, ...], Hist] = {}
        self.ttfb: dict[tuple[str, ...], Hist] = {}
        self.failovers: dict[tuple[str, ...], int] = {}
        self.cut: dict[tuple[str, ...], int] = {}
        self.registry.register(_LedgerCollector(self))
        self.history = History()
        self.limits: list[KeyLimits] = [key_limits(key.name, key.tokens_per_minute, key.tokens_per_day)
                                        for key in settings.token_limited_keys]
        self.limit_slot = {limits.name: slot for slot, limits in enumerate(self.limits)}
        self.totals = {"requests": 0, "tokens": 0}

    def record(self, request: Request, now: float) -> tuple[int, tuple[float, ...]] | None:
        """Count one request; for a token-limited key whose answer reported tokens: (its slot, each window's
        blocked-until) to publish."""
        model, deployment, backend, client = self.labels.of(request)
        status_class = _STATUS_CLASSES.get(request.status // 100, "none")
        key = (model, deployment, backend, client, status_class)
        self.requests[key] = self.requests.get(key, 0) + 1
        _observe(self.duration, (model, backend, status_class), request.duration_s, DURATION_BUCKETS)
        if request.ttfb_s is not None:
            _observe(self.ttfb, (model, backend), request.ttfb_s, DURATION_BUCKETS)
        if request.cut:
            self.cut[(model, client)] = self.cut.get((model, client), 0) + 1
        if request.tries > 1:
            self.failovers[(model,)] = self.failovers.get((model,), 0) + request.tries - 1
        tokens = request.tokens
        if request.input_tokens is not None or request.output_tokens is not None or tokens:
            for kind, value in zip(TOKEN_TYPES, (request.input_tokens, request.output_tokens, request.cached_tokens,
                                                 request.reasoning_tokens)):
                if value:
                    self.tokens[(model, client, kind)] = self.tokens.get((model, client, kind), 0) + value
            if request.input_tokens is not None:
                _observe(self.token_usage, (model, "input", client), request.input_tokens, TOKEN_BUCKETS)
            if request.output_tokens is not None:
                _observe(self.token_usage, (model, "output", client), request.output_tokens, TOKEN_BUCKETS)
        totals = self.totals
        totals["requests"] += 1
        totals["tokens"] += tokens
        self.history.add(now, model, client, tokens)
        slot = self.limit_slot.get(request.client)
        if slot is None or not tokens:
            return None
        return slot, self.limits[slot].add(tokens, now)


_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


def _observe(table: dict[tuple[str, ...], Hist], key: tuple[str, ...], value: float, bounds: tuple[float, ...]) -> None:
    hist = table.get(key)
    if hist is None:
        hist = table[key] = Hist(bounds)
    hist.counts[bisect_left(bounds, value)] += 1  # the first bound >= value: Prometheus' `le`
    hist.sum += value


class _LedgerCollector(Collector):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        ledger = self._ledger
        for (name, documentation, labels), table in ((REQUESTS, ledger.requests), (TOKENS, ledger.tokens),
                                                     (FAILOVERS, ledger.failovers), (CUT, ledger.cut)):
            family = CounterMetricFamily(name, documentation, labels=labels)
            for key, value in list(table.items()):
                family.add_metric(key, value)
            yield family
        for (name, documentation, labels), table, bounds in ((TOKEN_USAGE, ledger.token_usage, TOKEN_BUCKETS),
                                                              (DURATION, ledger.duration, DURATION_BUCKETS),
                                                              (TTFB, ledger.ttfb, DURATION_BUCKETS)):
            histogram = HistogramMetricFamily(name, documentation, labels=labels)
            for key, hist in list(table.items()):
                histogram.add_metric(key, hist.cumulative(bounds), hist.sum)
            yield histogram
