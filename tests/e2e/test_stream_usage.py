"""`usage.include_stream_usage` through the real Envoy, the ext_proc and the Azure emulator, with the real openai
SDK: a stream that did not ask for usage reaches Azure asking for it, and the client gets Azure's final usage
chunk (`choices: []`); bodies that need nothing arrive byte for byte as sent. (The core's cases:
tests/unit/test_stream_usage.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from openai import OpenAI

from .conftest import EmulatorThread, start_gateway, stop_gateway

MESSAGES = [{"role": "user", "content": "Count my streamed tokens"}]


def test_streams_ask_azure_for_their_usage(tmp_path: Path, azure: EmulatorThread, upstream_pki) -> None:
    gateway = start_gateway(tmp_path, azure.url, upstream_pki.ca_cert, usage="{include_stream_usage: true}")
    sent: list[bytes] = []  # the bodies the SDK sent, as it sent them
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(request.read())]})
    try:
        with OpenAI(base_url=gateway.http_url + "/v1", api_key="client", max_retries=0, http_client=http) as client:
            # Chat, without stream_options: the final chunk carries the usage, as Azure sends it.
            chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
                "Echo: Count my streamed tokens"
            final = chunks[-1]
            assert final.choices == [] and final.usage is not None and final.usage.total_tokens > 0
            assert all(chunk.usage is None for chunk in chunks[:-1])
            seen = azure.last()
            assert seen.path == "/openai/deployments/prod-chat/chat/completions"
            assert b"stream_options" not in sent[-1]
            assert seen.json == {**json.loads(sent[-1]), "stream_options": {"include_usage": True}}

            # Legacy completions, the same.
            chunks = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test",
                                                    stream=True))
            final = chunks[-1]
            assert final.choices == [] and final.usage is not None and final.usage.total_tokens > 0
            assert all(chunk.usage is None for chunk in chunks[:-1])
            seen = azure.last()
            assert seen.path == "/openai/deployments/prod-instruct/completions"
            assert seen.json == {**json.loads(sent[-1]), "stream_options": {"include_usage": True}}

            # A stream that said no: asked all the same (the gateway's operator counts tokens).
            chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
                                                         stream_options={"include_usage": False}))
            assert chunks[-1].choices == [] and chunks[-1].usage is not None
            assert azure.last().json["stream_options"] == {"include_usage": True}

        # Bodies that need nothing reach Azure byte for byte: not streamed, or already asking.
        for body in (b'{ "model" :"gpt-4o", "messages": [{"role": "user", "content": "hi \\u00e9"}],  "n":1 }',
                     b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,'
                     b'"stream_options":{ "include_usage" : true }}'):
            answer = httpx.post(gateway.http_url + "/v1/chat/completions", content=body,
                                headers={"content-type": "application/json", "authorization": "Bearer client"})
            assert answer.status_code == 200, answer.text
            assert azure.last().body == body
    finally:
        http.close()
        stop_gateway(gateway)
    assert gateway.process.returncode == 0, gateway.log.read_text()
