"""The Azure key from a file: read at start, and again when the file changes (a Kubernetes Secret
volume is updated in place), with no restart; what reached the emulator is what counts."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path

import httpx
import pytest

from extproc.emulator import EmulatorSettings

from .conftest import API_VERSION, DEPLOYMENTS, EmulatorThread, start_gateway, stop_gateway

OLD_KEY, NEW_KEY = "key-before-rotation", "key-after-rotation"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def two_key_azure(upstream_pki):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(upstream_pki.server_cert, upstream_pki.server_key)
    emulator = EmulatorThread(EmulatorSettings(api_keys=(OLD_KEY, NEW_KEY), deployments=DEPLOYMENTS, ssl_context=context))
    yield emulator
    emulator.stop()


def test_a_rotated_key_file_is_used_without_a_restart(tmp_path: Path, two_key_azure: EmulatorThread, upstream_pki) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text(OLD_KEY + "\n")
    gateway = start_gateway(tmp_path, two_key_azure.url, upstream_pki.ca_cert,
                            env={"AZURE_OPENAI_API_KEY": ""},  # no key in the environment: the file counts
                            azure=f"{{api_version: '{API_VERSION}', api_key_file: {secret / 'key'}}}")
    try:
        with httpx.Client(base_url=gateway.http_url, headers={"authorization": "Bearer client"}, timeout=10) as http:
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
            assert two_key_azure.last().headers["api-key"] == OLD_KEY
            # As a Secret volume does: the new file appears beside the old one and replaces it at once.
            (secret / "key.new").write_text(NEW_KEY + "\n")
            os.replace(secret / "key.new", secret / "key")
            deadline = time.monotonic() + 10
            while True:
                assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
                if two_key_azure.last().headers["api-key"] == NEW_KEY:
                    break
                assert time.monotonic() < deadline, "the new key was not used within 10 s"
                time.sleep(0.2)
            # A file that goes missing keeps the last key: requests go on.
            (secret / "key").unlink()
            time.sleep(2.5)
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
            assert two_key_azure.last().headers["api-key"] == NEW_KEY
    finally:
        stop_gateway(gateway)
    output = gateway.log.read_text()
    assert OLD_KEY not in output and NEW_KEY not in output
    assert "cannot read" in output  # the missing file was reported (its path, not a key)
