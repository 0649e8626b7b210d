"""Token usage in Envoy's access log, read from each answer as it streams past (envoy/envoy.yaml's Lua filter):
the counts equal what the emulator's answer reported, for JSON answers and SSE streams (chat with
stream_options.include_usage, the Responses API's response.completed), through the real Envoy and SDK."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import openai

from .conftest import Gateway

MESSAGES = [{"role": "user", "content": "Count my tokens, please"}]


def _log_lines(gateway: Gateway) -> list[dict]:
    return [json.loads(line) for line in gateway.log.read_text().splitlines() if line.startswith('{') and '"bytes_in":' in line]


def _mark(gateway: Gateway) -> int:
    """A request with a path of its own (the ext_proc answers it): once its line is in the log, so is every line
    of the requests before it (Envoy writes its log in batches, in order); the index of that line."""
    marker = f"/v1/models/marker-{uuid.uuid4().hex}"
    assert httpx.get(gateway.http_url + marker).status_code == 404
    deadline = time.monotonic() + 15
    while True:
        found = [i for i, line in enumerate(_log_lines(gateway)) if line["path"] == marker]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "the marker never reached the log"
        time.sleep(0.1)


def test_the_access_log_has_each_answers_token_usage(gateway: Gateway) -> None:
    before = _mark(gateway)
    expected = []
    with openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="client", max_retries=0) as client:
        chat = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        expected.append((chat.usage.prompt_tokens, chat.usage.completion_tokens, chat.usage.total_tokens))
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
                                                     stream_options={"include_usage": True}))
        usage = chunks[-1].usage
        assert usage is not None and len(chunks) > 3  # a real stream, its usage in the final chunk
        expected.append((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens))
        completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
        expected.append((completion.usage.prompt_tokens, completion.usage.completion_tokens,
                         completion.usage.total_tokens))
        embedding = client.embeddings.create(model="text-embedding-3-small", input=["one two three", "four"])
        expected.append((embedding.usage.prompt_tokens, None, embedding.usage.total_tokens))
        response = client.responses.create(model="gpt-4o", input="Hello there")
        expected.append((response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens))
        with client.responses.stream(model="gpt-4o", input="Hello stream") as stream:
            final = stream.get_final_response()
        expected.append((final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens))
        plain = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        assert all(chunk.usage is None for chunk in plain)  # no include_usage: the stream reports none
        expected.append((None, None, None))
    after = _mark(gateway)
    lines = _log_lines(gateway)[before + 1:after]  # between the two markers: these requests' lines, in order
    logged = [(line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) for line in lines]
    assert logged == expected
    assert all(isinstance(count, int) and count > 0 for row in expected[:-1] for count in row if count is not None)
    # What each request was for, and when its answer's first byte left.
    assert [(line["model"], line["deployment"], line["backend"]) for line in lines] == [
        ("gpt-4o", "prod-chat", "default"), ("gpt-4o", "prod-chat", "default"),
        ("gpt-3.5-turbo-instruct", "prod-instruct", "default"), ("text-embedding-3-small", "prod-embed", "default"),
        ("gpt-4o", "prod-chat", "default"), ("gpt-4o", "prod-chat", "default"), ("gpt-4o", "prod-chat", "default")]
    assert all(isinstance(line["ttfb_ms"], int) and 0 <= line["ttfb_ms"] <= line["duration_ms"] for line in lines)
    assert all("client" not in line for line in lines)  # no client keys here: no such field
    assert all(line["member"] is None for line in lines)  # no pool


def test_a_clients_metadata_cannot_hide_an_answers_usage(gateway: Gateway) -> None:
    """The Responses API echoes the client's metadata after `usage`: a key named "usage" and 16 long values (pushing
    the real usage far from the answer's end) must not make its tokens uncounted (a token limit would not hold)."""
    metadata = {"usage": "x", **{f"k{i}": "\u00e9" * 512 for i in range(15)}}
    before = _mark(gateway)
    expected = []
    with openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="client", max_retries=0) as client:
        response = client.responses.create(model="gpt-4o", input="Hello there", metadata=metadata)
        assert response.metadata == metadata  # echoed, after the usage
        expected.append((response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens))
        with client.responses.stream(model="gpt-4o", input="Hello stream", metadata=metadata) as stream:
            final = stream.get_final_response()
        expected.append((final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens))
    after = _mark(gateway)
    lines = _log_lines(gateway)[before + 1:after]
    assert [(line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) for line in lines] == expected
