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

# Prefix -> (capabilities, version suffix). The first matching prefix wins, so
# more specific prefixes come first.
_FAMILIES: tuple[tuple[str, frozenset[Capability], str], ...] = (
    ("gpt-35-turbo-instruct", frozenset({Capability.COMPLETION}), "-0914"),
    ("davinci-002", frozenset({Capability.COMPLETION}), ""),
    ("babbage-002", frozenset({Capability.COMPLETION}), ""),
    ("gpt-4o-mini-transcribe", frozenset({Capability.TRANSCRIPTION}), ""),
    ("gpt-4o-transcribe", frozenset({Capability.TRANSCRIPTION}), ""),
    ("gpt-4o-mini-tts", frozenset({Capability.SPEECH}), ""),
    ("gpt-4o-mini", _CHAT, "-2024-07-18"),
    ("gpt-4o", _CHAT, "-2024-08-06"),
    ("gpt-4.1", _CHAT, ""),
    ("gpt-4", _CHAT, ""),
    ("gpt-5", _CHAT, ""),
    ("gpt-35-turbo", _CHAT, "-0125"),
    ("o1", _CHAT, ""),
    ("o3", _CHAT, ""),
    ("o4", _CHAT, ""),
    ("text-embedding-", frozenset({Capability.EMBEDDINGS}), ""),
    ("whisper", frozenset({Capability.TRANSCRIPTION}), ""),
    ("tts", frozenset({Capability.SPEECH}), ""),
    ("dall-e", frozenset({Capability.IMAGES}), ""),
    ("gpt-image", frozenset({Capability.IMAGES}), ""),
)

_EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072}


def model_info(model: str) -> ModelInfo:
    """Look a model up; unknown models may do anything, so custom setups keep working."""
    for prefix, capabilities, version in _FAMILIES:
        if model.startswith(prefix):
            # Only undated names get a version appended ("gpt-4o" -> "gpt-4o-2024-08-06").
            reported = model + version if model == prefix else model
            return ModelInfo(
                capabilities=capabilities,
                reported_name=reported,
                embedding_dimensions=_EMBEDDING_DIMENSIONS.get(model, 1536),
            )
    return ModelInfo(capabilities=ALL_CAPABILITIES, reported_name=model)
