"""Fixtures: a live emulator on a free port, and clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from openai import AsyncAzureOpenAI

from extproc.emulator import EmulatorSettings, RunningEmulator, start_emulator
from extproc.emulator.media import wav

API_KEY = "emulator-key"
API_VERSION = "2024-10-21"
PREVIEW_API_VERSION = "2025-04-01-preview"


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    emu = await start_emulator(EmulatorSettings())
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def client(emulator: RunningEmulator) -> AsyncIterator[AsyncAzureOpenAI]:
    async with AsyncAzureOpenAI(
        azure_endpoint=emulator.url, api_key=API_KEY, api_version=PREVIEW_API_VERSION, max_retries=0
    ) as azure:
        yield azure


@pytest.fixture
async def http(emulator: RunningEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url, timeout=10) as raw:
        yield raw


def wav_bytes(seconds: float = 0.5) -> bytes:
    """Silence in a WAV container (the stdlib `wave` module writes it)."""
    return wav(seconds)
