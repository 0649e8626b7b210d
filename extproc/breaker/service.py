"""The breaker process (run by the ext_proc supervisor when pools exist): Envoy's gRPC access log of
failed pool tries in, the members' health (Envoy's active health checks), the trips board (the
ext_proc workers) and `python -m extproc status` out. Never on the request path: Envoy reports a try
after it ended, and asks for health on its own timer.

One HTTP server on a Unix socket answers
  GET  /circuit  (Host: circuit-<n>, Envoy's health check of member n) 200, or 503 while tripped
  GET  /status   the pools, their members and their states, as JSON
  POST /reset    every member healthy again (`python -m extproc status --reset`)
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from typing import Any

import grpc
from aiohttp import web

from ..config import Settings
from ..rpc.access_log import add_access_log_sink
from .board import BoardWriter
from .circuits import Breaker, BreakerPolicy, Outcome, State, Trip

log = logging.getLogger(__name__)
CIRCUIT_TAG = "circuit"  # the access log's custom tag: the member endpoint's metadata aoai.circuit
EXTENSION_LOGGED_S = 1.0
SEEN_TRIES = 4096  # (request, circuit) pairs remembered, so that one request counts once per member
HEALTH_HOST_PREFIX = "circuit-"  # the Host of a member's health check (its endpoint's health_check_config)


def policy_of(settings: Settings) -> BreakerPolicy:
    options = settings.circuit_breaker
    return BreakerPolicy(frozenset(options.statuses), options.failures, options.interval_seconds,
                         options.trip_seconds, options.honour_retry_after, options.max_trip_seconds)


def outcome_of(entry: Any) -> Outcome | None:
    """A logged try as the breaker counts it; None for one that tells nothing about the member (the
    client went away before an answer)."""
    status = entry.response.response_code.value
    if status == 0:
        flags = entry.common_properties.response_flags
        if not (flags.upstream_connection_failure or flags.upstream_request_timeout
                or flags.upstream_remote_reset or flags.upstream_connection_termination):
            return None
    headers = entry.response.response_headers
    return Outcome(status, headers.get("retry-after", ""), headers.get("retry-after-ms", ""))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BreakerService:
    def __init__(self, settings: Settings, board: BoardWriter) -> None:
        self.breaker = Breaker(policy_of(settings), len(settings.circuits))
        self.names = [f"{backend}/{deployment}" for backend, deployment in settings.circuits]
        self._settings = settings
        self._board = board
        self._reopen: dict[int, asyncio.TimerHandle] = {}
        self._seen: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        # Since this process started, for each member: trips (not extensions), and failed tries (every one Envoy
        # logged, a second try of the same member in one request too).
        self.trips = [0] * len(settings.circuits)
        self.failures = [0] * len(settings.circuits)
        for circuit, (until, _since) in enumerate(board.trips()):  # a restarted breaker keeps the trips
            self.breaker.restore(circuit, until)

    def start(self) -> None:
        """Log the reopening of trips taken back from the board (needs the running loop)."""
        now = time.time()
        for circuit, (until, _since) in enumerate(self._board.trips()):
            if until > now:
                self._reopen[circuit] = asyncio.get_running_loop().call_later(until - now, self._reopened, circuit, until)

    # --- in: Envoy's access log -----------------------------------------------------------------

    def record(self, circuit: int, outcome: Outcome, now: float, request_id: str = "") -> None:
        self.failures[circuit] += 1
        if request_id:
            # A member tried twice in one request (a name with several addresses, or Envoy's retry
            # picking it again) is one failure: the breaker counts requests, as APIM does.
            key = (request_id, circuit)
            if key in self._seen:
                return
            self._seen[key] = None
            if len(self._seen) > SEEN_TRIES:
                self._seen.popitem(last=False)
        trip = self.breaker.record(circuit, outcome, now)
        if trip is not None:
            self._publish(trip, now)

    def _publish(self, trip: Trip, now: float) -> None:
        previous, since = self._board.trip(trip.circuit)
        if previous <= now:  # a new trip; an extension keeps its start
            since = now
            self.trips[trip.circuit] += 1
        self._board.publish(trip.circuit, trip.until, since)
        # Tries in flight when a member trips fail too and extend the trip a little each: one line
        # for the trip, and one for an extension only when it moves the deadline a second or more.
        if trip.until - previous >= EXTENSION_LOGGED_S or previous <= now:
            _event("circuit_tripped" if previous <= now else "circuit_trip_extended", member=self.names[trip.circuit],
                   status=trip.status, reason=trip.reason, until=_iso(trip.until), seconds=round(trip.until - now, 3))
        if (handle := self._reopen.pop(trip.circuit, None)) is not None:
            handle.cancel()
        loop = asyncio.get_running_loop()
        self._reopen[trip.circuit] = loop.call_later(trip.until - now, self._reopened, trip.circuit, trip.until)

    def _reopened(self, circuit: int, until: float) -> None:
        self._reopen.pop(circuit, None)
        if self.breaker.until(circuit) == until:
            _event("circuit_reopened", member=self.names[circuit], tripped_until=_iso(until))

    # --- out: health, status --------------------------------------------------------------------

    def healthy(self, host: str, now: float) -> bool | None:
        """Member health by its health check's Host; None for a host that names no member."""
        number = host.removeprefix(HEALTH_HOST_PREFIX).partition(":")[0]
        if not host.startswith(HEALTH_HOST_PREFIX) or not _is_number(number) or int(number) >= len(self.breaker):
            return None
        return self.breaker.state(int(number), now) is not State.TRIPPED

    def status(self, now: float) -> dict[str, Any]:
        pools: dict[str, list[dict[str, Any]]] = {}
        for model, members in self._settings.pools.items():
            rows = []
            for member in members:
                circuit = self._settings.circuit_of(member)
                state = self.breaker.state(circuit, now)
                row: dict[str, Any] = {"backend": member.backend, "deployment": member.deployment,
                                       "priority": member.priority, "weight": member.weight, "state": state.value,
                                       "trips": self.trips[circuit], "failures": self.failures[circuit]}
                if state is State.TRIPPED:
                    row["until"] = _iso(self.breaker.until(circuit))
                    row["seconds_left"] = round(self.breaker.until(circuit) - now, 3)
                rows.append(row)
            pools[model] = rows
        return {"time": _iso(now), "pools": pools}

    def reset(self) -> None:
        self.breaker.reset()
        self._board.clear()
        for handle in self._reopen.values():
            handle.cancel()
        self._reopen.clear()
        _event("circuits_reset")


