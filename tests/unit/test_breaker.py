"""The circuit breaker without Envoy: its rules (pure, time passed in), the trips board the workers
read, the core's 429 when a pool's members are all tripped, and the breaker service's answers.
Envoy's side (health checks, access log, failover) runs in tests/e2e/test_breaker.py."""

from __future__ import annotations

import math
import time
from email.utils import format_datetime
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from extproc.breaker import board
from extproc.breaker.circuits import Breaker, BreakerPolicy, Outcome, State, retry_after_seconds
from extproc.compile import compile_gateway
from extproc.core.decision import AwaitBody, Forward, Reply, RequestHead
from extproc.core.translator import Translator
from extproc.processor.messages import body_forward_response, reply_response

from .test_pools import settings as pool_settings

POLICY = BreakerPolicy(frozenset({429, *range(500, 600)}), failures=3, interval_s=300, trip_s=60,
                       honour_retry_after=True, max_trip_s=3600)
T0 = 1_800_000_000.0


def test_failures_within_the_interval_trip_the_member_for_trip_seconds() -> None:
    breaker = Breaker(POLICY, 2)
    assert breaker.record(0, Outcome(429), T0) is None
    assert breaker.record(0, Outcome(503), T0 + 100) is None
    trip = breaker.record(0, Outcome(429), T0 + 200)
    assert trip is not None and trip.circuit == 0 and trip.until == T0 + 260 and trip.status == 429
    assert "3 failures within 300s" in trip.reason
    assert breaker.state(0, T0 + 259) is State.TRIPPED and breaker.state(1, T0 + 259) is State.HEALTHY
    assert breaker.state(0, T0 + 260) is State.RECOVERING  # back in, one failure away from a new trip


def test_failures_spread_wider_than_the_interval_do_not_trip() -> None:
    breaker = Breaker(POLICY, 1)
    for t in (0, 200, 400, 600):
        assert breaker.record(0, Outcome(429), T0 + t) is None
    assert breaker.state(0, T0 + 600) is State.HEALTHY


@pytest.mark.parametrize("outcome", [Outcome(400), Outcome(401), Outcome(404), Outcome(200), Outcome(499)])
def test_answers_that_are_not_failures_do_not_count(outcome: Outcome) -> None:
    breaker = Breaker(POLICY, 1)
    for _ in range(5):
        assert breaker.record(0, outcome, T0) is None


def test_no_answer_at_all_counts_as_a_failure() -> None:
    breaker = Breaker(POLICY, 1)
    for _ in range(2):
        breaker.record(0, Outcome(0), T0)
    assert breaker.record(0, Outcome(0), T0) is not None


def test_a_longer_retry_after_keeps_the_member_out_longer_and_a_shorter_one_does_not_shorten_the_trip() -> None:
    breaker = Breaker(POLICY, 2)
    for _ in range(3):
        trip = breaker.record(0, Outcome(429, retry_after="120"), T0)
    assert trip is not None and trip.until == T0 + 120 and "Retry-After (120s)" in trip.reason
    for _ in range(3):
        trip = breaker.record(1, Outcome(429, retry_after="5"), T0)
    assert trip is not None and trip.until == T0 + 60  # trip_seconds: the longer of the two


def test_a_failure_while_tripped_extends_the_trip_never_shortens_it() -> None:
    breaker = Breaker(POLICY, 1)
    for _ in range(3):
        breaker.record(0, Outcome(429, retry_after="600"), T0)
    assert breaker.until(0) == T0 + 600
    assert breaker.record(0, Outcome(429, retry_after="10"), T0 + 1) is None  # would end sooner: ignored
    assert breaker.until(0) == T0 + 600
    later = breaker.record(0, Outcome(429, retry_after="600"), T0 + 100)
    assert later is not None and later.until == T0 + 700 and "while tripped" in later.reason


def test_retry_after_is_capped_by_max_trip_seconds_and_ignored_unless_honoured() -> None:
    breaker = Breaker(POLICY, 1)
    for _ in range(3):
        trip = breaker.record(0, Outcome(429, retry_after="999999"), T0)
    assert trip is not None and trip.until == T0 + 3600
    plain = Breaker(BreakerPolicy(POLICY.failure_statuses, honour_retry_after=False, trip_s=60), 1)
    for _ in range(3):
        trip = plain.record(0, Outcome(429, retry_after="600"), T0)
    assert trip is not None and trip.until == T0 + 60


def test_a_failure_while_recovering_trips_the_member_again_at_once() -> None:
    breaker = Breaker(POLICY, 1)
    for _ in range(3):
        breaker.record(0, Outcome(429), T0)
    again = breaker.record(0, Outcome(429), T0 + 61)  # reopened at T0 + 60
    assert again is not None and again.until == T0 + 121 and "recovering" in again.reason
    # A whole interval after it reopened without a failure it is healthy: three failures again.
    for t in (500, 501):
        assert breaker.record(0, Outcome(429), T0 + t) is None
    assert breaker.record(0, Outcome(429), T0 + 502) is not None


