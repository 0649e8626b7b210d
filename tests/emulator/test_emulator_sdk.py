"""The emulator as seen by the real openai SDK's Azure clients."""

from __future__ import annotations

import asyncio
import base64
import struct
import time

import httpx
import openai
import pytest
from openai import AsyncAzureOpenAI, AzureOpenAI

from extproc.emulator import EmulatorSettings, RunningEmulator, start_emulator

from .conftest import API_KEY, API_VERSION, wav_bytes

USER_TEXT = "What is the capital of Sweden?"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": USER_TEXT}]


async def test_chat_completion_async(client: AsyncAzureOpenAI, emulator: RunningEmulator) -> None:
    completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.system_fingerprint
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == f"Echo: {USER_TEXT}"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    # Azure-only fields survive as extras on the SDK models.
    extra = completion.model_dump()
    prompt_filters = extra["prompt_filter_results"][0]["content_filter_results"]
    assert prompt_filters["jailbreak"] == {"filtered": False, "detected": False}
    assert extra["choices"][0]["content_filter_results"]["hate"] == {"filtered": False, "severity": "safe"}

    [recorded] = emulator.journal
    assert recorded.method == "POST"
    assert recorded.path == "/openai/deployments/gpt-4o/chat/completions"
    assert recorded.query == {"api-version": ["2025-04-01-preview"]}
    assert recorded.headers["api-key"] == API_KEY
    assert recorded.json == {"model": "gpt-4o", "messages": MESSAGES}
    assert recorded.form is None


async def test_chat_completion_sync_client(emulator: RunningEmulator) -> None:
    def call() -> str | None:
        with AzureOpenAI(azure_endpoint=emulator.url, api_key=API_KEY, api_version=API_VERSION) as sync_client:
            completion = sync_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=2)
            assert completion.choices[0].finish_reason == "length"  # cut to max_tokens
            assert completion.model == "gpt-4o-mini-2024-07-18"
            return completion.choices[0].message.content

    # The sync client blocks, so it runs in a thread while this loop serves it.
    assert await asyncio.to_thread(call) == "Echo: What"


async def test_chat_stream_matches_azure_shape_and_pacing(client: AsyncAzureOpenAI) -> None:
    interval_ms = 60
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-emulator-chunk-interval-ms": str(interval_ms), "x-emulator-chunks": "4"},
    )
    chunks, arrivals = [], []
    async for chunk in stream:
        chunks.append(chunk)
        arrivals.append(time.monotonic())

    first, *content, final, usage = chunks
    # Azure's first event: no choices, blank identity, the prompt's filter results.
    assert first.choices == [] and first.id == "" and first.model == "" and first.created == 0
    assert first.model_dump()["prompt_filter_results"][0]["prompt_index"] == 0
    assert len(content) == 4
    assert content[0].choices[0].delta.role == "assistant"
    for chunk in content:
        assert chunk.model_dump()["choices"][0]["content_filter_results"]["violence"]["severity"] == "safe"
    assert "".join(c.choices[0].delta.content or "" for c in content) == f"Echo: {USER_TEXT}"
    assert final.choices[0].finish_reason == "stop" and final.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens > 0
    assert {c.id for c in chunks[1:]} == {content[0].id}
    # Chunks arrive spaced out, not in one burst at the end.
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert min(gaps) >= interval_ms / 1000 * 0.7
    assert arrivals[-1] - arrivals[0] >= interval_ms / 1000 * (len(chunks) - 1) * 0.8


async def test_streamed_text_equals_plain_text(client: AsyncAzureOpenAI) -> None:
    plain = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert streamed == plain.choices[0].message.content


