"""`openai_api` mode (`--openai-api`): the emulator as OpenAI itself, or an OpenAI-compatible API,
seen by the real openai SDK: `/v1/...` paths, the body's `model` naming a deployment, Bearer keys only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI

from extproc.emulator import EmulatorSettings, RunningEmulator, start_emulator
from extproc.emulator.cli import _parser, settings_from_args

from .conftest import API_KEY, API_VERSION, cli_emulator, wav_bytes

MESSAGES = [{"role": "user", "content": "What is the capital of Sweden?"}]
ECHO = "Echo: What is the capital of Sweden?"
BEARER = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    """Overrides conftest's: the same emulator in OpenAI mode (conftest's `http` fixture then uses it)."""
    emu = await start_emulator(EmulatorSettings(openai_api=True, bearer_tokens=("entra-token",)))
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def client(emulator: RunningEmulator) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=emulator.url + "/v1", api_key=API_KEY, max_retries=0) as oai:
        yield oai


async def test_chat_is_served_and_journaled_as_it_arrived(client: AsyncOpenAI, emulator: RunningEmulator) -> None:
    completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == ECHO
    assert completion.model == "gpt-4o-2024-08-06"  # the same answer as on Azure's paths

    [recorded] = emulator.journal
    assert (recorded.method, recorded.path, recorded.query) == ("POST", "/v1/chat/completions", {})
    assert recorded.headers["authorization"] == f"Bearer {API_KEY}"
    assert "api-key" not in recorded.headers
    assert recorded.json == {"model": "gpt-4o", "messages": MESSAGES}


async def test_an_api_version_is_not_needed_and_ignored(http: httpx.AsyncClient) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    for params in ({}, {"api-version": "2024-10-21"}, {"api-version": "not-a-version"}):
        response = await http.post("/v1/chat/completions", params=params, headers=BEARER, json=body)
        assert response.status_code == 200, response.text


async def test_chat_stream(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-emulator-chunks": "3"},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)
    assert text == ECHO
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_embeddings_responses_and_transcriptions(client: AsyncOpenAI, emulator: RunningEmulator) -> None:
    embeddings = await client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert [len(item.embedding) for item in embeddings.data] == [1536, 1536]

    response = await client.responses.create(model="gpt-4o", input="Tell me a joke")
    assert response.output_text == "Echo: Tell me a joke"
    assert (await client.responses.retrieve(response.id)).output_text == response.output_text

    audio = wav_bytes()
    transcription = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio, "audio/wav"))
    assert transcription.text == f"Emulated transcription of a.wav ({len(audio)} bytes)."
    assert [entry.path for entry in emulator.journal] == [
        "/v1/embeddings",
        "/v1/responses",
        f"/v1/responses/{response.id}",
        "/v1/audio/transcriptions",
    ]
    assert emulator.journal[-1].form is not None and emulator.journal[-1].form["model"] == "whisper-1"


async def test_models_are_the_deployments(client: AsyncOpenAI, emulator: RunningEmulator) -> None:
    listed = [model.id async for model in client.models.list()]
    assert listed == list(emulator.settings.deployments)
    assert (await client.models.retrieve("gpt-4o")).id == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as raised:
        await client.models.retrieve("gpt-9")
    assert raised.value.body == {
        "message": "The model `gpt-9` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


async def test_a_wrong_key_is_401_with_the_key_masked(emulator: RunningEmulator) -> None:
    wrong = "sk-abcdefghijklmnopqrstuvwxyz"
    async with AsyncOpenAI(base_url=emulator.url + "/v1", api_key=wrong, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert raised.value.status_code == 401
    assert raised.value.body == {
        "message": (
            "Incorrect API key provided: sk-ab***yz. "
            "You can find your API key at https://platform.openai.com/account/api-keys."
        ),
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert emulator.journal[-1].path == "/v1/chat/completions"  # refused requests are journaled too


@pytest.mark.parametrize(
    "headers",
    [
        {"api-key": API_KEY},  # Azure's header: OpenAI does not know it
        {"Authorization": "Bearer entra-token"},  # a configured Entra stand-in: Azure only
        {"Authorization": f"Basic {API_KEY}"},
        {},
    ],
)
async def test_only_a_bearer_api_key_is_accepted(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await http.post("/v1/chat/completions", headers=headers, json={"model": "gpt-4o", "messages": MESSAGES})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if headers.get("Authorization", "").startswith("Bearer"):
        assert error["code"] == "invalid_api_key"
        assert error["message"].startswith("Incorrect API key provided: entra***en. ")
    else:
        assert error["code"] is None and error["message"].startswith("You didn't provide an API key.")
    assert API_KEY not in response.text


async def test_unknown_and_missing_models(client: AsyncOpenAI, http: httpx.AsyncClient) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await client.chat.completions.create(model="gpt-9", messages=MESSAGES)  # type: ignore[arg-type]
    assert raised.value.body == {
        "message": "The model `gpt-9` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    missing = await http.post("/v1/chat/completions", headers=BEARER, json={"messages": MESSAGES})
    assert missing.status_code == 400
    assert missing.json() == {
        "error": {
            "message": "you must provide a model parameter",
            "type": "invalid_request_error",
            "param": "model",
            "code": None,
        }
    }
    # A configured model the endpoint cannot run: OpenAI's 400 shape, not Azure's OperationNotSupported.
    with pytest.raises(openai.BadRequestError) as wrong_kind:
        await client.embeddings.create(model="gpt-4o", input="x")
    assert wrong_kind.value.body["param"] == "model"  # type: ignore[index]


async def test_azure_paths_are_404(emulator: RunningEmulator, http: httpx.AsyncClient) -> None:
    async with AsyncAzureOpenAI(
        azure_endpoint=emulator.url, api_key=API_KEY, api_version=API_VERSION, max_retries=0
    ) as azure:
        with pytest.raises(openai.AuthenticationError):  # no Bearer key: OpenAI authenticates first
            await azure.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    for path in ("/openai/deployments/gpt-4o/chat/completions", "/openai/v1/chat/completions", "/v2/models"):
        response = await http.post(path, params={"api-version": API_VERSION}, headers=BEARER, json={})
        assert response.status_code == 404
        assert response.json() == {
            "error": {
                "message": f"Invalid URL (POST {path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }


async def test_throttle_rules_match_the_body_model(client: AsyncOpenAI, http: httpx.AsyncClient) -> None:
    added = await http.post("/_emulator/throttle", json={"deployment": "gpt-4o", "retry_after": 3, "count": 1})
    assert added.status_code == 201
    with pytest.raises(openai.RateLimitError) as raised:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert raised.value.response.headers["retry-after"] == "3"
    assert raised.value.response.headers["retry-after-ms"] == "3000"
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]  # spent
    [rule] = (await http.get("/_emulator/throttle")).json()
    assert (rule["matched"], rule["throttled"], rule["remaining"]) == (1, 1, 0)  # spent: no longer matches
    journal = (await http.get("/_emulator/requests")).json()  # the admin API needs no key in this mode either
    assert [entry["json"]["model"] for entry in journal] == ["gpt-4o", "gpt-4o-mini", "gpt-4o"]


def test_cli_flag_maps_to_the_setting() -> None:
    assert settings_from_args(_parser().parse_args(["--openai-api"])).openai_api is True
    assert settings_from_args(_parser().parse_args([])).openai_api is False


async def test_cli_serves_the_openai_api() -> None:
    async with cli_emulator("--openai-api", "--api-key", "sk-cli-key", "--deployment", "chat=gpt-4o-mini") as url:

        def call() -> str | None:
            # The sync client, as a test would use it; it blocks, so it runs beside the loop.
            with openai.OpenAI(base_url=url + "/v1", api_key="sk-cli-key", max_retries=0) as client:
                completion = client.chat.completions.create(model="chat", messages=MESSAGES)  # type: ignore[arg-type]
                return completion.choices[0].message.content

        assert await asyncio.to_thread(call) == ECHO
