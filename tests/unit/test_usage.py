"""The usage process without Envoy: the token windows, the spend board the workers read, the ledger's metrics and
bounded labels, reading Envoy's access log entries, and the worker's 429 for a key that has spent its tokens.
Through the real Envoy: tests/e2e/test_metrics.py."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import orjson
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from prometheus_client import generate_latest

from extproc.compile import compile_gateway
from extproc.config import ConfigError, load_settings
from extproc.core.decision import Forward, Reply, RequestHead
from extproc.core.translator import Translator
from extproc.usage import board
from extproc.usage.ledger import Ledger, Request
from extproc.usage.service import USAGE_FIELDS, request_of
from extproc.usage.windows import SlidingWindow, key_limits

KEY = "sk-team-a"
CONFIG = f"""
azure: {{endpoint: https://main.openai.azure.com, api_key: azure-key}}
models: {{gpt-4o: chat, text-embedding-3-small: embed}}
clients:
  keys:
    - {{name: team-a, key_sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, tokens_per_minute: 100, tokens_per_day: 1000}}
    - {{name: team-b, key_sha256: {hashlib.sha256(b"sk-team-b").hexdigest()}}}
    - {{name: team-c, key_sha256: {hashlib.sha256(b"sk-team-c").hexdigest()}, tokens_per_day: 50}}
state_dir: {{state}}
listen: {{https_port: null}}
"""


def settings(tmp_path: Path, text: str = CONFIG):
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace("{state}", str(tmp_path / "state")))
    return load_settings(path, env={})


# --- windows ------------------------------------------------------------------------------------------------


def test_a_window_counts_what_ended_within_its_span_and_frees_bucket_by_bucket() -> None:
    window = SlidingWindow(60.0, 1.0)
    window.add(40, 1000.2)
    window.add(70, 1010.5)
    assert window.spent_at(1010.6) == 110
    # Under 100 again once the first bucket (second 1000) is a minute old: 1061.0.
    assert window.free_at(100, 1010.6) == 1061.0
    assert window.spent_at(1060.99) == 110 and window.spent_at(1061.0) == 70
    assert window.free_at(50, 1061.0) == 1071.0  # the second bucket too
    assert window.spent_at(1071.0) == 0 and not window.buckets


def test_a_key_is_blocked_once_a_window_is_spent_and_until_it_frees() -> None:
    limits = key_limits("k", 100, 1000)
    assert limits.add(60, 5000.0) == (0.0, 0.0)
    minute, day = limits.add(50, 5001.0)
    assert minute == 5061.0 and day == 0.0  # 110 >= 100 until the 60 leave
    assert limits.remaining(5001.0) == {"minute": 0, "day": 890}
    assert limits.blocked_until(5061.0) == (0.0, 0.0)
    for second in range(10):  # 10 x 100 over ten minutes: the day is spent, each minute is not
        limits.add(100, 5100.0 + 60 * second)
    assert limits.blocked_until(5700.0)[1] > 5700.0 + 80_000


# --- the board ----------------------------------------------------------------------------------------------


def test_the_board_carries_the_longer_wait_to_every_reader(tmp_path: Path) -> None:
    path = tmp_path / "spend.board"
    board.create(path, 2)
    writer, reader = board.SpendWriter(path, 2), board.SpendReader(path, 2)
    assert reader.wait(0) == ("", 0.0) and reader.wait(1) == ("", 0.0)
    now = time.time()
    writer.publish(1, (now + 30, 0.0))
    window, wait = reader.wait(1)
    assert window == "minute" and 29 < wait <= 30
    writer.publish(1, (now + 30, now + 3600))
    assert reader.wait(1)[0] == "day"
    writer.publish(1, (now - 1, 0.0))
    assert reader.wait(1) == ("", 0.0) and reader.wait(0) == ("", 0.0)


def test_a_missing_board_enforces_nothing_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reader = board.SpendReader(tmp_path / "missing", 1)
    assert reader.wait(0) == ("", 0.0)
    assert "token limits are not enforced" in caplog.text


# --- the worker's answer --------------------------------------------------------------------------------------


def test_a_key_that_spent_its_tokens_gets_429_before_anything_else(tmp_path: Path) -> None:
    config = settings(tmp_path)
    board.create(config.usage_paths.board, len(config.token_limited_keys))
    gateway = compile_gateway(config)
    translator = Translator(gateway)
    head = RequestHead("POST", "/v1/chat/completions", "application/json", f"Bearer {KEY}", has_body=True)
    assert not isinstance(translator.on_headers(head), Reply)
    writer = board.SpendWriter(config.usage_paths.board, len(config.token_limited_keys))
    writer.publish(0, (time.time() + 12.2, 0.0))  # team-a is slot 0; team-c slot 1
    refused = translator.on_headers(head)
    assert isinstance(refused, Reply) and refused.status == 429
    assert dict(refused.headers) == {"retry-after": "13", "retry-after-ms": "13000"}
    error = orjson.loads(refused.body)["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "tokens"
    assert "team-a" in error["message"] and "tokens per minute" in error["message"]
    # Another key is not held by team-a's spend.
    other = RequestHead("POST", "/v1/chat/completions", "application/json", "Bearer sk-team-b", has_body=True)
    assert not isinstance(translator.on_headers(other), Reply)


def test_token_limits_in_the_settings(tmp_path: Path) -> None:
    config = settings(tmp_path)
    assert [key.name for key in config.token_limited_keys] == ["team-a", "team-c"]
    assert config.usage_process
    with pytest.raises(ConfigError, match="tokens_per_minute"):
        settings(tmp_path, CONFIG.replace("tokens_per_minute: 100", "tokens_per_minute: 0"))
    with pytest.raises(ConfigError, match="metrics.port"):
        settings(tmp_path, CONFIG + "metrics: {port: 8080}\n")
    quiet = settings(tmp_path, CONFIG.replace(", tokens_per_minute: 100, tokens_per_day: 1000", "")
                     .replace(", tokens_per_day: 50", "") + "metrics: {enabled: false}\n")
    assert not quiet.usage_process


# --- the ledger -------------------------------------------------------------------------------------------------


def _metrics(ledger: Ledger) -> str:
    return generate_latest(ledger.registry).decode()


def test_the_ledger_counts_requests_and_tokens_with_bounded_labels(tmp_path: Path) -> None:
    ledger = Ledger(settings(tmp_path))
    now = 1_800_000_000.0
    ledger.record(Request(200, "gpt-4o", "chat", "default", "team-b", 0.5, 0.1, 1, 12, 30, 42, 4, 8), now)
    ledger.record(Request(200, "my-own-model", "my-own-model", "default", "", 0.2, 0.2, 1, 5, 5, 10), now)
    ledger.record(Request(401, duration_s=0.001, ttfb_s=0.001), now)
    text = _metrics(ledger)
    assert ('aoai_gateway_requests_total{backend="default",client="team-b",deployment="chat",'
            'gen_ai_request_model="gpt-4o",status_class="2xx"} 1.0') in text
    # An unknown model and deployment are "other"; no model, no client: "none".
    assert ('aoai_gateway_requests_total{backend="default",client="none",deployment="other",'
            'gen_ai_request_model="other",status_class="2xx"} 1.0') in text
    assert ('aoai_gateway_requests_total{backend="none",client="none",deployment="none",'
            'gen_ai_request_model="none",status_class="4xx"} 1.0') in text
    for kind, value in (("input", 12), ("output", 30), ("cached_input", 4), ("reasoning", 8)):
        assert f'aoai_gateway_tokens_total{{client="team-b",gen_ai_request_model="gpt-4o",type="{kind}"}} {value}.0' in text
    assert 'gen_ai_client_token_usage_sum{client="team-b",gen_ai_request_model="gpt-4o",gen_ai_token_type="output"} 30.0' in text
    assert "_created" not in text
    assert ledger.totals == {"requests": 3, "tokens": 52}
    series = ledger.history.series(now)
    assert series["models"]["gpt-4o"]["tokens"][-1] == 42 and series["clients"]["none"]["requests"][-1] == 2
    assert len(series["minutes"]) == 60 and series["minutes"][-1] == int(now // 60) * 60


def test_the_ledger_publishes_a_limited_keys_spend(tmp_path: Path) -> None:
    ledger = Ledger(settings(tmp_path))
    now = 1_800_000_000.0
    assert ledger.record(Request(200, "gpt-4o", client="team-b", total_tokens=500), now) is None  # no limit
    assert ledger.record(Request(200, "gpt-4o", client="team-c", total_tokens=20), now) == (1, (0.0, 0.0))
    slot, until = ledger.record(Request(200, "gpt-4o", client="team-c", total_tokens=40), now + 5)  # 60 > 50 a day
    assert slot == 1 and until[0] == 0.0 and until[1] == (int(now // 60) + 1) * 60 + 86_400
    # No tokens reported (a cut stream, a 4xx): nothing to publish; counted as incomplete when cut.
    assert ledger.record(Request(200, "gpt-4o", client="team-a", cut=True), now) is None
    assert 'aoai_gateway_incomplete_requests_total{client="team-a",gen_ai_request_model="gpt-4o"} 1.0' in _metrics(ledger)


# --- Envoy's log entries ----------------------------------------------------------------------------------------


def test_an_access_log_entry_as_the_ledger_reads_it() -> None:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    # As Envoy's formatter writes the custom tag (envoy/envoy.yaml): a pool's request (no deployment of its own,
    # the answering member's circuit), a model with a tab in it (the client's to choose) last.
    fields = {"status": "200", "duration_ms": "900", "last_byte_us": "900500", "first_byte_us": "120000", "tries": "2",
              "flags": "-", "prompt_tokens": "11", "completion_tokens": "7", "total_tokens": "18", "cached_tokens": "",
              "reasoning_tokens": "", "circuit": "1", "client": "team-a", "backend": "", "deployment": "",
              "model": "gpt-4o\tx"}
    assert tuple(fields) == USAGE_FIELDS
    entry.common_properties.custom_tags["u"] = "\t".join(fields.values())
    request = request_of(entry, (("east", "chat-east"), ("west", "chat-west")))
    assert request == Request(200, "gpt-4o\tx", "chat-west", "west", "team-a", 0.9005, 0.12, 2, 11, 7, 18, None, None,
                              False)
    # Refused before any decision and cut: no metadata, no answer byte sent (Envoy's empty fields).
    bare = accesslog_pb2.HTTPAccessLogEntry()
    bare.common_properties.custom_tags["u"] = "0\t3\t\t\t0\tDC" + "\t" * 10
    assert request_of(bare, ()) == Request(0, duration_s=0.003, ttfb_s=None, cut=True)


def test_forward_metadata_names_what_the_request_is_for(tmp_path: Path) -> None:
    from google.protobuf.json_format import MessageToDict

    from extproc.processor.messages import body_forward_response

    forward = Forward("/p", (), "azure", model="gpt-4o", deployment="chat", backend="default", client="team-a")
    metadata = MessageToDict(body_forward_response(forward).dynamic_metadata)
    assert metadata == {"aoai.request": {"model": "gpt-4o", "deployment": "chat", "backend": "default", "client": "team-a"}}
    odd = body_forward_response(Forward("/p", (), "azure", model="\ud800" + "m" * 300))
    assert MessageToDict(odd.dynamic_metadata)["aoai.request"]["model"] == "?" + "m" * 255
    tabbed = body_forward_response(Forward("/p", (), "azure", model="a\tb\nc"))  # the usage process splits on tabs
    assert MessageToDict(tabbed.dynamic_metadata)["aoai.request"]["model"] == "a?b?c"


def test_the_spend_is_saved_and_taken_back_by_the_next_usage_process(tmp_path: Path) -> None:
    from extproc.usage.service import UsageService

    config = settings(tmp_path)
    config.state_path.mkdir(parents=True)
    keys = len(config.token_limited_keys)
    board.create(config.usage_paths.board, keys)
    first = UsageService(config, board.SpendWriter(config.usage_paths.board, keys))
    now = time.time()
    first.ledger.record(Request(200, "gpt-4o", client="team-c", total_tokens=70), now)  # team-c: 50 a day
    first.ledger.record(Request(200, "gpt-4o", client="team-a", total_tokens=30), now)
    first.save_spend()
    # The gateway restarts: the supervisor zeroes the board; the new process reads the spend back.
    board.create(config.usage_paths.board, keys)
    reader = board.SpendReader(config.usage_paths.board, keys)
    assert reader.wait(1) == ("", 0.0)
    second = UsageService(config, board.SpendWriter(config.usage_paths.board, keys))
    window, wait = reader.wait(1)
    assert window == "day" and 86_000 < wait <= 86_460
    assert second.ledger.limits[0].remaining(time.time()) == {"minute": 70, "day": 970}
    # Unreadable: starts from none, says so.
    (config.state_path / "spend.json").write_text("{not json")
    third = UsageService(config, board.SpendWriter(config.usage_paths.board, keys))
    assert third.ledger.limits[0].remaining(time.time())["day"] == 1000


def test_token_limits_make_streams_ask_for_their_usage(tmp_path: Path) -> None:
    config = settings(tmp_path)  # team-a has a token limit
    assert config.usage.include_stream_usage is None and config.stream_usage_added
    assert compile_gateway(config).include_stream_usage
    with pytest.raises(ConfigError, match="include_stream_usage"):
        settings(tmp_path, CONFIG + "usage: {include_stream_usage: false}\n")


def test_the_status_server_on_loopback_answers_loopback_names_only(tmp_path: Path) -> None:
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from extproc.usage.service import UsageService, _http_app

    service = UsageService(settings(tmp_path), None)

    async def statuses() -> list[int]:
        async with TestClient(TestServer(_http_app(service))) as client:
            found = []
            for host in ("127.0.0.1:9464", "localhost:9464", "[::1]:9464", "rebound.example:9464"):
                response = await client.get("/status.json", headers={"host": host})
                found.append(response.status)
            return found

    assert asyncio.run(statuses()) == [200, 200, 200, 403]  # a DNS-rebinding page names its own host


def test_a_client_that_reset_its_stream_is_counted_as_cut() -> None:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    for flags, cut in (("DR", True), ("DC", True), ("UF,URX", False), ("-", False), ("DPE", False)):
        entry.common_properties.custom_tags["u"] = f"200\t9\t\t\t1\t{flags}" + "\t" * 10
        assert request_of(entry, ()).cut is cut, flags
    entry.common_properties.custom_tags["u"] = "200\t9\t\t\t1\t-\t" + "9" * 400 + "\t" * 9
    assert request_of(entry, ()).input_tokens is None  # a count beyond any float is no count
