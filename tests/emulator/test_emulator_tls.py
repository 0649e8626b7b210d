"""Serving HTTPS with a caller-supplied SSLContext (a certificate from the project's development CA)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
from openai import AsyncAzureOpenAI, DefaultAsyncHttpxClient

from extproc.envoy_config.devtls import ensure_dev_certificates
from extproc.emulator import EmulatorSettings, start_emulator

from .conftest import API_KEY, API_VERSION


async def test_serves_tls(tmp_path: Path) -> None:
    certificates = ensure_dev_certificates(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certificates.server_cert, certificates.server_key)
    client_context = ssl.create_default_context(cafile=str(certificates.ca_cert))

    async with await start_emulator(EmulatorSettings(ssl_context=server_context)) as emu:
        assert emu.url == f"https://127.0.0.1:{emu.port}"
        async with httpx.AsyncClient(base_url=emu.url, verify=client_context) as http:
            response = await http.post(
                "/openai/deployments/gpt-4o/chat/completions",
                params={"api-version": API_VERSION},
                headers={"api-key": API_KEY},
                json={"messages": [{"role": "user", "content": "secure"}]},
            )
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "Echo: secure"

        # The SDK over TLS, streaming included.
        http_client = DefaultAsyncHttpxClient(verify=client_context)
        async with AsyncAzureOpenAI(
            azure_endpoint=emu.url, api_key=API_KEY, api_version=API_VERSION, http_client=http_client
        ) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "tls stream"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Echo: tls stream"
        assert len(emu.journal) == 2
