"""The default deployments answer OpenAI's own model names, each on its own endpoints only.

Without a model map the gateway passes a client's model name through as the deployment name,
so `whisper-1` must reach a deployment named `whisper-1`. The names are spelled out here, not
read from DEFAULT_DEPLOYMENTS, so dropping one from the defaults fails a test.
"""

from __future__ import annotations

import base64

import openai
import pytest
from openai import AsyncAzureOpenAI

from extproc.emulator import RunningEmulator
from extproc.emulator.model_capabilities import Capability, model_info

from .conftest import wav_bytes

# OpenAI name -> the dated model name the body reports (Azure's model where Azure spells it differently).
CHAT_MODELS = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-4-turbo": "gpt-4-turbo-2024-04-09",
    "gpt-4": "gpt-4-0613",
    "gpt-3.5-turbo": "gpt-35-turbo-0125",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    "o1": "o1-2024-12-17",
    "o3": "o3-2025-04-16",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
}
COMPLETION_MODELS = {
    "gpt-3.5-turbo-instruct": "gpt-35-turbo-instruct-0914",
    "davinci-002": "davinci-002",
    "babbage-002": "babbage-002",
}
EMBEDDING_MODELS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
TRANSCRIPTION_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
IMAGE_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1")

MESSAGES = [{"role": "user", "content": "Name a colour"}]


@pytest.mark.parametrize(("model", "reported"), CHAT_MODELS.items())
async def test_chat_models_answer_chat_and_responses(
    client: AsyncAzureOpenAI, emulator: RunningEmulator, model: str, reported: str
) -> None:
    completion = await client.chat.completions.create(model=model, messages=MESSAGES)
    assert completion.choices[0].message.content == "Echo: Name a colour"
    assert completion.model == reported
    assert emulator.journal[-1].path == f"/openai/deployments/{model}/chat/completions"

    response = await client.responses.create(model=model, input="Name a shape")
    assert response.output_text == "Echo: Name a shape"
    assert response.model == reported


@pytest.mark.parametrize(("model", "reported"), COMPLETION_MODELS.items())
async def test_completion_models_answer_completions(client: AsyncAzureOpenAI, model: str, reported: str) -> None:
    completion = await client.completions.create(model=model, prompt="Say hi")
    assert completion.choices[0].text == "Echo: Say hi"
    assert completion.model == reported


@pytest.mark.parametrize(("model", "dimensions"), EMBEDDING_MODELS.items())
async def test_embedding_models_answer_embeddings(client: AsyncAzureOpenAI, model: str, dimensions: int) -> None:
    result = await client.embeddings.create(model=model, input="alpha", encoding_format="float")
    assert len(result.data[0].embedding) == dimensions


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK deprecates translations
@pytest.mark.parametrize("model", TRANSCRIPTION_MODELS)
async def test_transcription_models_answer_transcriptions_and_translations(
    client: AsyncAzureOpenAI, emulator: RunningEmulator, model: str
) -> None:
    audio = wav_bytes()
    transcript = await client.audio.transcriptions.create(model=model, file=("a.wav", audio, "audio/wav"))
    assert transcript.text == f"Emulated transcription of a.wav ({len(audio)} bytes)."
    assert emulator.journal[-1].path == f"/openai/deployments/{model}/audio/transcriptions"
    translation = await client.audio.translations.create(model=model, file=("a.wav", audio, "audio/wav"))
    assert translation.text == f"Emulated translation of a.wav ({len(audio)} bytes)."


@pytest.mark.parametrize("model", SPEECH_MODELS)
async def test_speech_models_answer_speech(client: AsyncAzureOpenAI, model: str) -> None:
    speech = await client.audio.speech.create(model=model, voice="alloy", input="Hello", response_format="wav")
    assert speech.content[:4] == b"RIFF"


@pytest.mark.parametrize("model", IMAGE_MODELS)
async def test_image_models_answer_generations(client: AsyncAzureOpenAI, model: str) -> None:
    image = await client.images.generate(model=model, prompt="a red fox", response_format="b64_json")
    assert base64.b64decode(image.data[0].b64_json or "").startswith(b"\x89PNG")  # type: ignore[index]


async def _operation_error(client: AsyncAzureOpenAI, operation: str, model: str) -> dict[str, object]:
    with pytest.raises(openai.BadRequestError) as caught:
        if operation == "chat":
            await client.chat.completions.create(model=model, messages=MESSAGES)
        elif operation == "completions":
            await client.completions.create(model=model, prompt="hi")
        elif operation == "embeddings":
            await client.embeddings.create(model=model, input="hi")
        else:
            await client.audio.speech.create(model=model, voice="alloy", input="hi")
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("operation", "name", "reference", "model"),
    [
        # OpenAI-named deployment, an Azure-named one that already got the error, the model the error names.
        ("chat", "tts-1", "tts", "tts"),
        ("chat", "whisper-1", "whisper", "whisper"),
        ("chat", "gpt-3.5-turbo-instruct", "gpt-35-turbo-instruct", "gpt-35-turbo-instruct"),
        ("completions", "gpt-3.5-turbo", "gpt-4o", "gpt-35-turbo"),
        ("embeddings", "gpt-4.1", "gpt-4o", "gpt-4.1"),
        ("speech", "dall-e-2", "dall-e-3", "dall-e-2"),
        ("chat", "text-embedding-ada-002", "text-embedding-3-small", "text-embedding-ada-002"),
    ],
)
async def test_mismatched_openai_names_get_operation_not_supported(
    client: AsyncAzureOpenAI, operation: str, name: str, reference: str, model: str
) -> None:
    error = await _operation_error(client, operation, name)
    before = await _operation_error(client, operation, reference)
    assert before["code"] == "OperationNotSupported"
    assert error == {**before, "message": str(before["message"]).replace(f"model, {reference}.", f"model, {model}.")}


_EXPECTED_CAPABILITY = {
    **{model: Capability.CHAT for model in CHAT_MODELS},
    **{model: Capability.COMPLETION for model in COMPLETION_MODELS},
    **{model: Capability.EMBEDDINGS for model in EMBEDDING_MODELS},
    **{model: Capability.TRANSCRIPTION for model in TRANSCRIPTION_MODELS},
    **{model: Capability.SPEECH for model in SPEECH_MODELS},
    **{model: Capability.IMAGES for model in IMAGE_MODELS},
}


@pytest.mark.parametrize(("model", "capability"), _EXPECTED_CAPABILITY.items())
def test_catalogue_knows_openai_spellings(model: str, capability: Capability) -> None:
    # A deployment may run a model under its OpenAI name (`--deployment x=gpt-3.5-turbo-instruct`).
    capabilities = model_info(model).capabilities
    expected = {capability, Capability.RESPONSES} if capability is Capability.CHAT else {capability}
    assert capabilities == expected
