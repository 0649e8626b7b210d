"""The ext_proc service: `worker_count` worker processes, one Unix socket each, kept running (and
the circuit breaker's process when pools exist: extproc/breaker; the Entra ID token process when a backend
uses Entra ID: extproc/identity; the usage process when metrics are on or a client key has a token limit:
extproc/usage).

Envoy lists every socket as an endpoint of the `extproc` cluster (least-request balancing): Unix
sockets have no SO_REUSEPORT, so separate sockets are how several processes share the load. With
several workers this process only supervises them: a worker that dies is started again, since Envoy
would otherwise keep sending its share of requests to a dead socket (503s).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from ..auth.keyfiles import CredentialError
from ..breaker.board import create as create_board
from ..usage.board import create as create_spend_board
from ..config import Settings
from ..rpc.health import is_serving
from .processes import WORKER_STOP_TIMEOUT_S
from .sockets import SocketInUseError, prepare_socket, socket_in_use
from .worker import run_worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    first_delay_s: float = 0.05  # doubled on each further exit of the same worker within the window
    max_delay_s: float = 5.0
    crash_limit: int = 5  # more unexpected exits than this of one worker within the window: give up
    window_s: float = 60.0
    stop_timeout_s: float = WORKER_STOP_TIMEOUT_S  # after SIGTERM, SIGKILL what is still running


class Supervisor:
    """Keep `count` worker processes running: one that exits unexpectedly is started again after a
    short, growing delay; a crash loop makes `run` return 1 (systemd, Kubernetes or `up` then
    restart the whole service). `stop` (the signal handlers) ends them all."""

    def __init__(self, start: Callable[[int], BaseProcess], count: int, policy: RestartPolicy = RestartPolicy()) -> None:
        self._start = start
        self._count = count
        self._policy = policy
        self._workers: dict[int, BaseProcess] = {}
        self._due: dict[int, float] = {}  # slot -> when to start it again
        self._exits: dict[int, deque[float]] = {slot: deque() for slot in range(count)}
        self._stop_deadline: float | None = None
        self._status = 0
        # Wakes the wait when `stop` runs in a signal handler with no worker left to exit.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def run(self) -> int:
        try:
            for slot in range(self._count):
                self._spawn(slot)
            while self._workers or (self._due and self._stop_deadline is None):
                ready = multiprocessing.connection.wait(
                    [*(worker.sentinel for worker in self._workers.values()), self._wake_read], self._timeout())
                if self._wake_read in ready:
                    os.read(self._wake_read, 512)
                for slot, worker in list(self._workers.items()):
                    if worker.sentinel in ready:
                        self._reap(slot, worker)
                self._spawn_due()
                self._kill_after_deadline()
        finally:
            wake_read, wake_write = self._wake_read, self._wake_write
            self._wake_read = self._wake_write = -1  # a late signal must not write to a reused fd
            os.close(wake_read)
            os.close(wake_write)
        return self._status

    def stop(self) -> None:
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self._policy.stop_timeout_s
        self._due.clear()
        for worker in self._workers.values():
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)
        if self._wake_write >= 0:
            try:
                os.write(self._wake_write, b"x")
            except BlockingIOError:
                pass  # already awake

    def _timeout(self) -> float | None:
        times = [*self._due.values()] + ([self._stop_deadline] if self._stop_deadline is not None else [])
        return max(0.0, min(times) - time.monotonic()) if times else None

    def _spawn(self, slot: int) -> None:
        if self._stop_deadline is not None:
            return
        worker = self._start(slot)
        worker.start()
        self._workers[slot] = worker
        if self._stop_deadline is not None and worker.pid is not None:  # stopped while it started
            os.kill(worker.pid, signal.SIGTERM)

    def _reap(self, slot: int, worker: BaseProcess) -> None:
        del self._workers[slot]
        worker.join()
        code = worker.exitcode
        if self._stop_deadline is not None:
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                log.error("%s (pid %s) exited with %s while stopping", worker.name, worker.pid, code)
                self._status = 1
            return
        now = time.monotonic()
        exits = self._exits[slot]
        exits.append(now)
        while exits and exits[0] < now - self._policy.window_s:
            exits.popleft()
        if len(exits) > self._policy.crash_limit:
            log.error("%s (pid %s) exited with %s, %d times within %.0f s: stopping every worker",
                      worker.name, worker.pid, code, len(exits), self._policy.window_s)
            self._status = 1
            self.stop()
            return
        delay = min(self._policy.first_delay_s * 2 ** (len(exits) - 1), self._policy.max_delay_s)
        log.error("%s (pid %s) exited with %s; starting it again in %.1f s", worker.name, worker.pid, code, delay)
        self._due[slot] = now + delay

    def _spawn_due(self) -> None:
        now = time.monotonic()
        for slot, when in list(self._due.items()):
            if when <= now and self._due.pop(slot, None) is not None:  # `stop` may have cleared it
                self._spawn(slot)

    def _kill_after_deadline(self) -> None:
        if self._stop_deadline is None or time.monotonic() < self._stop_deadline:
            return
        for worker in self._workers.values():
            if worker.is_alive():
                log.error("%s (pid %s) did not stop; killing it", worker.name, worker.pid)
                worker.kill()


def serve(settings: Settings, policy: RestartPolicy = RestartPolicy()) -> int:
    """Run `worker_count` worker processes (and, when pools exist, the circuit breaker's process; the Entra ID token
    process; the usage process),
    each started again when it dies; SIGTERM/SIGINT stop them all."""
    paths = settings.socket_paths()
    breaker = bool(settings.pools)
    identity = bool(settings.entra_credentials)
    usage = settings.usage_process
    if identity:
        from ..identity.credentials import check as check_entra

        try:
            for entra in settings.entra_credentials:
                check_entra(entra)
        except CredentialError as exc:
            log.error("%s", exc)
            return 1
        # A former run's marker and tokens (perhaps another identity's: the files are numbered by position in
        # the settings): this run's token process makes its own; until then, requests get 503.
        settings.entra_ready_path.unlink(missing_ok=True)
        for stale in (*settings.socket_dir.glob("entra-*.token"), *settings.socket_dir.glob(".entra-*.token.*")):
            stale.unlink(missing_ok=True)
    try:
        for path in (paths + ([settings.breaker_paths.http, settings.breaker_paths.access_log] if breaker else [])
                     + ([settings.usage_paths.access_log] if usage else [])):
            prepare_socket(path)
    except SocketInUseError as exc:
        log.error("%s; is the ext_proc already running?", exc)
        return 1
    if breaker:
        # Before any reader or writer starts: every worker maps this file at its start.
        create_board(settings.breaker_paths.trips, len(settings.circuits))
    if settings.token_limited_keys:  # the same for the token spend (blocks of a former run are not kept)
        create_spend_board(settings.usage_paths.board, len(settings.token_limited_keys))
    if len(paths) == 1 and not breaker and not identity and not usage:
        run_worker(settings, paths[0])  # one process: its exit is the service's (systemd, Kubernetes or `up` acts)
        return 0
    # Workers are forked from a fork server that has imported the worker's modules but run nothing:
    # a restarted worker serves in tens of milliseconds instead of the ~0.5 s a fresh interpreter
    # needs to import them, and still inherits no gRPC state (nothing gRPC ran in the fork server).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["extproc.runtime.worker"] + (["extproc.runtime.breaker_process"] if breaker else [])
                                   + (["extproc.runtime.identity_process"] if identity else [])
                                   + (["extproc.runtime.usage_process"] if usage else []))
    level = logging.getLogger().getEffectiveLevel()
    # After the workers' slots: the breaker (with pools; restarted, it reads its trips back) and the Entra ID
    # token process (restarted, it gets a token again; the workers keep the last one meanwhile).
    services = (["breaker"] if breaker else []) + (["identity"] if identity else []) + (["usage"] if usage else [])

    def start(slot: int) -> BaseProcess:
        if slot >= len(paths):
            service = services[slot - len(paths)]
            if service == "breaker":
                from .breaker_process import run_breaker

                return context.Process(target=run_breaker, args=(settings, os.getpid(), level), name="breaker")
            if service == "usage":
                from .usage_process import run_usage

                return context.Process(target=run_usage, args=(settings, os.getpid(), level), name="usage")
            from .identity_process import run_identity

            return context.Process(target=run_identity, args=(settings, os.getpid(), level), name="entra-tokens")
        return context.Process(target=run_worker, args=(settings, paths[slot], os.getpid(), level), name=f"extproc-{slot}")

    supervisor = Supervisor(start, len(paths) + len(services), policy)
    # Installed before any worker starts, so an early SIGTERM is not lost.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: supervisor.stop())
    return supervisor.run()


def check_health(settings: Settings, timeout_s: float = 2.0) -> int:
    """Probe every worker's gRPC health service, and the breaker's status with pools (Docker
    healthcheck, Kubernetes exec probe): a breaker that does not answer takes every pool out."""
    status = 0
    for path in settings.socket_paths():
        serving = is_serving(path, timeout_s)
        if isinstance(serving, str):
            print(f"{path}: {serving}")
        if serving is not True:
            status = 1
    if settings.entra_credentials and not settings.entra_ready_path.exists():
        print(f"{settings.entra_ready_path}: the Entra ID token process has not asked for its tokens yet")
        status = 1
    if settings.usage_process and not socket_in_use(settings.usage_paths.access_log, timeout_s):
        print(f"{settings.usage_paths.access_log}: the usage process does not answer")
        status = 1
    if settings.pools:
        from ..breaker.status import fetch_status

        try:
            fetch_status(settings.breaker_paths.http, timeout=timeout_s)
        except (OSError, ValueError) as exc:
            print(f"{settings.breaker_paths.http}: the circuit breaker does not answer ({exc})")
            status = 1
    return status
