"""Raw HTTP behaviour: Azure's error bodies, fault injection, the v1 surface, the journal API."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from openai import AsyncOpenAI

from extproc.emulator import EmulatorSettings, RunningEmulator, start_emulator
from extproc.emulator.errors import DEPLOYMENT_NOT_FOUND_MESSAGE, UNAUTHORIZED_MESSAGE

from .conftest import API_KEY, API_VERSION

AUTH = {"api-key": API_KEY}
CHAT_PATH = "/openai/deployments/gpt-4o/chat/completions"
CHAT_BODY = {"messages": [{"role": "user", "content": "ping"}]}
VERSION = {"api-version": API_VERSION}


async def chat(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> httpx.Response:
    """A valid chat request, plus any extra headers (fault injection)."""
    return await http.post(CHAT_PATH, params=VERSION, json=CHAT_BODY, headers={**AUTH, **(headers or {})})


@pytest.mark.parametrize("headers", [{}, {"api-key": "wrong"}, {"Authorization": "Bearer wrong"}])
async def test_unauthorized(http: httpx.AsyncClient, emulator: RunningEmulator, headers: dict[str, str]) -> None:
    response = await http.post(CHAT_PATH, params=VERSION, json=CHAT_BODY, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "401", "message": UNAUTHORIZED_MESSAGE}}
    assert response.headers["apim-request-id"] and response.headers["x-ms-region"]
    assert len(emulator.journal) == 1  # rejected requests are journaled too


async def test_auth_comes_before_fault_injection(http: httpx.AsyncClient) -> None:
    response = await http.post(CHAT_PATH, params=VERSION, json=CHAT_BODY, headers={"x-emulator-status": "429"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (CHAT_PATH, {}),  # no api-version
        (CHAT_PATH, {"api-version": "2019-01-01"}),  # unknown api-version
        ("/openai/deployments/gpt-4o/chat/nope", VERSION),  # unknown operation
        ("/openai/deployments/nope-dep/chat/nope", VERSION),  # path wins over the deployment
        ("/somewhere/else", VERSION),
    ],
)
async def test_resource_not_found(http: httpx.AsyncClient, path: str, params: dict[str, str]) -> None:
    response = await http.post(path, params=params, json=CHAT_BODY, headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "404", "message": "Resource not found"}}


async def test_unknown_deployment(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/openai/deployments/no-such-dep/chat/completions", params=VERSION, json=CHAT_BODY, headers=AUTH
    )
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "DeploymentNotFound", "message": DEPLOYMENT_NOT_FOUND_MESSAGE}}


async def test_url_escaped_deployment_names() -> None:
    async with await start_emulator(EmulatorSettings(deployments={"my dep": "gpt-4o"})) as emu:
        async with httpx.AsyncClient(base_url=emu.url) as http:
            response = await http.post(
                "/openai/deployments/my%20dep/chat/completions", params=VERSION, json=CHAT_BODY, headers=AUTH
            )
        assert response.status_code == 200
        assert emu.journal[0].path == "/openai/deployments/my dep/chat/completions"


async def test_bad_json_and_missing_fields(http: httpx.AsyncClient) -> None:
    response = await http.post(
        CHAT_PATH, params=VERSION, content=b"{not json", headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "BadRequest" and error["param"] is None and error["type"] is None and error["message"]

    response = await http.post(CHAT_PATH, params=VERSION, json={"model": "gpt-4o"}, headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "'messages' is a required property",
            "type": "invalid_request_error",
            "param": "messages",
            "code": None,
        }
    }

    embeddings = await http.post(
        "/openai/deployments/text-embedding-3-small/embeddings", params=VERSION, json={}, headers=AUTH
    )
    assert embeddings.json()["error"]["param"] == "input"
    images = await http.post("/openai/deployments/dall-e-3/images/generations", params=VERSION, json={}, headers=AUTH)
    assert images.json()["error"]["param"] == "prompt"
    responses = await http.post(
        "/openai/responses", params={"api-version": "2025-04-01-preview"}, json={"input": "x"}, headers=AUTH
    )
    assert responses.status_code == 400 and responses.json()["error"]["param"] == "model"


async def test_injected_429(http: httpx.AsyncClient, emulator: RunningEmulator) -> None:
    response = await chat(http, {"x-emulator-status": "429", "x-emulator-retry-after": "7"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.headers["retry-after-ms"] == "7000"
    error = response.json()["error"]
    assert error["code"] == "429"
    assert error["message"].startswith(
        f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {API_VERSION} "
        "have exceeded token rate limit"
    )
    assert "Please retry after 7 seconds" in error["message"]
    assert "x-ratelimit-remaining-requests" not in response.headers
    assert emulator.journal[0].headers["x-emulator-status"] == "429"

    default = await chat(http, {"x-emulator-status": "429"})
    assert default.headers["retry-after"] == "1" and default.headers["retry-after-ms"] == "1000"


@pytest.mark.parametrize("status", [500, 503, 408])
async def test_injected_server_errors(http: httpx.AsyncClient, status: int) -> None:
    response = await chat(http, {"x-emulator-status": str(status)})
    assert response.status_code == status
    assert response.json()["error"]["message"]


async def test_injected_delay(http: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await chat(http, {"x-emulator-delay-ms": "300"})
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


async def test_success_headers(http: httpx.AsyncClient) -> None:
    response = await chat(http, {"x-ms-client-request-id": "client-123"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    for name in ("apim-request-id", "x-request-id", "x-ms-region"):
        assert response.headers[name]
    assert int(response.headers["x-ratelimit-remaining-requests"]) > 0
    assert int(response.headers["x-ratelimit-remaining-tokens"]) > 0
    assert response.headers["x-ms-client-request-id"] == "client-123"


async def test_raw_stream_framing(http: httpx.AsyncClient) -> None:
    body = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}
    headers = {**AUTH, "x-emulator-chunks": "2"}
    async with http.stream("POST", CHAT_PATH, params=VERSION, json=body, headers=headers) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = (await response.aread()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events[:-1])
    # prompt filter event, 2 content chunks, finish chunk, usage chunk, [DONE]
    assert len(events[:-1]) == 6


async def test_v1_surface(http: httpx.AsyncClient, emulator: RunningEmulator) -> None:
    body = {"model": "gpt-4o", **CHAT_BODY}
    response = await http.post("/openai/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Echo: ping"
    preview = await http.post("/openai/v1/chat/completions", params={"api-version": "preview"}, json=body, headers=AUTH)
    assert preview.status_code == 200

    missing_model = await http.post("/openai/v1/chat/completions", json=CHAT_BODY, headers=AUTH)
    assert missing_model.status_code == 400 and missing_model.json()["error"]["param"] == "model"
    unknown = await http.post("/openai/v1/chat/completions", json={**body, "model": "nope"}, headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "DeploymentNotFound"

    models = await http.get("/openai/v1/models", headers=AUTH)
    assert "gpt-4o" in [model["id"] for model in models.json()["data"]]
    assert emulator.journal[0].path == "/openai/v1/chat/completions" and emulator.journal[0].query == {}


async def test_v1_with_plain_openai_sdk(emulator: RunningEmulator) -> None:
    # The documented way to call Azure's v1 API: the plain client, the key as a bearer token.
    async with AsyncOpenAI(base_url=f"{emulator.url}/openai/v1/", api_key=API_KEY, max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}]
        )
        response = await client.responses.create(model="gpt-4o", input="v1 responses")
        embeddings = await client.embeddings.create(model="text-embedding-3-small", input="v1")
    assert completion.choices[0].message.content == "Echo: ping"
    assert response.output_text == "Echo: v1 responses"
    assert len(embeddings.data[0].embedding) == 1536
    assert [r.path for r in emulator.journal] == [
        "/openai/v1/chat/completions",
        "/openai/v1/responses",
        "/openai/v1/embeddings",
    ]
    assert emulator.journal[0].headers["authorization"] == f"Bearer {API_KEY}"


async def test_responses_need_a_recent_api_version(http: httpx.AsyncClient) -> None:
    body = {"model": "gpt-4o", "input": "x"}
    response = await http.post("/openai/responses", params=VERSION, json=body, headers=AUTH)
    assert response.status_code == 400
    assert "2025-03-01-preview" in response.json()["error"]["message"]


async def test_journal_over_http(http: httpx.AsyncClient, emulator: RunningEmulator) -> None:
    await chat(http)
    await http.post(
        "/openai/deployments/whisper/audio/transcriptions",
        params=VERSION,
        headers=AUTH,
        data={"response_format": "text"},
        files={"file": ("a.wav", b"RIFF0000", "audio/wav")},
    )
    listed = (await http.get("/_emulator/requests")).json()
    assert [entry["path"] for entry in listed] == [CHAT_PATH, "/openai/deployments/whisper/audio/transcriptions"]
    assert listed[0]["json"] == CHAT_BODY and listed[0]["body_length"] > 0
    assert listed[1]["form"]["file"] == {"filename": "a.wav", "size": 8, "content_type": "audio/wav"}
    assert listed[1]["form"]["response_format"] == "text"

    assert (await http.delete("/_emulator/requests")).status_code == 204
    assert (await http.get("/_emulator/requests")).json() == []
    assert emulator.journal == []
    emulator.clear_journal()


async def test_client_leaving_mid_stream_is_harmless(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = {**CHAT_BODY, "stream": True}
    slow = {**AUTH, "x-emulator-chunk-interval-ms": "30", "x-emulator-chunks": "8"}
    with caplog.at_level(logging.DEBUG, logger="extproc.emulator"):
        async with http.stream("POST", CHAT_PATH, params=VERSION, json=body, headers=slow) as response:
            async for _line in response.aiter_lines():
                break  # hang up after the first event
        assert (await chat(http)).status_code == 200
        # The abandoned stream's handler finishes in the background; wait for its log line.
        for _ in range(100):
            if len(caplog.records) >= 2:
                break
            await asyncio.sleep(0.02)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    # One DEBUG line per request, and it never shows the key.
    assert len(caplog.records) == 2 and API_KEY not in caplog.text


async def test_resource_level_model_list(http: httpx.AsyncClient) -> None:
    response = await http.get("/openai/models", params=VERSION, headers=AUTH)
    models = {model["id"]: model["capabilities"] for model in response.json()["data"]}
    assert models["gpt-4o"]["chat_completion"] is True
    assert models["text-embedding-3-small"]["embeddings"] is True
