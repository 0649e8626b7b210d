"""Fixtures: a live emulator on a free port, and clients pointed at it."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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


@asynccontextmanager
async def cli_emulator(*argv: str) -> AsyncIterator[str]:
    """`python -m extproc.emulator ARGV` in a child process: its URL; on leaving, SIGTERM, and it must exit 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extproc.emulator", "--port", "0", *argv, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        line = (await asyncio.wait_for(process.stderr.readline(), timeout=15)).decode()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        yield match.group(1)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def wav_bytes(seconds: float = 0.5) -> bytes:
    """Silence in a WAV container (the stdlib `wave` module writes it)."""
    return wav(seconds)
