"""What the emulator knows about Azure OpenAI models: capabilities, versions, sizes."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Capability(enum.Enum):
    """The operation families Azure checks a deployment's model against.

    Values are the operation names Azure quotes in OperationNotSupported errors.
    """

    CHAT = "chatCompletion"
    COMPLETION = "completion"
    EMBEDDINGS = "embeddings"
    TRANSCRIPTION = "audioTranscription"  # also translations
    SPEECH = "audioSpeech"
    IMAGES = "imageGeneration"  # also image edits
    RESPONSES = "responses"


ALL_CAPABILITIES = frozenset(Capability)


@dataclass(frozen=True)
class ModelInfo:
    capabilities: frozenset[Capability]
    # The dated name Azure reports in response bodies (`model` field).
    reported_name: str
    embedding_dimensions: int = 1536


_CHAT = frozenset({Capability.CHAT, Capability.RESPONSES})

# Prefix -> capabilities. The first matching prefix wins, so more specific prefixes
# come first ("gpt-3.5-turbo-instruct" before "gpt-3.5-turbo", "gpt-4o-mini-tts" before
# "gpt-4o-mini"). Azure spells some models unlike OpenAI ("gpt-35-turbo", "whisper",
# "tts"); both spellings are known, so a deployment may name either.
_FAMILIES: tuple[tuple[str, frozenset[Capability]], ...] = (
    ("gpt-35-turbo-instruct", frozenset({Capability.COMPLETION})),
    ("gpt-3.5-turbo-instruct", frozenset({Capability.COMPLETION})),
    ("davinci-002", frozenset({Capability.COMPLETION})),
    ("babbage-002", frozenset({Capability.COMPLETION})),
    ("gpt-4o-mini-transcribe", frozenset({Capability.TRANSCRIPTION})),
    ("gpt-4o-transcribe", frozenset({Capability.TRANSCRIPTION})),
    ("gpt-4o-mini-tts", frozenset({Capability.SPEECH})),
    ("gpt-4o-mini", _CHAT),
    ("gpt-4o", _CHAT),
    ("gpt-4.1", _CHAT),
    ("gpt-4", _CHAT),  # also gpt-4-turbo
    ("gpt-5", _CHAT),
    ("gpt-35-turbo", _CHAT),
    ("gpt-3.5-turbo", _CHAT),
    ("o1", _CHAT),
    ("o3", _CHAT),
    ("o4", _CHAT),
    ("text-embedding-", frozenset({Capability.EMBEDDINGS})),
    ("whisper", frozenset({Capability.TRANSCRIPTION})),  # also whisper-1
    ("tts", frozenset({Capability.SPEECH})),  # also tts-hd, tts-1, tts-1-hd
    ("dall-e", frozenset({Capability.IMAGES})),
    ("gpt-image", frozenset({Capability.IMAGES})),
)

# Undated model name -> the version Azure appends when it reports the model in a body
# ("gpt-4o" -> "gpt-4o-2024-08-06"). Dated names, and models not listed, are reported as they are.
_VERSIONS = {
    "gpt-35-turbo-instruct": "-0914",
    "gpt-3.5-turbo-instruct": "-0914",
    "gpt-35-turbo": "-0125",
    "gpt-3.5-turbo": "-0125",
    "gpt-4o": "-2024-08-06",
    "gpt-4o-mini": "-2024-07-18",
    "gpt-4.1": "-2025-04-14",
    "gpt-4.1-mini": "-2025-04-14",
    "gpt-4.1-nano": "-2025-04-14",
    "gpt-4-turbo": "-2024-04-09",
    "gpt-4": "-0613",
    "gpt-5": "-2025-08-07",
    "gpt-5-mini": "-2025-08-07",
    "gpt-5-nano": "-2025-08-07",
    "o1": "-2024-12-17",
    "o3": "-2025-04-16",
    "o3-mini": "-2025-01-31",
    "o4-mini": "-2025-04-16",
}

_EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072}


def model_info(model: str) -> ModelInfo:
    """Look a model up; unknown models may do anything, so custom setups keep working."""
    reported = model + _VERSIONS.get(model, "")
    for prefix, capabilities in _FAMILIES:
        if model.startswith(prefix):
            return ModelInfo(
                capabilities=capabilities,
                reported_name=reported,
                embedding_dimensions=_EMBEDDING_DIMENSIONS.get(model, 1536),
            )
    return ModelInfo(capabilities=ALL_CAPABILITIES, reported_name=reported)
