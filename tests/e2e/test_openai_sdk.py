"""The real openai SDK -> the real Envoy -> the ext_proc -> the Azure emulator (TLS), asserting on
what reached Azure as well as on what the client got."""

from __future__ import annotations

import base64
import ssl
import time

import httpx
import pytest
from openai import AsyncOpenAI, AzureOpenAI, OpenAI

from extproc.emulator.media import wav

from .conftest import API_VERSION, CLIENT_KEY, SERVER_KEY, EmulatorThread, Gateway


def wav_bytes(seconds: float = 0.2) -> bytes:
    """Silence in a WAV container (the stdlib `wave` module writes it)."""
    return wav(seconds)


@pytest.fixture
def client(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0)


def assert_reached_azure(azure: EmulatorThread, path: str, api_version: str | None = API_VERSION) -> None:
    seen = azure.last()
    assert seen.path == path
    assert seen.query.get("api-version") == ([api_version] if api_version else None)
    assert seen.headers["api-key"] == SERVER_KEY  # the server's key, not the client's
    assert "authorization" not in seen.headers
    assert CLIENT_KEY not in repr(seen.headers)
    assert "x-aoai-gateway-cluster" not in seen.headers


def test_chat_sync(client: OpenAI, azure: EmulatorThread) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello there"}])
    assert completion.choices[0].message.content == "Echo: hello there"
    assert_reached_azure(azure, "/openai/deployments/prod-chat/chat/completions")
    assert azure.last().json["messages"] == [{"role": "user", "content": "hello there"}]


async def test_chat_async(gateway: Gateway, azure: EmulatorThread) -> None:
    async with AsyncOpenAI(base_url=gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
        completion = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "async"}])
    assert completion.choices[0].message.content == "Echo: async"
    assert_reached_azure(azure, "/openai/deployments/prod-chat/chat/completions")


def test_chat_stream_arrives_while_azure_is_still_sending(client: OpenAI, azure: EmulatorThread) -> None:
    interval = 0.25
    started = time.monotonic()
    arrivals: list[tuple[float, object]] = []
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-emulator-chunk-interval-ms": str(int(interval * 1000)), "x-emulator-chunks": "6"},
    )
    for chunk in stream:
        arrivals.append((time.monotonic() - started, chunk))
    text = "".join(c.choices[0].delta.content or "" for _, c in arrivals if c.choices)
    assert text == "Echo: one two three four five six"
    assert arrivals[0][1].choices == []  # Azure's prompt_filter_results chunk comes first, untouched
    assert arrivals[-1][1].usage is not None and arrivals[-1][1].choices == []
    # Unbuffered: the first chunk is seen long before the emulator has sent the last one.
    total = arrivals[-1][0]
    assert total >= 5 * interval
    assert arrivals[0][0] < total - 3 * interval
    gaps = [b[0] - a[0] for (a, b) in zip(arrivals, arrivals[1:])]
    assert sum(1 for gap in gaps if gap > interval * 0.5) >= 4
    assert_reached_azure(azure, "/openai/deployments/prod-chat/chat/completions")


async def test_chat_stream_async(gateway: Gateway, azure: EmulatorThread) -> None:
    async with AsyncOpenAI(base_url=gateway.http_url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "streamed async"}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Echo: streamed async"


def test_completions(client: OpenAI, azure: EmulatorThread) -> None:
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this")
    assert completion.choices[0].text
    assert_reached_azure(azure, "/openai/deployments/prod-instruct/completions")


def test_embeddings_default_base64(client: OpenAI, azure: EmulatorThread) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2 and all(isinstance(x, float) for x in result.data[0].embedding)
    assert_reached_azure(azure, "/openai/deployments/prod-embed/embeddings")
    assert azure.last().json["encoding_format"] == "base64"


def test_audio_transcription_multipart(client: OpenAI, azure: EmulatorThread) -> None:
    transcript = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav_bytes(), "audio/wav"))
    assert transcript.text
    assert_reached_azure(azure, "/openai/deployments/prod-whisper/audio/transcriptions")
    form = azure.last().form
    assert form["model"] == "whisper-1" and form["file"]["filename"] == "speech.wav"


