"""Throttling rules (extproc/emulator/throttling.py): a resource that answers 429 (or 5xx) to whoever
calls it, set on the command line or over /_emulator/throttle, as failover tests and demos need."""

from __future__ import annotations


import httpx
import openai
import pytest
from openai import AsyncAzureOpenAI

from extproc.emulator import EmulatorSettings, start_emulator
from extproc.emulator.throttling import ThrottleSpec

from .conftest import API_KEY, PREVIEW_API_VERSION, cli_emulator

MESSAGES = [{"role": "user", "content": "hi"}]


async def _chat(client: AsyncAzureOpenAI, deployment: str = "gpt-4o") -> int:
    """The status the SDK ended with (it does not retry: max_retries=0)."""
    try:
        await client.chat.completions.create(model=deployment, messages=MESSAGES)  # type: ignore[arg-type]
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


async def test_a_rule_from_the_settings_throttles_one_deployment_with_azure_headers() -> None:
    settings = EmulatorSettings(throttles=(ThrottleSpec(deployment="gpt-4o", retry_after=30),))
    emulator = await start_emulator(settings)
    try:
        async with AsyncAzureOpenAI(azure_endpoint=emulator.url, api_key=API_KEY,
                                    api_version=PREVIEW_API_VERSION, max_retries=0) as client:
            with pytest.raises(openai.RateLimitError) as raised:
                await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
            assert await _chat(client, "gpt-4o-mini") == 200  # another deployment is served
        response = raised.value.response
        assert response.headers["retry-after"] == "30"
        assert response.headers["retry-after-ms"] == "30000"
        assert raised.value.body["code"] == "429"  # type: ignore[index]
        assert "retry after 30 seconds" in raised.value.body["message"]  # type: ignore[index]
        async with httpx.AsyncClient(base_url=emulator.url) as http:
            [rule] = (await http.get("/_emulator/throttle")).json()
        assert (rule["deployment"], rule["matched"], rule["throttled"], rule["remaining"]) == ("gpt-4o", 1, 1, None)
    finally:
        await emulator.stop()


async def test_count_then_served_and_percent_evenly_spread(client: AsyncAzureOpenAI, http: httpx.AsyncClient) -> None:
    added = await http.post("/_emulator/throttle", json={"count": 2, "status": 503})
    assert added.status_code == 201
    assert added.json()["remaining"] == 2
    assert [await _chat(client) for _ in range(3)] == [503, 503, 200]
    listed = (await http.get("/_emulator/throttle")).json()
    assert listed[0]["remaining"] == 0 and listed[0]["throttled"] == 2

    assert (await http.delete("/_emulator/throttle")).status_code == 204
    await http.post("/_emulator/throttle", json={"deployment": "gpt-4o", "percent": 25})
    statuses = [await _chat(client) for _ in range(40)]
    assert statuses.count(429) == 10
    assert statuses[:4] == [200, 200, 200, 429]


async def test_the_first_matching_rule_decides(client: AsyncAzureOpenAI, http: httpx.AsyncClient) -> None:
    await http.post("/_emulator/throttle", json={"deployment": "gpt-4o", "percent": 50})
    await http.post("/_emulator/throttle", json={"status": 500})  # everything else
    assert [await _chat(client) for _ in range(4)] == [200, 429, 200, 429]
    assert await _chat(client, "gpt-4o-mini") == 500


async def test_requests_azure_refuses_first_are_not_counted(client: AsyncAzureOpenAI, http: httpx.AsyncClient) -> None:
    await http.post("/_emulator/throttle", json={"count": 1})
    assert await _chat(client, "no-such-deployment") == 404  # Azure's own check comes first
    async with httpx.AsyncClient(base_url=str(client.base_url)) as raw:  # no api-key: a 401 first
        assert (await raw.post("chat/completions", params={"api-version": PREVIEW_API_VERSION}, json={})).status_code == 401
    assert await _chat(client) == 429
    assert await _chat(client) == 200


@pytest.mark.parametrize("body", [
    {"status": 200}, {"percent": 0}, {"count": 0}, {"retry_after": -1}, {"unknown": 1}, [1], "x",
])
async def test_a_bad_rule_is_refused_with_the_reason(http: httpx.AsyncClient, body: object) -> None:
    response = await http.post("/_emulator/throttle", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_throttle"
    assert (await http.get("/_emulator/throttle")).json() == []


@pytest.mark.parametrize("text", ["status=200", "percent=abc", "count", "=3", "deployment=a,unknown=1"])
def test_a_bad_spec_on_the_command_line_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="throttle rule"):
        ThrottleSpec.parse(text)


async def test_cli_throttle_option() -> None:
    async with cli_emulator("--throttle", "deployment=gpt-4o,retry_after=7,count=1") as url:
        async with AsyncAzureOpenAI(azure_endpoint=url, api_key=API_KEY,
                                    api_version=PREVIEW_API_VERSION, max_retries=0) as client:
            with pytest.raises(openai.RateLimitError) as raised:
                await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
            assert raised.value.response.headers["retry-after"] == "7"
            assert await _chat(client) == 200  # count=1: spent