async def test_completions_plain_and_stream(client: AsyncAzureOpenAI) -> None:
    completion = await client.completions.create(model="gpt-35-turbo-instruct", prompt="Say hi")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Echo: Say hi"
    assert completion.id.startswith("cmpl-")

    stream = await client.completions.create(model="gpt-35-turbo-instruct", prompt="Say hi", stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices == [] and chunks[0].id == ""
    assert "".join(c.choices[0].text for c in chunks[1:]) == "Echo: Say hi"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_chat_model_cannot_do_completions(client: AsyncAzureOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.completions.create(model="gpt-4o", prompt="hi")
    assert caught.value.body["code"] == "OperationNotSupported"  # type: ignore[index]


async def test_embeddings_float_and_default_base64(client: AsyncAzureOpenAI, emulator: RunningEmulator) -> None:
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 1536
    assert abs(sum(x * x for x in floats.data[0].embedding) - 1.0) < 1e-3

    # Without encoding_format the SDK asks for base64 and decodes it back to floats.
    decoded = await client.embeddings.create(model="text-embedding-3-small", input="alpha", dimensions=256)
    assert emulator.journal[-1].json["encoding_format"] == "base64"  # type: ignore[index]
    as_floats = await client.embeddings.create(
        model="text-embedding-3-small", input="alpha", dimensions=256, encoding_format="float"
    )
    assert decoded.data[0].embedding == as_floats.data[0].embedding  # float32-exact either way
    assert len(decoded.data[0].embedding) == 256

    raw = await client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3]], encoding_format="base64")
    blob = base64.b64decode(raw.data[0].embedding)  # type: ignore[arg-type]
    assert len(struct.unpack(f"<{len(blob) // 4}f", blob)) == 1536


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK deprecates translations
async def test_audio_transcription_multipart(client: AsyncAzureOpenAI, emulator: RunningEmulator) -> None:
    audio = wav_bytes(seconds=1.5)
    result = await client.audio.transcriptions.create(model="whisper", file=("hello.wav", audio, "audio/wav"))
    assert result.text == f"Emulated transcription of hello.wav ({len(audio)} bytes)."

    verbose = await client.audio.transcriptions.create(
        model="whisper", file=("hello.wav", audio, "audio/wav"), response_format="verbose_json"
    )
    assert verbose.duration == pytest.approx(1.5)
    assert verbose.segments and verbose.segments[0].end == pytest.approx(1.5)

    srt = await client.audio.translations.create(model="whisper", file=("hello.wav", audio), response_format="srt")
    assert "00:00:00,000 --> 00:00:01,500" in srt

    recorded = emulator.journal[0]
    assert recorded.path == "/openai/deployments/whisper/audio/transcriptions"
    assert recorded.headers["content-type"].startswith("multipart/form-data")
    assert recorded.json is None
    # The SDK repeats the deployment as a `model` form field.
    assert recorded.form == {
        "model": "whisper",
        "file": {"filename": "hello.wav", "size": len(audio), "content_type": "audio/wav"},
    }


async def test_speech_returns_audio(client: AsyncAzureOpenAI) -> None:
    mp3 = await client.audio.speech.with_raw_response.create(model="tts", voice="alloy", input="Hello there")
    assert mp3.headers["content-type"] == "audio/mpeg"
    assert mp3.content[:2] == b"\xff\xfb"

    wav = await client.audio.speech.create(model="tts", voice="alloy", input="Hello", response_format="wav")
    assert wav.content[:4] == b"RIFF"


async def test_image_generation_url_and_b64(
    client: AsyncAzureOpenAI, emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    dalle = await client.images.generate(model="dall-e-3", prompt="a red fox")
    url = dalle.data[0].url  # type: ignore[index]
    assert url is not None and url.startswith(emulator.url)
    assert dalle.data[0].revised_prompt  # type: ignore[index]
    # The URL is fetchable without credentials, like Azure's blob SAS URLs.
    image = await http.get(url)
    assert image.content.startswith(b"\x89PNG")

    gpt_image = await client.images.generate(model="gpt-image-1", prompt="a red fox")
    png = base64.b64decode(gpt_image.data[0].b64_json)  # type: ignore[index, arg-type]
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert gpt_image.usage is not None

    edited = await client.images.edit(model="gpt-image-1", prompt="add a hat", image=("fox.png", png, "image/png"))
    assert base64.b64decode(edited.data[0].b64_json).startswith(b"\x89PNG")  # type: ignore[index, arg-type]
    assert emulator.journal[-1].form["image"]["filename"] == "fox.png"  # type: ignore[index]


async def test_responses_plain_retrieve_and_delete(client: AsyncAzureOpenAI, emulator: RunningEmulator) -> None:
    response = await client.responses.create(model="gpt-4o", input="Tell me a joke")
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Echo: Tell me a joke"
    assert response.usage is not None and response.usage.output_tokens > 0
    assert emulator.journal[0].path == "/openai/responses"

    fetched = await client.responses.retrieve(response.id)
    assert fetched.output_text == response.output_text
    items = await client.responses.input_items.list(response.id)
    assert [item.content[0].text for item in items.data] == ["Tell me a joke"]  # type: ignore[union-attr]
    await client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)