def _event(event: str, **fields: object) -> None:
    """One JSON line per breaker change (no secrets: members are named by backend and deployment)."""
    print(json.dumps({"time": _iso(time.time()), "event": event, **fields}), file=sys.stderr, flush=True)


def _record_try(service: BreakerService, entry: Any, now: float) -> None:
    """One failed pool try from Envoy's access log, counted against the member's circuit."""
    tag = entry.common_properties.custom_tags.get(CIRCUIT_TAG, "")
    outcome = outcome_of(entry)
    if _is_number(tag) and outcome is not None:
        service.record(int(tag), outcome, now, entry.request.request_id)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _http_app(service: BreakerService) -> web.Application:
    async def circuit(request: web.Request) -> web.Response:
        healthy = service.healthy(request.headers.get("host", ""), time.time())
        if healthy is None:
            return web.Response(status=404)
        return web.Response(status=200 if healthy else 503)

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(service.status(time.time()))

    async def reset(_request: web.Request) -> web.Response:
        service.reset()
        return web.json_response(service.status(time.time()))

    app = web.Application()
    app.router.add_get("/circuit", circuit)
    app.router.add_get("/status", status)
    app.router.add_post("/reset", reset)
    return app


async def serve_breaker(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT (its sockets' paths must be free: runtime.breaker_process)."""
    paths = settings.breaker_paths
    service = BreakerService(settings, BoardWriter(paths.trips, len(settings.circuits)))
    service.start()
    server = grpc.aio.server()
    add_access_log_sink(server, lambda entry, now: _record_try(service, entry, now),
                        "a failed try's log entry (an upstream's header?)")
    server.add_insecure_port(f"unix:{paths.access_log}")
    await server.start()
    runner = web.AppRunner(_http_app(service), access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(paths.http)).start()
    for path in (paths.access_log, paths.http):
        os.chmod(path, 0o660)  # Envoy and the ext_proc share a group, not the world
    log.info("circuit breaker (pid %d) for %d members listening on unix:%s", os.getpid(), len(service.names), paths.http)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)
    await runner.cleanup()
    for path in (paths.access_log, paths.http):
        path.unlink(missing_ok=True)

