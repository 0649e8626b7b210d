"""Run the ext_proc gRPC service: one asyncio gRPC server per worker process, each on its own socket.

Envoy lists every socket as an endpoint of the `extproc` cluster (least-request balancing):
Unix sockets have no SO_REUSEPORT, so separate sockets are how several processes share the load.
The server is extproc/h2server.py (about a sixth of grpcio's CPU per request, see bench/);
AOAI_GATEWAY_EXTPROC_RUNTIME=grpcio runs the same calls on grpcio's asyncio server instead.
With several workers the parent process only supervises them: a worker that dies is started again,
since Envoy would otherwise keep sending its share of requests to a dead socket (503s).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .config import Settings
from .h2server import NOT_FOUND, GrpcServer, RpcError, socket_in_use
from .limits import WORKER_STOP_TIMEOUT_S, grpc_max_message_bytes
from .service import PROCESS_METHOD, call_factory, grpcio_handler
from .translate import Translator

log = logging.getLogger(__name__)
RUNTIME_ENV = "AOAI_GATEWAY_EXTPROC_RUNTIME"
HEALTH_CHECK_METHOD = b"/grpc.health.v1.Health/Check"
SERVED = ("", "envoy.service.ext_proc.v3.ExternalProcessor")
_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()


class _HealthCheck:
    """grpc.health.v1 Check: SERVING for the server as a whole and for the ext_proc service."""

    def on_message(self, message: bytes) -> tuple[tuple[bytes, ...], bool]:
        service = health_pb2.HealthCheckRequest.FromString(message).service
        if service not in SERVED:
            raise RpcError(NOT_FOUND, "unknown service")
        return (_SERVING,), True


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class SocketInUseError(RuntimeError):
    pass


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        # Binding would silently take the path over from a live server (another instance, or an
        # orphaned worker); only a file whose process is gone is removed.
        if socket_in_use(path):
            raise SocketInUseError(f"{path}: another process is serving on this socket")
        path.unlink()


async def start_server(settings: Settings, socket_path: Path) -> GrpcServer | grpc.aio.Server:
    """Start one ext_proc gRPC server on `socket_path` (also serves gRPC health for probes).

    Either kind is stopped with `await server.stop(grace)`.
    """
    translator = Translator(settings)
    _prepare_socket(socket_path)
    if os.environ.get(RUNTIME_ENV) == "grpcio":
        return await _start_grpcio(settings, translator, socket_path)
    server = GrpcServer(
        {PROCESS_METHOD: call_factory(translator), HEALTH_CHECK_METHOD: _HealthCheck},
        max_message_bytes=grpc_max_message_bytes(settings),
    )
    await server.start(socket_path, mode=0o660)  # Envoy and the ext_proc share a group, not the world
    return server


async def _start_grpcio(settings: Settings, translator: Translator, socket_path: Path) -> grpc.aio.Server:
    max_message = grpc_max_message_bytes(settings)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((grpcio_handler(translator),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    os.chmod(socket_path, 0o660)
    for service in SERVED:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server


async def _serve_one(settings: Settings, socket_path: Path) -> None:
    server = await start_server(settings, socket_path)
    runtime = "grpcio" if isinstance(server, grpc.aio.Server) else "h2server"
    log.info("ext_proc (%s, pid %d) listening on unix:%s", runtime, os.getpid(), socket_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=2)
    socket_path.unlink(missing_ok=True)


def run_worker(settings: Settings, socket_path: Path, supervisor_pid: int | None = None, log_level: int | None = None) -> None:
    """Entry point of one worker process (blocks until SIGTERM/SIGINT)."""
    if supervisor_pid is not None:  # a spawned worker: a fresh interpreter
        logging.basicConfig(level=log_level or logging.INFO,
                            format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
        if not _die_with_supervisor(supervisor_pid):
            return
    _install_uvloop()
    asyncio.run(_serve_one(settings, socket_path))


PR_SET_PDEATHSIG = 1


def _die_with_supervisor(supervisor_pid: int) -> bool:
    """Have Linux SIGKILL this worker when the supervisor dies, even by SIGKILL: an orphaned worker
    would keep its socket and so block the next start. SIGKILL, not SIGTERM: a hung worker ignores
    SIGTERM, and a stale socket file is cleared on the next start. False when the supervisor is
    already gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
            log.warning("cannot tie this worker's life to its supervisor's")
    return os.getppid() == supervisor_pid


@dataclass(frozen=True)
class RestartPolicy:
    first_delay_s: float = 0.2  # doubled on each further exit of the same worker within the window
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
    """Run `worker_count` worker processes, started again when one dies; SIGTERM/SIGINT stop them all."""
    paths = settings.socket_paths()
    try:
        for path in paths:
            _prepare_socket(path)
    except SocketInUseError as exc:
        log.error("%s; is the ext_proc already running?", exc)
        return 1
    if len(paths) == 1:
        run_worker(settings, paths[0])  # one process: its exit is the service's (systemd, Kubernetes or `up` acts)
        return 0
    context = multiprocessing.get_context("spawn")  # no gRPC state is ever inherited across fork
    level = logging.getLogger().getEffectiveLevel()

    def start(slot: int) -> BaseProcess:
        return context.Process(target=run_worker, args=(settings, paths[slot], os.getpid(), level), name=f"extproc-{slot}")

    supervisor = Supervisor(start, len(paths), policy)
    # Installed before any worker starts, so an early SIGTERM is not lost.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: supervisor.stop())
    return supervisor.run()


def check_health(settings: Settings, timeout_s: float = 2.0) -> int:
    """Probe every worker's gRPC health service (Docker healthcheck, Kubernetes exec probe)."""
    status = 0
    for path in settings.socket_paths():
        try:
            with grpc.insecure_channel(f"unix:{path}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError as exc:
            print(f"{path}: {exc.code().name}")
            serving = False
        if not serving:
            status = 1
    return status