@pytest.mark.parametrize(("outcome", "seconds"), [
    (Outcome(429, retry_after="7"), 7.0),
    (Outcome(429, retry_after="7", retry_after_ms="1500"), 1.5),  # Azure sends both; the ms one is exact
    (Outcome(429, retry_after=format_datetime(datetime.fromtimestamp(T0 + 30, timezone.utc), usegmt=True)), 30.0),
    (Outcome(429, retry_after="soon"), None),
    (Outcome(429, retry_after_ms="nan", retry_after="2"), 2.0),
    (Outcome(429, retry_after_ms="-5"), None),
    (Outcome(429), None),
])
def test_retry_after_in_every_form_azure_and_http_use(outcome: Outcome, seconds: float | None) -> None:
    assert retry_after_seconds(outcome, T0) == seconds


def test_the_board_carries_trips_from_the_breaker_to_every_reader(tmp_path: Path) -> None:
    path = tmp_path / "trips"
    board.create(path, 3)
    readers = [board.BoardReader(path, 3) for _ in range(2)]  # two workers
    writer = board.BoardWriter(path, 3)
    assert all(r.availability((0, 1)) == (2, 2, 0.0) for r in readers)
    now = time.time()
    writer.publish(0, now + 30, now - 5)  # tripped 5 s ago: Envoy's health checks have seen it
    assert all(r.availability((0, 1)) == (1, 1, 0.0) for r in readers)  # member 1 is still in
    writer.publish(1, now + 10, now - 5)
    for reader in readers:
        open_members, pickable, wait = reader.availability((0, 1))
        assert (open_members, pickable) == (0, 0) and 10 <= wait <= 10 + board.REOPEN_MARGIN_S  # the first back
    # A restarted breaker process takes the trips back from the file.
    assert board.BoardWriter(path, 3).trips()[:2] == writer.trips()[:2] == [(now + 30, now - 5), (now + 10, now - 5)]
    board.create(path, 3)  # a restarted supervisor zeroes the file in place: mapped readers see it
    assert all(r.availability((0, 1)) == (2, 2, 0.0) for r in readers)


def test_a_member_tripped_a_moment_ago_may_still_be_picked_by_envoy(tmp_path: Path) -> None:
    """Envoy sees a trip at its next health check (0.25 s): until then the tripped member still counts for the
    retries the ext_proc allows, so that a request Envoy sends to it can still fail over."""
    path = tmp_path / "trips"
    board.create(path, 2)
    writer, reader = board.BoardWriter(path, 2), board.BoardReader(path, 2)
    now = time.time()
    writer.publish(0, now + 30, now)  # just tripped
    assert reader.availability((0, 1)) == (1, 2, 0.0)
    writer.publish(0, now - 0.1, now - 60)  # its trip just ended: Envoy may have it back already
    assert reader.availability((0, 1)) == (1, 2, 0.0)


def test_a_missing_board_leaves_the_decision_to_envoy(tmp_path: Path) -> None:
    assert board.BoardReader(tmp_path / "absent", 2).availability((0, 1)) == (2, 2, 0.0)


class FakeTrips:
    def __init__(self, wait: float, open_members: int | None = None) -> None:
        self.wait = wait
        self.open_members = open_members
        self.asked: list[tuple[int, ...]] = []

    def availability(self, circuits: tuple[int, ...]) -> tuple[int, int, float]:
        self.asked.append(circuits)
        if self.open_members is not None:
            return self.open_members, self.open_members, 0.0
        return (0, 0, self.wait) if self.wait else (len(circuits), len(circuits), 0.0)


def _decide(tmp_path: Path, trips: FakeTrips, model: str = "gpt-4o", **head: str) -> Forward | Reply:
    translator = Translator(compile_gateway(pool_settings(tmp_path), trips=trips))
    decision = translator.on_headers(RequestHead("POST", "/v1/chat/completions", "application/json", has_body=True,
                                                 **head))
    assert isinstance(decision, AwaitBody)
    return decision.finish(orjson.dumps({"model": model, "messages": []}))


def test_a_pool_whose_members_are_all_tripped_is_answered_429_with_retry_after(tmp_path: Path) -> None:
    trips = FakeTrips(12.3)
    reply = _decide(tmp_path, trips)
    assert isinstance(reply, Reply) and reply.status == 429
    assert trips.asked == [(0, 1, 2)]  # gpt-4o's three members' circuits
    error = orjson.loads(reply.body)["error"]
    assert error["code"] == "rate_limit_exceeded" and "13 seconds" in error["message"]
    assert dict(reply.headers) == {"retry-after": "13", "retry-after-ms": "12300"}
    # What Envoy gets: the headers on the immediate response, beside the content type.
    sent = reply_response(reply).immediate_response
    assert {(h.header.key, h.header.raw_value) for h in sent.headers.set_headers} == {
        ("content-type", b"application/json"), ("retry-after", b"13"), ("retry-after-ms", b"12300")}


