"""`python -m extproc up`: Envoy + the ext_proc workers (+ the emulator when no Azure endpoint is
configured) in the foreground, stopped together on Ctrl-C or SIGTERM, or when any of them dies."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Callable, TextIO

from .. import envoy_config
from ..config import CONFIG_PATH_ENV, ConfigError, Settings
from .demo import start_emulator_for
from .processes import WORKER_STOP_TIMEOUT_S, http_ok, wait_until
from .sockets import socket_in_use

log = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0
LOCK_FILE = "gateway.lock"
EXTPROC_ARGV = [sys.executable, "-m", "extproc", "serve"]


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

    def check_running(self) -> None:
        """Raise StopRequested after a stop signal, RuntimeError when a child has exited."""
        # The stop first: on Ctrl-C the children get SIGINT too and may exit before this looks.
        if self.stop_requested:
            raise StopRequested
        if (dead := self.first_exited()) is not None:
            raise RuntimeError(f"{dead.name} exited with {dead.process.returncode}")

    def wait_until(self, check: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
        def still_ok() -> None:
            try:
                self.check_running()
            except RuntimeError as exc:
                raise RuntimeError(f"{exc} while waiting for {what}") from None

        wait_until(check, what, timeout_s, still_ok=still_ok)

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


def lock_state_dir(settings: Settings) -> TextIO:
    """Hold <state_dir>/gateway.lock for this `up`'s life: a second gateway on the same state_dir
    stops here, before it writes anything a running one uses (Envoy config, certificates, sockets)."""
    state = settings.state_path
    state.mkdir(parents=True, exist_ok=True)
    lock = open(state / LOCK_FILE, "a+")  # noqa: SIM115 - held open until `up` ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise RuntimeError(
            f"another gateway (pid {holder}) is running with state_dir {state}; give this one its own "
            "state_dir (AOAI_GATEWAY_STATE_DIR) and ports") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def run_up(settings: Settings, config_path: str | None) -> int:
    env = dict(os.environ)
    if config_path:
        env[CONFIG_PATH_ENV] = str(Path(config_path).resolve())
    stack = Stack()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stack.stop_requested = True

    # Before any child starts: a signal during start-up then stops what has started, never orphans it.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    lock = None
    try:
        # Nothing is written before these two checks: a refused start leaves a running gateway alone.
        lock = lock_state_dir(settings)
        sockets = settings.socket_paths()
        if settings.pools:  # Envoy's first health checks of the pools' members ask the breaker
            sockets += [settings.breaker_paths.http, settings.breaker_paths.access_log]
        if busy := [p for p in sockets if socket_in_use(p)]:
            # Else the readiness check below would pass on the other instance's sockets.
            raise RuntimeError(f"another ext_proc is serving on {busy[0]}; is the gateway already running?")
        if settings.azure.endpoint is None:
            settings, env = start_emulator_for(settings, env, stack)
        rendered = envoy_config.prepare(settings)
        if notice := envoy_config.dev_ca_notice(settings):
            print(notice, flush=True)
        if notice := envoy_config.forward_proxy_notice(settings):
            print(notice, flush=True)
        stack.start("ext_proc", EXTPROC_ARGV, env)
        # Listening, not merely present: a socket file may be left over from a killed run.
        stack.wait_until(lambda: all(socket_in_use(p) for p in sockets), "the ext_proc sockets")
        if settings.usage_process:  # its socket is bound last, once its metrics are served
            stack.wait_until(lambda: socket_in_use(settings.usage_paths.access_log), "the usage process")
        if settings.entra_credentials:  # asked once, got or not (a failure is logged; requests then get 503s)
            stack.wait_until(settings.entra_ready_path.exists, "the first Entra ID tokens")

        concurrency = settings.envoy.concurrency or os.cpu_count() or 1
        stack.start(
            "envoy",
            [envoy_config.envoy_binary(settings.envoy.binary), "-c", str(rendered), "--concurrency", str(concurrency),
             "--disable-hot-restart", "--log-level", "warn"],
            env,
        )
        ready_url = f"http://127.0.0.1:{settings.envoy.admin_port}/ready"
        stack.wait_until(lambda: http_ok(ready_url), "Envoy to be ready")
        _print_urls(settings)
        restarts: list[float] = []
        while not stack.stop_requested:
            if (dead := stack.first_exited()) is not None:
                if not _restart_supervisor(stack, dead, restarts, env):
                    print(f"{dead.name} exited with {dead.process.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.05)
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
        if lock is not None:
            lock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


SUPERVISOR_RESTARTS = 5  # killed more often than this within SUPERVISOR_WINDOW_S: `up` gives up
SUPERVISOR_WINDOW_S = 60.0


def _restart_supervisor(stack: Stack, dead: Child, restarts: list[float], env: dict[str, str]) -> bool:
    """Start the ext_proc supervisor again when a signal killed it (its workers die with it), as it
    does for a worker: Envoy keeps running and fails closed meanwhile. Not when it exited by itself
    (a crash loop of its workers: it has given up), nor for Envoy or the emulator."""
    if dead.name != "ext_proc" or dead.process.returncode >= 0:
        return False
    now = time.monotonic()
    restarts[:] = [t for t in restarts if t > now - SUPERVISOR_WINDOW_S] + [now]
    if len(restarts) > SUPERVISOR_RESTARTS:
        return False
    print(f"ext_proc was killed ({dead.process.returncode}); starting it again", file=sys.stderr, flush=True)
    stack.children.remove(dead)
    stack.start("ext_proc", EXTPROC_ARGV, env)
    return True


def _print_urls(settings: Settings) -> None:
    host = "127.0.0.1" if settings.listen.address in ("0.0.0.0", "::") else settings.listen.address
    lines = ["aoai-gateway is up:"]
    if settings.listen.http_port:
        lines.append(f"  OPENAI_BASE_URL=http://{host}:{settings.listen.http_port}/v1")
    if settings.listen.https_port:
        lines.append(f"  OPENAI_BASE_URL=https://localhost:{settings.listen.https_port}/v1")
    lines.append(f"  Azure endpoint: {settings.azure.endpoint}")
    if settings.metrics.enabled:
        metrics_host = "127.0.0.1" if settings.metrics.address in ("0.0.0.0", "::") else settings.metrics.address
        lines.append(f"  Status page: http://{metrics_host}:{settings.metrics.port}/  (Prometheus: /metrics)")
    lines.append(f"  Envoy admin (localhost only): http://127.0.0.1:{settings.envoy.admin_port}/")
    lines.append("Press Ctrl-C to stop.")
    print("\n".join(lines), flush=True)