async def test_responses_stream_events(client: AsyncAzureOpenAI) -> None:
    stream = await client.responses.create(model="gpt-4o", input="Stream please", stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == "Echo: Stream please"
    assert events[-1].response.output_text == deltas  # type: ignore[union-attr]


async def test_responses_stream_helper_accumulates(client: AsyncAzureOpenAI) -> None:
    async with client.responses.stream(model="gpt-4o", input="Helper") as stream:
        async for _event in stream:
            pass
        final = await stream.get_final_response()
    assert final.output_text == "Echo: Helper"


async def test_files_and_batches(client: AsyncAzureOpenAI) -> None:
    line = (
        b'{"custom_id": "task-1", "method": "POST", "url": "/chat/completions", '
        b'"body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "batched"}]}}\n'
    )
    uploaded = await client.files.create(file=("input.jsonl", line), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(line) and uploaded.status == "processed"
    listed = [f.id async for f in client.files.list()]
    assert listed == [uploaded.id]
    assert (await client.files.content(uploaded.id)).content == line

    batch_args = {"input_file_id": uploaded.id, "endpoint": "/chat/completions", "completion_window": "24h"}
    batch = await client.batches.create(**batch_args)  # type: ignore[arg-type]
    assert batch.status == "validating"
    done = await client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 1
    output = (await client.files.content(done.output_file_id)).text  # type: ignore[arg-type]
    assert '"custom_id":"task-1"' in output and "Echo: batched" in output
    assert [b.id async for b in client.batches.list()] == [batch.id]

    other = await client.batches.create(**batch_args)  # type: ignore[arg-type]
    assert (await client.batches.cancel(other.id)).status == "cancelling"
    assert (await client.batches.retrieve(other.id)).status == "cancelled"

    await client.files.delete(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)


async def test_rate_limit_error_through_sdk(client: AsyncAzureOpenAI, emulator: RunningEmulator) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers={"x-emulator-status": "429", "x-emulator-retry-after": "3"}
        )
    assert caught.value.response.headers["retry-after"] == "3"
    assert "Please retry after 3 seconds" in caught.value.message


async def test_sdk_retries_injected_errors_by_default(emulator: RunningEmulator) -> None:
    # max_retries=1 and a zero Retry-After: the SDK retries once after its own short backoff.
    faults = {"x-emulator-status": "503", "x-emulator-retry-after": "0"}
    async with AsyncAzureOpenAI(
        azure_endpoint=emulator.url, api_key=API_KEY, api_version=API_VERSION, max_retries=1
    ) as retrying:
        with pytest.raises(openai.InternalServerError):
            await retrying.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers=faults)
    assert [r.headers["x-stainless-retry-count"] for r in emulator.journal] == ["0", "1"]


async def test_bearer_token_auth() -> None:
    async with await start_emulator(EmulatorSettings(bearer_tokens=("entra-token",))) as emu:
        for token, ok in (("entra-token", True), ("not-accepted", False)):
            async with AsyncAzureOpenAI(
                azure_endpoint=emu.url, azure_ad_token=token, api_version=API_VERSION, max_retries=0
            ) as entra:
                if ok:
                    await entra.chat.completions.create(model="gpt-4o", messages=MESSAGES)
                else:
                    with pytest.raises(openai.AuthenticationError) as caught:
                        await entra.chat.completions.create(model="gpt-4o", messages=MESSAGES)
                    assert caught.value.body["code"] == "401"  # type: ignore[index]
        assert [r.headers["authorization"] for r in emu.journal] == ["Bearer entra-token", "Bearer not-accepted"]
        assert "api-key" not in emu.journal[0].headers
