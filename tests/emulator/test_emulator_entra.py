"""The emulator's Entra ID mode, as Azure OpenAI with local auth disabled: a bearer token is an RS256 JWT from
the key the test holds, for https://cognitiveservices.azure.com, within its lifetime; anything else is Azure's
401 for tokens, and an api-key is refused with its 403. The real AzureOpenAI client with a token provider."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from openai import AsyncAzureOpenAI

from extproc.emulator import EmulatorSettings, RunningEmulator, start_emulator
from extproc.emulator.errors import TOKEN_UNAUTHORIZED_MESSAGE

from .conftest import API_VERSION, cli_emulator

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
AUDIENCE = "https://cognitiveservices.azure.com"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def token(key: rsa.RSAPrivateKey = KEY, audience: str = AUDIENCE, expires_in: int = 3600, **claims: object) -> str:
    now = int(time.time())
    return jwt.encode({"aud": audience, "iat": now, "exp": now + expires_in, **claims}, key, algorithm="RS256")


@pytest.fixture
async def entra_emulator() -> AsyncIterator[RunningEmulator]:
    emu = await start_emulator(EmulatorSettings(entra_public_key_pem=PUBLIC_PEM, local_auth_disabled=True))
    try:
        yield emu
    finally:
        await emu.stop()


async def test_a_valid_token_is_served(entra_emulator: RunningEmulator) -> None:
    async with AsyncAzureOpenAI(azure_endpoint=entra_emulator.url, api_version=API_VERSION, max_retries=0,
                                azure_ad_token_provider=lambda: token()) as client:
        answer = await client.chat.completions.create(model="gpt-4o", **CHAT)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    assert entra_emulator.journal[-1].headers["authorization"].startswith("Bearer ey")


@pytest.mark.parametrize("bad", [
    token(key=OTHER_KEY), token(audience="https://management.azure.com"), token(expires_in=-60),
    "not-a-jwt", jwt.encode({"aud": AUDIENCE}, KEY, algorithm="RS256"),  # no expiry
    jwt.encode({"aud": AUDIENCE, "exp": int(time.time()) + 60}, "a-shared-secret-of-thirty-two-bytes!", algorithm="HS256"),
])
async def test_a_token_azure_would_not_accept_gets_its_401(entra_emulator: RunningEmulator, bad: str) -> None:
    async with httpx.AsyncClient(base_url=entra_emulator.url) as http:
        response = await http.post("/openai/deployments/gpt-4o/chat/completions", params={"api-version": API_VERSION},
                                   headers={"Authorization": f"Bearer {bad}"}, json=CHAT)
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "401", "message": TOKEN_UNAUTHORIZED_MESSAGE}}


async def test_an_api_key_is_refused_when_local_auth_is_disabled(entra_emulator: RunningEmulator) -> None:
    async with httpx.AsyncClient(base_url=entra_emulator.url) as http:
        response = await http.post("/openai/deployments/gpt-4o/chat/completions", params={"api-version": API_VERSION},
                                   headers={"api-key": "emulator-key", "Authorization": f"Bearer {token()}"}, json=CHAT)
    assert response.status_code == 403 and response.json()["error"]["code"] == "AuthenticationTypeDisabled"


async def test_the_command_line_takes_the_public_key(tmp_path) -> None:  # noqa: ANN001
    pem = tmp_path / "entra.pub"
    pem.write_bytes(PUBLIC_PEM)
    async with cli_emulator("--entra-public-key", str(pem), "--disable-local-auth") as url:
        async with httpx.AsyncClient(base_url=url) as http:
            path = "/openai/deployments/gpt-4o/chat/completions"
            good = await http.post(path, params={"api-version": API_VERSION}, json=CHAT,
                                   headers={"Authorization": f"Bearer {token()}"})
            bad = await http.post(path, params={"api-version": API_VERSION}, json=CHAT,
                                  headers={"Authorization": f"Bearer {token(key=OTHER_KEY)}"})
    assert good.status_code == 200 and bad.status_code == 401
