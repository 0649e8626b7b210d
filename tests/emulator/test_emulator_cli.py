"""`python -m extproc.emulator` runs in the foreground and stops cleanly on SIGTERM."""

from __future__ import annotations


import httpx

from extproc.emulator.cli import _parser, settings_from_args

from .conftest import cli_emulator


async def test_cli_serves_until_sigterm() -> None:
    async with cli_emulator("--api-key", "cli-key", "--deployment", "chat=gpt-4o-mini") as url:
        async with httpx.AsyncClient(base_url=url) as http:
            response = await http.post(
                "/openai/deployments/chat/chat/completions",
                params={"api-version": "2024-06-01"},
                headers={"api-key": "cli-key"},
                json={"messages": [{"role": "user", "content": "cli"}]},
            )
        assert response.json()["model"] == "gpt-4o-mini-2024-07-18"


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
