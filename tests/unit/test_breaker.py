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
from extproc.processor.messages import reply_response

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
    assert all(r.wait_seconds((0, 1)) == 0.0 for r in readers)
    writer.publish(0, time.time() + 30)
    assert all(r.wait_seconds((0, 1)) == 0.0 for r in readers)  # member 1 is still in
    writer.publish(1, time.time() + 10)
    for reader in readers:
        assert 10 <= reader.wait_seconds((0, 1)) <= 10 + board.REOPEN_MARGIN_S  # the first back
    board.create(path, 3)  # a restarted supervisor resets the file in place: mapped readers see it
    assert all(r.wait_seconds((0, 1)) == 0.0 for r in readers)


def test_a_missing_board_leaves_the_decision_to_envoy(tmp_path: Path) -> None:
    assert board.BoardReader(tmp_path / "absent", 2).wait_seconds((0, 1)) == 0.0


class FakeTrips:
    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.asked: list[tuple[int, ...]] = []

    def wait_seconds(self, circuits: tuple[int, ...]) -> float:
        self.asked.append(circuits)
        return self.wait


def _decide(tmp_path: Path, trips: FakeTrips, model: str = "gpt-4o") -> Forward | Reply:
    translator = Translator(compile_gateway(pool_settings(tmp_path), trips=trips))
    decision = translator.on_headers(RequestHead("POST", "/v1/chat/completions", "application/json", has_body=True))
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


def test_a_model_outside_pools_never_asks_the_breaker(tmp_path: Path) -> None:
    trips = FakeTrips(math.inf)
    forward = _decide(tmp_path, trips, "text-embedding-3-small")
    assert isinstance(forward, Forward) and trips.asked == []
