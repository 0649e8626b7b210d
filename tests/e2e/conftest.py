"""End-to-end fixtures: the Azure emulator over TLS, and the gateway started with `python -m extproc up`
(the real Envoy binary + the ext_proc), each on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ssl

import pytest
import yaml

from extproc.envoy_config.devtls import ensure_dev_certificates
from extproc.emulator import EmulatorSettings, RecordedRequest, RunningEmulator, start_emulator
from extproc.runtime.processes import free_port

SERVER_KEY = "azure-server-key-e2e"
CLIENT_KEY = "client-credential-must-not-leak"
API_VERSION = "2024-10-21"
BODY_LIMIT = 2 * 1024 * 1024
# OpenAI model name -> the emulator's deployment (named unlike the model, so a mapping is visible).
MODEL_MAP = {
    "gpt-4o": "prod-chat",
    "gpt-3.5-turbo-instruct": "prod-instruct",
    "text-embedding-3-small": "prod-embed",
    "whisper-1": "prod-whisper",
    "tts-1": "prod-tts",
    "dall-e-3": "prod-image",
}
DEPLOYMENTS = {
    "prod-chat": "gpt-4o",
    "prod-instruct": "gpt-35-turbo-instruct",
    "prod-embed": "text-embedding-3-small",
    "prod-whisper": "whisper",
    "prod-tts": "tts",
    "prod-image": "dall-e-3",
}


class EmulatorThread:
    """The emulator on its own event loop, so sync and async SDK clients can both reach it."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.emulator: RunningEmulator = asyncio.run_coroutine_threadsafe(start_emulator(settings), self._loop).result(10)

    @property
    def url(self) -> str:
        return self.emulator.url

    def requests(self) -> list[RecordedRequest]:
        return list(self.emulator.journal)

    def last(self) -> RecordedRequest:
        return self.emulator.journal[-1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.emulator.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@dataclass
class Gateway:
    http_url: str
    https_url: str
    admin_url: str
    ca_file: Path
    log: Path
    process: subprocess.Popen[bytes]
    state_dir: Path
    metrics_url: str = ""  # the usage process's /metrics and status page (metrics.port)

    def pool_health(self) -> dict[str, str]:
        """Envoy's view of each pool member: {"pool-N/host:port": health flags}."""
        with urllib.request.urlopen(self.admin_url + "/clusters", timeout=5) as response:
            lines = response.read().decode().splitlines()
        return {f"{cluster}/{host}": flags for cluster, host, key, flags in
                (line.split("::", 3) for line in lines if line.startswith("pool-") and "::health_flags::" in line)}

    def reset_breaker(self) -> None:
        """Every member healthy again (`python -m extproc status --reset`), and Envoy told so."""
        from extproc.breaker.status import fetch_status

        fetch_status(self.state_dir / "run" / "breaker.sock", reset=True)
        deadline = time.monotonic() + 5
        while any(flags != "healthy" for flags in self.pool_health().values()):
            assert time.monotonic() < deadline, self.pool_health()
            time.sleep(0.05)

    def metrics(self) -> dict[str, float]:
        """Every sample of the usage process's /metrics, by its name and labels as written."""
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in text.splitlines()
                if line and not line.startswith("#")}

    def breaker_status(self) -> dict:
        from extproc.breaker.status import fetch_status

        return fetch_status(self.state_dir / "run" / "breaker.sock")


@pytest.fixture(scope="session")
def upstream_pki(tmp_path_factory: pytest.TempPathFactory):
    return ensure_dev_certificates(tmp_path_factory.mktemp("azure-pki"), extra_names=("localhost",))


@pytest.fixture(scope="session")
def azure(upstream_pki) -> Iterator[EmulatorThread]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(upstream_pki.server_cert, upstream_pki.server_key)
    # The tests count what arrived: the journal keeps every request of the session (the default caps
    # would drop the oldest, and a count that stays the same would then prove nothing).
    emulator = EmulatorThread(EmulatorSettings(api_keys=(SERVER_KEY,), deployments=DEPLOYMENTS, ssl_context=context,
                                               journal_max_requests=10_000_000, journal_max_bytes=2**40,
                                               journal_max_body_bytes=64 * 1024 * 1024))
    yield emulator
    emulator.stop()


def write_config(directory: Path, **sections: str) -> Path:
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    defaults = {
        "azure": f"{{api_version: '{API_VERSION}'}}",
        "limits": f"{{max_request_body_bytes: {BODY_LIMIT}}}",
        "models": "{" + ", ".join(f"'{k}': '{v}'" for k, v in MODEL_MAP.items()) + "}",
        "unmapped_models": "reject",
        "extproc": "{workers: 1}",
        "metrics": f"{{port: {free_port()}}}",
    }
    sections = {**defaults, **sections}
    listen_options = sections.pop("listen_options", "")  # more of `listen:` (e.g. "allowed_hosts: [a]")
    lines = [
        f"listen: {{address: 127.0.0.1, http_port: {http_port}, https_port: {https_port}"
        f"{', ' + listen_options if listen_options else ''}}}",
        f"envoy: {{admin_port: {admin_port}, concurrency: 1}}",
        f"state_dir: {directory / 'state'}",
        *(f"{key}: {value}" for key, value in sections.items()),
    ]
    path = directory / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def start_gateway(directory: Path, azure_url: str | None, ca_file: Path | None, *,
                  env: dict[str, str] | None = None, **sections: str) -> Gateway:
    """`python -m extproc up`; without `azure_url` it runs its own emulator. `env` adds variables
    (the caller's own AZURE_* and AOAI_GATEWAY_* are not inherited)."""
    config = write_config(directory, **sections) if azure_url else write_config(
        directory, **{"models": "{}", "unmapped_models": "passthrough", **sections})
    parsed = yaml.safe_load(config.read_text())
    extra_env = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "AOAI_GATEWAY_"))}
    if azure_url:
        env.update({
            "AZURE_OPENAI_ENDPOINT": azure_url.replace("127.0.0.1", "localhost"),  # verified by hostname
            "AZURE_OPENAI_API_KEY": SERVER_KEY,
            "AZURE_OPENAI_CA_FILE": str(ca_file),
        })
    env.update(extra_env)
    log = directory / "gateway.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "extproc", "--config", str(config), "up"],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    admin = f"http://127.0.0.1:{parsed['envoy']['admin_port']}"
    deadline = time.monotonic() + 60
    while not (_ready(admin + "/ready") and b"aoai-gateway is up" in log.read_bytes()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("gateway did not start:\n" + log.read_text())
        time.sleep(0.1)
    listen = parsed["listen"]
    return Gateway(
        http_url=f"http://127.0.0.1:{listen['http_port']}",
        https_url=f"https://localhost:{listen['https_port']}",
        admin_url=admin,
        ca_file=directory / "state" / "tls" / "ca.crt",
        log=log,
        process=process,
        state_dir=directory / "state",
        metrics_url=f"http://127.0.0.1:{(parsed.get('metrics') or {}).get('port', 9464)}",
    )


def stop_gateway(gateway: Gateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(20)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        raise


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, azure: EmulatorThread, upstream_pki) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gw"), azure.url, upstream_pki.ca_cert)
    yield gw
    stop_gateway(gw)
    assert gw.process.returncode == 0, gw.log.read_text()
    # Nothing secret in what the gateway printed.
    output = gw.log.read_text()
    assert SERVER_KEY not in output and CLIENT_KEY not in output