def test_audio_translation_multipart(client: OpenAI, azure: EmulatorThread) -> None:
    translation = client.audio.translations.create(model="whisper-1", file=("speech.wav", wav_bytes(), "audio/wav"))
    assert translation.text
    assert_reached_azure(azure, "/openai/deployments/prod-whisper/audio/translations")


def test_speech(client: OpenAI, azure: EmulatorThread) -> None:
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello")
    assert len(speech.read()) > 0
    assert_reached_azure(azure, "/openai/deployments/prod-tts/audio/speech")


def test_image_generation(client: OpenAI, azure: EmulatorThread) -> None:
    image = client.images.generate(model="dall-e-3", prompt="a cat", response_format="b64_json")
    assert base64.b64decode(image.data[0].b64_json).startswith(b"\x89PNG")
    assert_reached_azure(azure, "/openai/deployments/prod-image/images/generations")


def test_responses_maps_the_body_model(client: OpenAI, azure: EmulatorThread) -> None:
    response = client.responses.create(model="gpt-4o", input="hi from responses")
    assert response.output_text
    assert_reached_azure(azure, "/openai/responses", "2025-04-01-preview")
    assert azure.last().json["model"] == "prod-chat"  # rewritten with a correct Content-Length
    assert azure.last().headers["content-length"] == str(len(azure.last().body))
    fetched = client.responses.retrieve(response.id)
    assert fetched.id == response.id
    assert_reached_azure(azure, f"/openai/responses/{response.id}", "2025-04-01-preview")


def test_responses_stream(client: OpenAI, azure: EmulatorThread) -> None:
    with client.responses.stream(model="gpt-4o", input="streaming responses") as stream:
        events = [event.type for event in stream]
        final = stream.get_final_response()
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert final.output_text


def test_files_and_batches(client: OpenAI, azure: EmulatorThread) -> None:
    uploaded = client.files.create(file=("batch.jsonl", b'{"custom_id": "1"}\n', "application/jsonl"), purpose="batch")
    assert_reached_azure(azure, "/openai/files")
    assert [f.id for f in client.files.list()].count(uploaded.id) == 1
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.retrieve(batch.id).id == batch.id
    assert_reached_azure(azure, f"/openai/batches/{batch.id}")


def test_models_are_answered_by_the_gateway(client: OpenAI, azure: EmulatorThread) -> None:
    before = len(azure.requests())
    models = [m.id for m in client.models.list()]
    assert "gpt-4o" in models and "whisper-1" in models
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    assert len(azure.requests()) == before  # Azure was not called


def test_https_with_the_development_ca(gateway: Gateway, azure: EmulatorThread) -> None:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(gateway.ca_file))) as http:
        client = OpenAI(base_url=gateway.https_url + "/v1", api_key=CLIENT_KEY, http_client=http, max_retries=0)
        completion = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "tls"}])
    assert completion.choices[0].message.content == "Echo: tls"
    assert_reached_azure(azure, "/openai/deployments/prod-chat/chat/completions")


def test_azure_openai_client_pointed_at_the_gateway(gateway: Gateway, azure: EmulatorThread) -> None:
    client = AzureOpenAI(azure_endpoint=gateway.http_url, api_key=CLIENT_KEY, api_version="2024-06-01", max_retries=0)
    completion = client.chat.completions.create(model="prod-chat", messages=[{"role": "user", "content": "azure"}])
    assert completion.choices[0].message.content == "Echo: azure"
    assert_reached_azure(azure, "/openai/deployments/prod-chat/chat/completions", "2024-06-01")
    vectors = client.embeddings.create(model="prod-embed", input="x")
    assert vectors.data[0].embedding
    assert_reached_azure(azure, "/openai/deployments/prod-embed/embeddings", "2024-06-01")


def test_azure_errors_pass_through_unchanged(client: OpenAI, azure: EmulatorThread) -> None:
    raw = client.chat.completions.with_raw_response
    with pytest.raises(Exception) as caught:
        raw.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                   extra_headers={"x-emulator-status": "429", "x-emulator-retry-after": "7"})
    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "7"
    assert error.response.headers["retry-after-ms"] == "7000"
    assert error.body["code"] == "429" and "retry after" in error.body["message"].lower()
