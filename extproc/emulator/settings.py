"""Configuration of one emulated Azure OpenAI resource."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .throttling import ThrottleSpec

DEFAULT_API_KEY = "emulator-key"

MIB = 1024 * 1024

# Deployment name -> model. Deployments named after their models, the way most Azure
# resources are set up, under both Azure's names and the names OpenAI clients send (the
# gateway passes an unmapped model name through as the deployment name). Where Azure
# spells a model differently, the OpenAI-named deployment runs Azure's model, as it
# would on a real resource ("whisper-1" runs "whisper").
DEFAULT_DEPLOYMENTS: Mapping[str, str] = MappingProxyType(
    {
        # chat/completions and responses
        "gpt-4o": "gpt-4o",
        "gpt-4o-mini": "gpt-4o-mini",
        "gpt-4.1": "gpt-4.1",
        "gpt-4.1-mini": "gpt-4.1-mini",
        "gpt-4.1-nano": "gpt-4.1-nano",
        "gpt-4-turbo": "gpt-4-turbo",
        "gpt-4": "gpt-4",
        "gpt-3.5-turbo": "gpt-35-turbo",
        "gpt-5": "gpt-5",
        "gpt-5-mini": "gpt-5-mini",
        "gpt-5-nano": "gpt-5-nano",
        "o1": "o1",
        "o3": "o3",
        "o3-mini": "o3-mini",
        "o4-mini": "o4-mini",
        # completions
        "gpt-35-turbo-instruct": "gpt-35-turbo-instruct",
        "gpt-3.5-turbo-instruct": "gpt-35-turbo-instruct",
        "davinci-002": "davinci-002",
        "babbage-002": "babbage-002",
        # embeddings
        "text-embedding-3-small": "text-embedding-3-small",
        "text-embedding-3-large": "text-embedding-3-large",
        "text-embedding-ada-002": "text-embedding-ada-002",
        # audio/transcriptions and audio/translations
        "whisper": "whisper",
        "whisper-1": "whisper",
        "gpt-4o-transcribe": "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe": "gpt-4o-mini-transcribe",
        # audio/speech
        "tts": "tts",
        "tts-1": "tts",
        "tts-1-hd": "tts-hd",
        "gpt-4o-mini-tts": "gpt-4o-mini-tts",
        # images/generations and images/edits
        "dall-e-2": "dall-e-2",
        "dall-e-3": "dall-e-3",
        "gpt-image-1": "gpt-image-1",
    }
)

# GA and preview data-plane versions Azure OpenAI accepts (non-v1 routes).
DEFAULT_API_VERSIONS: frozenset[str] = frozenset(
    {
        "2022-12-01",
        "2023-05-15",
        "2023-06-01-preview",
        "2023-07-01-preview",
        "2023-08-01-preview",
        "2023-09-01-preview",
        "2023-10-01-preview",
        "2023-12-01-preview",
        "2024-02-01",
        "2024-02-15-preview",
        "2024-03-01-preview",
        "2024-04-01-preview",
        "2024-05-01-preview",
        "2024-06-01",
        "2024-07-01-preview",
        "2024-08-01-preview",
        "2024-09-01-preview",
        "2024-10-01-preview",
        "2024-10-21",
        "2024-12-01-preview",
        "2025-01-01-preview",
        "2025-02-01-preview",
        "2025-03-01-preview",
        "2025-04-01-preview",
    }
)


@dataclass(frozen=True)
class EmulatorSettings:
    """Everything that differs between two emulated resources."""

    api_keys: tuple[str, ...] = (DEFAULT_API_KEY,)
    # Accepted `Authorization: Bearer` tokens, a stand-in for Entra ID tokens.
    bearer_tokens: tuple[str, ...] = ()
    # Entra ID mode: bearer tokens are JWTs signed (RS256) by the key this PEM public key belongs to, for the
    # audience https://cognitiveservices.azure.com, not expired; anything else gets Azure's 401 for tokens.
    entra_public_key_pem: bytes | None = None
    # Azure's disableLocalAuth: an `api-key` gets 403 (only Entra ID tokens are accepted).
    local_auth_disabled: bool = False
    # Deployment name -> underlying model name.
    deployments: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_DEPLOYMENTS))
    api_versions: frozenset[str] = DEFAULT_API_VERSIONS
    host: str = "127.0.0.1"
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    # Pause between streamed chunks unless a request asks for another one.
    default_chunk_interval_s: float = 0.0
    # Throttling rules in force from the start (throttling.py); more can be added at run time.
    throttles: tuple[ThrottleSpec, ...] = ()
    # Memory bounds, so a long run (or a hostile client) cannot grow the process without limit.
    # The journal keeps the newest `journal_max_requests` requests and about `journal_max_bytes`
    # of them (bodies, headers, form text); each body is kept up to `journal_max_body_bytes`
    # (`body_length` still gives its real size; a cut JSON body reads back as `json` None).
    journal_max_requests: int = 5_000
    journal_max_body_bytes: int = 4 * MIB
    journal_max_bytes: int = 64 * MIB
    # Files, batches, stored responses and generated images: each store keeps its newest
    # `store_max_items`; files and stored responses also at most `store_max_bytes` each
    # (the newest item is always kept). Older ones are forgotten, as if deleted.
    store_max_items: int = 1_000
    store_max_bytes: int = 128 * MIB
    # Serve OpenAI's own API instead of Azure's: `/v1/<op>` with the body's `model` naming a
    # deployment, `Authorization: Bearer <api key>` only, OpenAI's error bodies; `/openai/...` is 404.
    openai_api: bool = False
    # Parts read from one multipart body before it is refused with a 400 (aiohttp's own form limit).
    multipart_max_parts: int = 1_000

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the frozen object hashable-ish and safe to share.
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        object.__setattr__(self, "bearer_tokens", tuple(self.bearer_tokens))
        object.__setattr__(self, "throttles", tuple(self.throttles))
        object.__setattr__(self, "api_versions", frozenset(self.api_versions))
        object.__setattr__(self, "deployments", MappingProxyType(dict(self.deployments)))
        if not self.api_keys:
            raise ValueError("EmulatorSettings needs at least one api key")
        if self.default_chunk_interval_s < 0:
            raise ValueError("default_chunk_interval_s must not be negative")
        for name in ("journal_max_requests", "journal_max_body_bytes", "journal_max_bytes", "store_max_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("store_max_items", "multipart_max_parts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
