"""Usage and metrics through the real Envoy, two ext_proc workers, the SDK and the emulator: /metrics counts each
answer's tokens exactly as the emulator reported them (JSON answers and streams), per model and client key; a
cut stream is counted as incomplete; a key's tokens_per_minute refuses it with 429 and Retry-After before
anything reaches Azure, and lets it through once the window frees; the status page in a real headless Chromium."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from .browser import chromium
from .conftest import EmulatorThread, Gateway, start_gateway, stop_gateway

TEAM_A = "sk-metrics-team-a"
LIMITED = "sk-metrics-limited"
MESSAGES = [{"role": "user", "content": "Count my tokens, please"}]
LIMIT = 60  # tokens per minute for the limited key: a few chats
ARTIFACTS = Path(os.environ.get("AOAI_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, azure: EmulatorThread, upstream_pki) -> Iterator[Gateway]:
    clients = ("{keys: [{name: team-a, key_sha256: %s}, {name: limited, key_sha256: %s, tokens_per_minute: %d}]}"
               % (_digest(TEAM_A), _digest(LIMITED), LIMIT))
    gw = start_gateway(tmp_path_factory.mktemp("metrics"), azure.url, upstream_pki.ca_cert,
                       extproc="{workers: 2}", clients=clients)
    try:
        yield gw
    finally:
        stop_gateway(gw)


def scrape(gateway: Gateway) -> dict[str, float]:
    return gateway.metrics()


def requests_counted(gateway: Gateway) -> float:
    return sum(v for k, v in scrape(gateway).items() if k.startswith("aoai_gateway_requests_total{"))


def wait_for_count(gateway: Gateway, count: float) -> dict[str, float]:
    """/metrics once it has counted `count` requests (Envoy sends its log every 50 ms, after each request)."""
    deadline = time.monotonic() + 10
    while (counted := requests_counted(gateway)) < count:
        assert time.monotonic() < deadline, f"{counted} of {count} requests counted"
        time.sleep(0.05)
    assert counted == count, "more requests were counted than were made"
    return scrape(gateway)


def tokens(samples: dict[str, float], model: str, client: str, kind: str) -> float:
    return samples.get(f'aoai_gateway_tokens_total{{client="{client}",gen_ai_request_model="{model}",type="{kind}"}}', 0.0)


def test_metrics_count_every_answers_tokens_across_workers(gateway: Gateway) -> None:
    start = requests_counted(gateway)
    before = scrape(gateway)
    reported: dict[str, list[int]] = {}  # model -> [input, output] as the SDK got them

    def add(model: str, prompt: int, completion: int | None) -> None:
        row = reported.setdefault(model, [0, 0])
        row[0] += prompt
        row[1] += completion or 0

    with openai.OpenAI(base_url=gateway.http_url + "/v1", api_key=TEAM_A, max_retries=0) as client:
        for _ in range(3):  # several requests: both workers take some
            chat = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
            add("gpt-4o", chat.usage.prompt_tokens, chat.usage.completion_tokens)
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
                                                     stream_options={"include_usage": True}))
        add("gpt-4o", chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens)
        completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
        add("gpt-3.5-turbo-instruct", completion.usage.prompt_tokens, completion.usage.completion_tokens)
        embedding = client.embeddings.create(model="text-embedding-3-small", input=["one two three", "four"])
        add("text-embedding-3-small", embedding.usage.prompt_tokens, None)
        response = client.responses.create(model="gpt-4o", input="Hello there")
        add("gpt-4o", response.usage.input_tokens, response.usage.output_tokens)
        with client.responses.stream(model="gpt-4o", input="Hello stream") as stream:
            final = stream.get_final_response()
        add("gpt-4o", final.usage.input_tokens, final.usage.output_tokens)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    after = wait_for_count(gateway, start + 9)
    for model, (prompt, completion) in reported.items():
        assert tokens(after, model, "team-a", "input") - tokens(before, model, "team-a", "input") == prompt, model
        assert tokens(after, model, "team-a", "output") - tokens(before, model, "team-a", "output") == completion, model
        usage_sum = f'gen_ai_client_token_usage_sum{{client="team-a",gen_ai_request_model="{model}",gen_ai_token_type="input"}}'
        assert after[usage_sum] - before.get(usage_sum, 0.0) == prompt
    chat_ok = ('aoai_gateway_requests_total{backend="default",client="team-a",deployment="prod-chat",'
               'gen_ai_request_model="gpt-4o",status_class="2xx"}')
    assert after[chat_ok] - before.get(chat_ok, 0.0) == 6
    # The unknown model was refused by the ext_proc (404): counted for its key, with no model or deployment.
    refused = 'aoai_gateway_requests_total{backend="none",client="team-a",deployment="none",gen_ai_request_model="none",status_class="4xx"}'
    assert after[refused] - before.get(refused, 0.0) == 1
    duration = 'gen_ai_server_request_duration_seconds_count{backend="default",gen_ai_request_model="gpt-4o",status_class="2xx"}'
    assert after[duration] - before.get(duration, 0.0) == 6
    assert after["aoai_gateway_extproc_workers_up"] == 2 == after["aoai_gateway_extproc_workers"]


def test_a_cut_stream_is_counted_as_incomplete(gateway: Gateway, azure: EmulatorThread) -> None:
    start = requests_counted(gateway)
    before = scrape(gateway)
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"authorization": f"Bearer {TEAM_A}", "x-emulator-chunks": "50", "x-emulator-chunk-interval-ms": "50"}
    with httpx.stream("POST", gateway.http_url + "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200
        for _ in response.iter_raw():
            break  # the first chunk, then the client goes away
    after = wait_for_count(gateway, start + 1)
    cut = 'aoai_gateway_incomplete_requests_total{client="team-a",gen_ai_request_model="gpt-4o"}'
    assert after[cut] - before.get(cut, 0.0) == 1
    assert tokens(after, "gpt-4o", "team-a", "output") == tokens(before, "gpt-4o", "team-a", "output")


def test_a_key_over_its_tokens_per_minute_waits_for_its_window(gateway: Gateway, azure: EmulatorThread) -> None:
    spent = 0
    with openai.OpenAI(base_url=gateway.http_url + "/v1", api_key=LIMITED, max_retries=0) as client:
        first = time.time()
        while spent < LIMIT:
            chat = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
            spent += chat.usage.total_tokens
        reached = len(azure.requests())
        deadline = time.monotonic() + 5  # the usage process hears of the last answer within ~50 ms
        while True:
            try:
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
            except openai.RateLimitError as refused:
                error = refused
                break
            reached = len(azure.requests())
            assert time.monotonic() < deadline, "the key was never refused"
        assert len(azure.requests()) == reached  # refused before Azure
        retry_after = int(error.response.headers["retry-after"])
        assert error.body["code"] == "rate_limit_exceeded" and error.body["type"] == "tokens"
        # The first answers leave the window a minute (and at most one 1 s bucket) after they ended.
        assert 0 < retry_after <= 62 and time.time() + retry_after <= first + 62.5
        with pytest.raises(openai.RateLimitError):  # still refused just before
            time.sleep(max(0.0, retry_after - 2))
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        time.sleep(2.5)
        ok = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert ok.usage.total_tokens > 0
    remaining = 'aoai_gateway_client_tokens_remaining{client="limited",window="minute"}'
    deadline = time.monotonic() + 5
    while (samples := scrape(gateway))[remaining] != LIMIT - ok.usage.total_tokens:  # the last answer's, once heard of
        assert time.monotonic() < deadline, samples[remaining]
        time.sleep(0.05)
    assert not any('client="team-a"' in name for name in samples if name.startswith("aoai_gateway_client_tokens_remaining"))


def test_the_status_page_shows_the_traffic(gateway: Gateway) -> None:
    with openai.OpenAI(base_url=gateway.http_url + "/v1", api_key=TEAM_A, max_retries=0) as client:
        for _ in range(2):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        client.embeddings.create(model="text-embedding-3-small", input="status page")
    time.sleep(0.3)
    status = httpx.get(gateway.metrics_url + "/status.json").json()
    gpt_tokens = sum(status["history"]["models"]["gpt-4o"]["tokens"])
    assert gpt_tokens > 0
    page = httpx.get(gateway.metrics_url + "/")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    browser = chromium()
    try:
        browser.set_window_size(1280, 1100)
        browser.get(gateway.metrics_url + "/")
        WebDriverWait(browser, 20).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
        summary = browser.find_element(By.ID, "summary").text
        assert re.search(r"version \S+ · up \d+m \d+s · ext_proc workers 2/2 · \d+ requests", summary), summary
        backends = browser.find_element(By.ID, "backends").text
        assert "default" in backends and "api key" in backends
        legend = browser.find_element(By.ID, "legend-tokens-by-model").text
        shown = int(re.search(r"gpt-4o: ([\d,]+)", legend).group(1).replace(",", ""))
        assert shown >= gpt_tokens  # the page's own later read may include more
        assert browser.find_elements(By.CSS_SELECTOR, "#tokens-by-model rect")  # bars drawn
        clients = browser.find_element(By.ID, "clients").text
        assert "limited" in clients and "team-a" in clients
        assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]  # nothing failed to load
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "status-page.png"))
    finally:
        browser.quit()
    assert (ARTIFACTS / "status-page.png").stat().st_size > 10_000
    assert shutil.which("chromium")
