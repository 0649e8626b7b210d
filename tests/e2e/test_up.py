"""`python -m extproc up` with no Azure endpoint: the built-in emulator makes it work out of the box."""

from __future__ import annotations

from pathlib import Path

from openai import OpenAI

from .conftest import start_gateway, stop_gateway


def test_up_without_an_endpoint_uses_the_emulator(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, azure_url=None, ca_file=None)
    try:
        output = gateway.log.read_text()
        assert "using the built-in Azure OpenAI emulator" in output
        assert f"OPENAI_BASE_URL={gateway.http_url}/v1" in output
        client = OpenAI(base_url=gateway.http_url + "/v1", api_key="anything", max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "demo"}])
        assert reply.choices[0].message.content == "Echo: demo"
        assert client.embeddings.create(model="text-embedding-3-small", input="x").data[0].embedding
    finally:
        stop_gateway(gateway)
    assert gateway.process.returncode == 0  # SIGTERM stops every child cleanly
