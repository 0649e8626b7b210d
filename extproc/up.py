"""`python -m extproc up`: Envoy + the ext_proc workers (+ the emulator when no Azure endpoint is
configured) in the foreground, stopped together on Ctrl-C or SIGTERM, or when any of them dies."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from pydantic import SecretStr

from . import envoy_config
from .config import ConfigError, Settings
from .emulator.settings import DEFAULT_DEPLOYMENTS
from .h2server import socket_in_use
from .limits import WORKER_STOP_TIMEOUT_S

log = logging.getLogger(__name__)
EMULATOR_KEY = "emulator-key"
START_TIMEOUT_S = 30.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived while starting: stop quietly."""


@dataclass
class Stack:
    """The running processes, in start order; stopped in reverse."""

    children: list[Child] = field(default_factory=list)
    stop_requested: bool = False  # set by the signal handlers

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        if self.stop_requested:  # e.g. a signal during the Envoy config's validation
            raise StopRequested
        child = Child(name, subprocess.Popen(argv, env=env))
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self, timeout: float = WORKER_STOP_TIMEOUT_S + 5) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.name, timeout)
                child.process.kill()
                child.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until(check: Callable[[], bool], stack: Stack, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # The stop first: on Ctrl-C the children get SIGINT too and may exit before this looks.
        if stack.stop_requested:
            raise StopRequested
        if (dead := stack.first_exited()) is not None:
            raise RuntimeError(f"{dead.name} exited with {dead.process.returncode} while waiting for {what}")
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own localhost URL
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def run_up(settings: Settings, config_path: str | None) -> int:
    env = dict(os.environ)
    if config_path:
        env["AOAI_GATEWAY_CONFIG"] = str(Path(config_path).resolve())
    stack = Stack()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stack.stop_requested = True

    # Before any child starts: a signal during start-up then stops what has started, never orphans it.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if settings.azure.endpoint is None:
            settings, env = _start_emulator(settings, env, stack)
        rendered = envoy_config.prepare(settings)
        sockets = settings.socket_paths()
        if busy := [p for p in sockets if socket_in_use(p)]:
            # Else the readiness check below would pass on the other instance's sockets.
            raise RuntimeError(f"another ext_proc is serving on {busy[0]}; is the gateway already running?")
        stack.start("ext_proc", [sys.executable, "-m", "extproc", "serve"], env)
        # Listening, not merely present: a socket file may be left over from a killed run.
        _wait_until(lambda: all(socket_in_use(p) for p in sockets), stack, "the ext_proc sockets")

        concurrency = settings.envoy.concurrency or os.cpu_count() or 1
        stack.start(
            "envoy",
            [envoy_config.envoy_binary(settings.envoy.binary), "-c", str(rendered), "--concurrency", str(concurrency),
             "--disable-hot-restart", "--log-level", "warn"],
            env,
        )
        ready_url = f"http://127.0.0.1:{settings.envoy.admin_port}/ready"
        _wait_until(lambda: _http_ok(ready_url), stack, "Envoy to be ready")
        _print_urls(settings)
        while not stack.stop_requested:
            if (dead := stack.first_exited()) is not None:
                print(f"{dead.name} exited with {dead.process.returncode}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    except StopRequested:
        return 0
    except (ConfigError, RuntimeError) as exc:
        if stack.stop_requested:  # a consequence of the stop (a child or `envoy --mode validate` got the signal)
            return 0
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_emulator(settings: Settings, env: dict[str, str], stack: Stack) -> tuple[Settings, dict[str, str]]:
    port = free_port()
    key = settings.azure.resolved_api_key() or EMULATOR_KEY
    argv = [sys.executable, "-m", "extproc.emulator", "--host", "127.0.0.1", "--port", str(port), "--api-key", key]
    # The emulator's usual deployments, plus one for every deployment the model map names.
    deployments = {**DEFAULT_DEPLOYMENTS, **{name: name for name in settings.models.values()}}
    for name, model in deployments.items():
        argv += ["--deployment", f"{name}={model}"]
    stack.start("emulator", argv, env)
    endpoint = f"http://127.0.0.1:{port}"
    _wait_until(lambda: _port_open(port), stack, "the Azure OpenAI emulator")
    print(f"No Azure endpoint configured: using the built-in Azure OpenAI emulator at {endpoint}")
    env = {**env, "AZURE_OPENAI_ENDPOINT": endpoint, "AZURE_OPENAI_API_KEY": key}
    azure = settings.azure.model_copy(update={"endpoint": endpoint, "api_key": SecretStr(key), "api_key_file": None})
    # With no model map, list the emulator's deployments in /v1/models so chat UIs have a choice.
    models = settings.models or {name: name for name in DEFAULT_DEPLOYMENTS}
    if not settings.models:
        env["AZURE_OPENAI_MODEL_MAPPER"] = ",".join(f"{name}={name}" for name in models)
    return settings.model_copy(update={"azure": azure, "models": models}), env


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _print_urls(settings: Settings) -> None:
    host = "127.0.0.1" if settings.listen.address in ("0.0.0.0", "::") else settings.listen.address
    lines = ["aoai-gateway is up:"]
    if settings.listen.http_port:
        lines.append(f"  OPENAI_BASE_URL=http://{host}:{settings.listen.http_port}/v1")
    if settings.listen.https_port:
        lines.append(f"  OPENAI_BASE_URL=https://localhost:{settings.listen.https_port}/v1")
    lines.append(f"  Azure endpoint: {settings.azure.endpoint}")
    lines.append(f"  Envoy admin (localhost only): http://127.0.0.1:{settings.envoy.admin_port}/")
    lines.append("Press Ctrl-C to stop.")
    print("\n".join(lines), flush=True)
