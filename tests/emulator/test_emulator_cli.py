"""`python -m extproc.emulator` runs in the foreground and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import httpx

from extproc.emulator.cli import _parser, settings_from_args


async def test_cli_serves_until_sigterm() -> None:
    argv = ["--port", "0", "--api-key", "cli-key", "--deployment", "chat=gpt-4o-mini"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extproc.emulator", *argv, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        line = (await asyncio.wait_for(process.stderr.readline(), timeout=15)).decode()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        async with httpx.AsyncClient(base_url=match.group(1)) as http:
            response = await http.post(
                "/openai/deployments/chat/chat/completions",
                params={"api-version": "2024-06-01"},
                headers={"api-key": "cli-key"},
                json={"messages": [{"role": "user", "content": "cli"}]},
            )
        assert response.json()["model"] == "gpt-4o-mini-2024-07-18"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_cli_arguments_map_to_settings() -> None:
    argv = ["--api-key", "a", "--api-key", "b", "--deployment", "x=gpt-4o", "--chunk-interval-ms", "25"]
    args = _parser().parse_args(argv)
    settings = settings_from_args(args)
    assert settings.api_keys == ("a", "b")
    assert dict(settings.deployments) == {"x": "gpt-4o"}
    assert settings.default_chunk_interval_s == 0.025
    assert settings.ssl_context is None


def test_added_deployments_keep_the_default_set() -> None:
    from extproc.emulator import DEFAULT_DEPLOYMENTS

    settings = settings_from_args(_parser().parse_args(["--add-deployment", "custom=gpt-4o"]))
    assert settings.deployments == {**DEFAULT_DEPLOYMENTS, "custom": "gpt-4o"}
    settings = settings_from_args(_parser().parse_args(["--deployment", "x=gpt-4o", "--add-deployment", "y=tts"]))
    assert dict(settings.deployments) == {"x": "gpt-4o", "y": "tts"}
