"""The usage process's service: Envoy's gRPC access log in (every request, after it ended), and out:
  GET /metrics       Prometheus text format (prometheus-client)
  GET /              the status page (extproc/usage/page: plain HTML and a script, nothing from elsewhere)
  GET /status.json   what the page shows
on `metrics.address:metrics.port`; and each token-limited key's spend on the spend board (extproc/usage/board.py),
which every ext_proc worker reads before it lets that key's request through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..breaker.status import fetch_status
from ..config import Settings
from ..config.schema import is_loopback, is_loopback_host
from ..rpc.access_log import add_access_log_sink
from ..rpc.probe import socket_in_use
from .board import SpendWriter
from .ledger import Ledger, Request

log = logging.getLogger(__name__)
try:
    __version__ = version("aoai-gateway")
except PackageNotFoundError:  # run from a checkout that was not installed
    __version__ = "unknown"
BREAKER_POLL_S = 2.0
SPEND_SAVE_S = 10.0  # how often the token spend is written to <state_dir>/spend.json (and at stop)
PAGE_FILES = {"/": ("index.html", "text/html"), "/status.js": ("status.js", "text/javascript"),
              "/status.css": ("status.css", "text/css"), "/favicon.ico": ("favicon.svg", "image/svg+xml")}


# The fields of the access log's custom tag `u` (envoy/envoy.yaml), tab-separated, in this order; the model last
# (it may hold anything the client wrote, tabs included).
USAGE_TAG = "u"
USAGE_FIELDS = ("status", "duration_ms", "last_byte_us", "first_byte_us", "tries", "flags", "prompt_tokens",
                "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens", "circuit", "client",
                "backend", "deployment", "model")


# Envoy's response flags for a client that went away: its connection closed (DC), or it reset its HTTP/2 stream (DR).
CUT_FLAGS = frozenset({"DC", "DR"})


def _count(text: str) -> int | None:
    """A token count as the formatter wrote it ("412", maybe "412.0"); None for none."""
    if not text or text == "-":
        return None
    try:
        return int(float(text))
    except (ValueError, OverflowError):  # not a number, or "inf" from a count beyond any float
        return None


def _number(text: str) -> int:
    return int(text) if text.isdigit() else 0


def request_of(entry: Any, circuits: tuple[tuple[str, str], ...]) -> Request:
    """An access log entry (HTTPAccessLogEntry) as the ledger counts it."""
    (status, duration_ms, last_byte_us, first_byte_us, tries, flags, prompt, completion, total, cached, reasoning,
     circuit, client, backend, deployment, model) = entry.common_properties.custom_tags[USAGE_TAG].split(
        "\t", len(USAGE_FIELDS) - 1)
    if not deployment and circuit.isdigit() and int(circuit) < len(circuits):
        backend, deployment = circuits[int(circuit)]  # a pool's: the member that answered
    duration = int(last_byte_us) / 1e6 if last_byte_us.isdigit() else _number(duration_ms) / 1e3
    return Request(_number(status), model, deployment, backend, client, duration,
                   int(first_byte_us) / 1e6 if first_byte_us.isdigit() else None, _number(tries),
                   _count(prompt), _count(completion), _count(total), _count(cached), _count(reasoning),
                   not CUT_FLAGS.isdisjoint(flags.split(",")))


class UsageService:
    def __init__(self, settings: Settings, spend: SpendWriter | None) -> None:
        self.settings = settings
        self.ledger = Ledger(settings)
        self.started = time.time()
        self.breaker: dict[str, Any] | None = None  # the breaker's last /status (with pools)
        self._spend = spend
        self._circuits = settings.circuits
        self.ledger.registry.register(_StateCollector(self))
        self._spend_file = settings.state_path / "spend.json"
        if spend is not None:
            self._restore_spend(spend)

    def _restore_spend(self, spend: SpendWriter) -> None:
        """The keys' spend as the former usage process saved it (a restart of the process or the gateway does not
        reset anyone's day), their blocks published again."""
        try:
            saved = json.loads(self._spend_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("cannot read the token spend saved in %s (%s): starting from none", self._spend_file, exc)
            return
        now = time.time()
        for slot, limits in enumerate(self.ledger.limits):
            entry = saved.get(limits.name) if isinstance(saved, dict) else None
            if isinstance(entry, dict):
                try:
                    limits.restore(entry, now)
                except (TypeError, ValueError):
                    log.error("the saved token spend of %s is not readable: starting it from none", limits.name)
                    continue
                spend.publish(slot, limits.blocked_until(now))

    def save_spend(self) -> None:
        """Write the keys' spend (atomically: a reader never sees half of it)."""
        now = time.time()
        data = {limits.name: saved for limits in self.ledger.limits if (saved := limits.saved(now))}
        temporary = self._spend_file.with_name(f".spend.json.{os.getpid()}")
        try:
            temporary.write_text(json.dumps(data))
            os.replace(temporary, self._spend_file)
        except OSError as exc:
            log.error("cannot save the token spend to %s (%s)", self._spend_file, exc)
            temporary.unlink(missing_ok=True)

    async def keep_saving_spend(self) -> None:
        while True:
            await asyncio.sleep(SPEND_SAVE_S)
            self.save_spend()

    def record(self, entry: Any, now: float) -> None:
        published = self.ledger.record(request_of(entry, self._circuits), now)
        if published is not None and self._spend is not None:
            slot, until = published
            self._spend.publish(slot, until)

    def workers_up(self) -> int:
        """Workers whose socket accepts a connection (a Unix connect: immediate)."""
        return sum(socket_in_use(path, 0.2) for path in self.settings.socket_paths())

    def status(self, now: float) -> dict[str, Any]:
        settings = self.settings
        backends = [{"name": name, "endpoint": backend.endpoint or "", "type": backend.type, "auth":
                     "entra" if backend.entra_credential is not None else "api key" if backend.holds_credential else "client's key"}
                    for name, backend in settings.all_backends.items()]
        clients = []
        for key in settings.clients.keys:
            row: dict[str, Any] = {"name": key.name, "tokens_per_minute": key.tokens_per_minute,
                                   "tokens_per_day": key.tokens_per_day, "requests_per_minute": key.requests_per_minute}
            if key.token_limited:
                slot = self.ledger.limit_slot[key.name]
                row["remaining"] = self.ledger.limits[slot].remaining(now)
                if self._spend is not None:
                    row["blocked_until"] = max(self._spend.blocked(slot))
            clients.append(row)
        return {
            "version": __version__, "started": self.started, "now": now, "uptime_s": round(now - self.started, 3),
            "workers": {"configured": settings.worker_count, "up": self.workers_up()},
            "backends": backends, "models": {m: (t if isinstance(t, str) else f"pool of {len(t)}")
                                             for m, t in settings.models.items()},
            "pools": (self.breaker or {}).get("pools", {}), "breaker_reachable": self.breaker is not None,
            "clients": clients, "totals": dict(self.ledger.totals), "history": self.ledger.history.series(now),
        }

    async def poll_breaker(self) -> None:
        """The pools' states, from the breaker process (its /status), every BREAKER_POLL_S."""
        path = self.settings.breaker_paths.http
        while True:
            try:
                self.breaker = await asyncio.to_thread(fetch_status, path, timeout=BREAKER_POLL_S)
            except (OSError, ValueError):
                self.breaker = None
            await asyncio.sleep(BREAKER_POLL_S)


class _StateCollector(Collector):
    """Gauges read when scraped: the workers, the circuits, the keys' token spend, the version."""

    def __init__(self, service: UsageService) -> None:
        self._service = service

    def collect(self) -> Iterator[Any]:
        service = self._service
        now = time.time()
        info = GaugeMetricFamily("aoai_gateway_info", "The gateway's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily("aoai_gateway_start_time_seconds", "When the usage process started (epoch seconds)",
                                value=service.started)
        yield GaugeMetricFamily("aoai_gateway_extproc_workers", "ext_proc worker processes configured",
                                value=service.settings.worker_count)
        yield GaugeMetricFamily("aoai_gateway_extproc_workers_up", "ext_proc worker processes accepting connections",
                                value=service.workers_up())
        if service.settings.pools:
            open_ = GaugeMetricFamily("aoai_gateway_circuit_open", "1 while the circuit breaker keeps a pool member "
                                      "out", labels=["member"])
            trips = CounterMetricFamily("aoai_gateway_circuit_trips", "Times the circuit breaker took a pool member "
                                        "out (since the breaker process started)", labels=["member"])
            failures = CounterMetricFamily("aoai_gateway_member_failures", "Failed tries of a pool member (an error "
                                           "status or no answer; each went on to the next member if one was left)",
                                           labels=["member"])
            seen = set()
            for members in (service.breaker or {}).get("pools", {}).values():
                for member in members:
                    name = f"{member['backend']}/{member['deployment']}"
                    if name not in seen:
                        seen.add(name)
                        open_.add_metric([name], 1 if member["state"] == "tripped" else 0)
                        trips.add_metric([name], member.get("trips", 0))
                        failures.add_metric([name], member.get("failures", 0))
            yield open_
            yield trips
            yield failures
        if service.ledger.limits:
            remaining = GaugeMetricFamily("aoai_gateway_client_tokens_remaining", "Tokens a client key may still "
                                          "spend in its window before its requests are refused", labels=["client", "window"])
            for limits in service.ledger.limits:
                for window, value in limits.remaining(now).items():
                    if value < 2**61:  # a window without a limit
                        remaining.add_metric([limits.name, window], value)
            yield remaining


def _http_app(service: UsageService) -> web.Application:
    page = files(__package__) / "page"
    cached = {path: (page.joinpath(name).read_bytes(), kind) for path, (name, kind) in PAGE_FILES.items()}

    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(service.ledger.registry)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(service.status(time.time()), headers={"cache-control": "no-store"})

    async def page_file(request: web.Request) -> web.Response:
        body, kind = cached[request.path]
        return web.Response(body=body, content_type=kind, headers={
            "cache-control": "no-cache", "x-content-type-options": "nosniff",
            # Nothing from elsewhere, no framing: the page loads only what this server serves.
            "content-security-policy": "default-src 'self'; frame-ancestors 'none'"})

    loopback = is_loopback(service.settings.metrics.address)

    @web.middleware
    async def loopback_hosts_only(request: web.Request, handler: Any) -> web.StreamResponse:
        # Bound to loopback, only loopback names are answered: a web page that rebinds its own name to 127.0.0.1
        # can't read the status (DNS rebinding). Beyond loopback (a scraped container), the network decides.
        if loopback and not is_loopback_host(request.host):
            return web.Response(status=403, text="Host not allowed\n")
        return await handler(request)

    app = web.Application(middlewares=[loopback_hosts_only])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status.json", status)
    for path in PAGE_FILES:
        app.router.add_get(path, page_file)
    return app


async def serve_usage(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT (its socket's path must be free: runtime.usage_process)."""
    paths = settings.usage_paths
    limited = len(settings.token_limited_keys)
    service = UsageService(settings, SpendWriter(paths.board, limited) if limited else None)
    runner: web.AppRunner | None = None
    tasks = [asyncio.create_task(service.keep_saving_spend())] if limited else []
    if settings.metrics.enabled:
        runner = web.AppRunner(_http_app(service), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.metrics.address, settings.metrics.port).start()
            log.info("metrics and status page on http://%s:%d/ (pid %d)", settings.metrics.address,
                     settings.metrics.port, os.getpid())
        except OSError as exc:  # another gateway's port, say: token limits and counting go on without it
            log.error("cannot serve the metrics and status page on %s:%d (%s); set metrics.port to a free port",
                      settings.metrics.address, settings.metrics.port, exc.strerror or exc)
        if settings.pools:
            tasks.append(asyncio.create_task(service.poll_breaker()))
    # Last: `up` and the health check take this socket for the process being ready.
    server = grpc.aio.server()
    add_access_log_sink(server, service.record, "a request's log entry")
    server.add_insecure_port(f"unix:{paths.access_log}")
    await server.start()
    os.chmod(paths.access_log, 0o660)  # Envoy and the ext_proc share a group, not the world
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await server.stop(grace=1)  # the last entries Envoy sent are counted before the spend is saved
    if limited:
        service.save_spend()
    if runner is not None:
        await runner.cleanup()
    paths.access_log.unlink(missing_ok=True)