def test_a_pool_with_a_member_in_is_forwarded(tmp_path: Path) -> None:
    forward = _decide(tmp_path, FakeTrips(0.0))
    assert isinstance(forward, Forward) and forward.cluster == "pool-0"
    assert forward.max_retries is None  # every member in: the route's own retries


@pytest.mark.parametrize(("open_members", "retries"), [(1, 0), (2, 1)])
def test_with_members_tripped_envoy_retries_only_as_often_as_members_are_left(
        tmp_path: Path, open_members: int, retries: int) -> None:
    """Envoy skips tripped members but would try a member still in twice rather than try fewer times."""
    forward = _decide(tmp_path, FakeTrips(0.0, open_members))
    assert isinstance(forward, Forward) and forward.max_retries == retries
    mutation = body_forward_response(forward).request_body.response.header_mutation
    assert ("x-envoy-max-retries", str(retries).encode()) in {(h.header.key, h.header.raw_value)
                                                               for h in mutation.set_headers}


class YoungTrip(FakeTrips):
    def availability(self, circuits: tuple[int, ...]) -> tuple[int, int, float]:
        return 1, 2, 0.0  # one member in, one tripped a moment ago (Envoy may still pick it), one out


def test_a_member_envoy_may_still_pick_keeps_a_retry(tmp_path: Path) -> None:
    forward = _decide(tmp_path, YoungTrip(0.0))
    assert isinstance(forward, Forward) and forward.max_retries == 1


def test_a_client_without_a_credential_gets_its_401_not_the_pools_state(tmp_path: Path) -> None:
    config = pool_settings(tmp_path, "azure: {endpoint: https://main.openai.azure.com}\n"
                            "backends: {east: {endpoint: https://east.openai.azure.com}}\n"
                            "models: {m: [{backend: east, deployment: d}]}\nstate_dir: {state}\n", env={})
    translator = Translator(compile_gateway(config, trips=FakeTrips(30.0)))
    decision = translator.on_headers(RequestHead("POST", "/v1/chat/completions", "application/json", has_body=True))
    assert isinstance(decision, Reply) and decision.status == 401


def test_a_model_outside_pools_never_asks_the_breaker(tmp_path: Path) -> None:
    trips = FakeTrips(math.inf)
    forward = _decide(tmp_path, trips, "text-embedding-3-small")
    assert isinstance(forward, Forward) and trips.asked == []


def _entry(status: int, **flags: bool):
    from envoy.data.accesslog.v3 import accesslog_pb2

    entry = accesslog_pb2.HTTPAccessLogEntry()
    if status:
        entry.response.response_code.value = status
        entry.response.response_headers["retry-after"] = "7"
    for name, value in flags.items():
        setattr(entry.common_properties.response_flags, name, value)
    return entry


def test_what_the_breaker_counts_from_envoys_access_log() -> None:
    from extproc.breaker.service import outcome_of

    assert outcome_of(_entry(429)) == Outcome(429, "7", "")
    assert outcome_of(_entry(0, upstream_connection_failure=True)) == Outcome(0)
    assert outcome_of(_entry(0, upstream_request_timeout=True)) == Outcome(0)  # the try timeout
    assert outcome_of(_entry(0, downstream_connection_termination=True)) is None  # the client left: not the member


def test_the_breaker_service_counts_a_request_once_per_member_and_answers_health_by_host(tmp_path: Path) -> None:
    import asyncio

    from extproc.breaker.service import BreakerService

    config = pool_settings(tmp_path)
    path = tmp_path / "trips"
    board.create(path, len(config.circuits))

    async def scenario() -> None:
        service = BreakerService(config, board.BoardWriter(path, len(config.circuits)))
        now = time.time()
        for _ in range(5):  # one request trying circuit 0 five times: one failure
            service.record(0, Outcome(429), now, "request-1")
        assert service.breaker.state(0, now) is State.HEALTHY
        for request in ("request-2", "request-3"):
            service.record(0, Outcome(429), now, request)
        assert service.breaker.state(0, now) is State.TRIPPED
        assert service.healthy("circuit-0", now) is False and service.healthy("circuit-1", now) is True
        for host in ("circuit-99", "circuit-\u00b2", "other", ""):
            assert service.healthy(host, now) is None  # names no member: Envoy gets 404
        assert board.BoardReader(path, len(config.circuits)).availability((0,))[0] == 0
        status = service.status(now)
        assert status["pools"]["gpt-4o"][0]["state"] == "tripped"
        # A new breaker process (the old one died) starts from the file: still tripped.
        again = BreakerService(config, board.BoardWriter(path, len(config.circuits)))
        assert again.breaker.state(0, now) is State.TRIPPED
        again.reset()
        assert again.breaker.state(0, now) is State.HEALTHY
        assert board.BoardReader(path, len(config.circuits)).availability((0,)) == (1, 1, 0.0)

    asyncio.run(scenario())


def test_an_unreadable_retry_after_is_no_retry_after() -> None:
    assert retry_after_seconds(Outcome(429, retry_after="\u00b2"), T0) is None
