"""In-memory state of one emulator instance (nothing is shared between instances)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .journal import RecordedRequest
from .settings import EmulatorSettings


@dataclass
class StoredFile:
    info: dict[str, Any]  # the `file` object returned by the API
    data: bytes


@dataclass
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]


@dataclass
class EmulatorState:
    settings: EmulatorSettings
    base_url: str = ""  # set once the server listens; used for generated image URLs
    journal: list[RecordedRequest] = field(default_factory=list)
    files: dict[str, StoredFile] = field(default_factory=dict)
    responses: dict[str, StoredResponse] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)  # served at /_emulator/images/{id}.png


STATE = web.AppKey("emulator_state", EmulatorState)
