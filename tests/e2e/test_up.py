"""`python -m extproc up` with no Azure endpoint: the built-in emulator makes it work out of the box."""

from __future__ import annotations

from pathlib import Path

from openai import OpenAI

from extproc.emulator.media import wav

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


def test_up_without_an_endpoint_answers_openais_model_names(tmp_path: Path) -> None:
    """The names the OpenAI docs use work out of the box, on each endpoint; /v1/models lists them."""
    gateway = start_gateway(tmp_path, azure_url=None, ca_file=None)
    try:
        client = OpenAI(base_url=gateway.http_url + "/v1", api_key="anything", max_retries=0)
        listed = {model.id for model in client.models.list()}
        assert {"whisper-1", "tts-1", "gpt-3.5-turbo-instruct", "gpt-4o-mini", "dall-e-3"} <= listed
        assert client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi").choices[0].text
        assert client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "x"}]).choices
        speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello")
        assert len(speech.content) > 100
        transcript = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(0.5), "audio/wav"))
        assert transcript.text
        assert client.embeddings.create(model="text-embedding-ada-002", input="x").data[0].embedding
        assert client.images.generate(model="dall-e-2", prompt="a cat", n=1).data
    finally:
        stop_gateway(gateway)


def test_up_without_an_endpoint_but_with_a_model_map_keeps_the_emulators_deployments(tmp_path: Path) -> None:
    """The mapped deployments are added to the emulator's; names outside the map still pass through."""
    gateway = start_gateway(tmp_path, azure_url=None, ca_file=None, models="{my-model: custom-deployment}")
    try:
        client = OpenAI(base_url=gateway.http_url + "/v1", api_key="anything", max_retries=0)
        assert [m.id for m in client.models.list()] == ["my-model"]
        assert client.chat.completions.create(model="my-model", messages=[{"role": "user", "content": "x"}]).choices
        assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]).choices
    finally:
        stop_gateway(gateway)
