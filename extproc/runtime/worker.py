"""One ext_proc worker process: compile the gateway, serve it on one Unix socket until SIGTERM/SIGINT.

The server is extproc/rpc/h2server.py (about a sixth of grpcio's CPU per request, see bench/);
AOAI_GATEWAY_EXTPROC_RUNTIME=grpcio runs the same calls on grpcio's asyncio server instead. The
worker also re-reads changed key files every few seconds, off the request path.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path

import grpc

from ..compile import compile_gateway, refreshable_credentials
from ..config import Settings
from ..core.gateway import Gateway
from ..processor.call import call_factory
from ..rpc.grpcio_server import start_grpcio_server
from ..rpc.h2server import GrpcServer
from ..rpc.health import HEALTH_CHECK_METHOD, HealthCheck
from .sockets import prepare_socket

log = logging.getLogger(__name__)
RUNTIME_ENV = "AOAI_GATEWAY_EXTPROC_RUNTIME"
PROCESS_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
PROCESS_METHOD = f"/{PROCESS_SERVICE}/Process".encode()
CREDENTIAL_REFRESH_S = 2.0  # how often changed key files are re-read


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def start_server(settings: Settings, socket_path: Path) -> GrpcServer | grpc.aio.Server:
    """Compile the gateway and start one ext_proc gRPC server on `socket_path` (also serving gRPC
    health for Envoy and probes). Either kind is stopped with `await server.stop(grace)`."""
    gateway = compile_gateway(settings)
    prepare_socket(socket_path)
    _keep_credentials_fresh(gateway)
    max_message = gateway.limits.grpc_max_message_bytes
    if os.environ.get(RUNTIME_ENV) == "grpcio":
        return await start_grpcio_server({PROCESS_METHOD: call_factory(gateway)}, socket_path, max_message)
    health = HealthCheck(frozenset({PROCESS_SERVICE}))
    server = GrpcServer(
        {PROCESS_METHOD: call_factory(gateway), HEALTH_CHECK_METHOD: lambda: health},
        max_message_bytes=max_message,
    )
    await server.start(socket_path, mode=0o660)  # Envoy and the ext_proc share a group, not the world
    return server


_background: set[asyncio.Task[None]] = set()  # referenced until the loop ends, which cancels them


def _keep_credentials_fresh(gateway: Gateway) -> None:
    """Re-read changed key files every CREDENTIAL_REFRESH_S (a stat each; a read only on change)."""
    credentials = refreshable_credentials(gateway)
    if not credentials:
        return

    async def refresh() -> None:
        while True:
            await asyncio.sleep(CREDENTIAL_REFRESH_S)
            for credential in credentials:
                try:
                    credential.refresh()
                except Exception:  # never stop rotating because one read went wrong
                    log.exception("refreshing a credential failed; trying again in %.0f s", CREDENTIAL_REFRESH_S)

    task = asyncio.get_running_loop().create_task(refresh())
    _background.add(task)
    task.add_done_callback(_background.discard)


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
        if not die_with_supervisor(supervisor_pid):
            return
    _install_uvloop()
    asyncio.run(_serve_one(settings, socket_path))


PR_SET_PDEATHSIG = 1


def die_with_supervisor(supervisor_pid: int) -> bool:
    """Have Linux SIGKILL this worker when its parent dies, even by SIGKILL: an orphaned worker
    would keep its socket and so block the next start. The parent is the supervisor's fork server,
    which exits when the supervisor does, so the worker goes with either (the breaker process too). SIGKILL, not SIGTERM: a hung
    worker ignores SIGTERM, and a stale socket file is cleared on the next start. False when the
    supervisor or the parent is already gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
            log.warning("cannot tie this worker's life to its supervisor's")
    if os.getppid() == 1:  # the parent died before the death signal was set
        return False
    # multiprocessing hands each forked child the write end of the fork server's "alive" pipe, and the
    # fork server only exits once every holder has closed it: were the workers to keep it, the fork
    # server (and so, through the death signal, the workers) would outlive the supervisor.
    from multiprocessing import forkserver

    alive_fd = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        os.close(alive_fd)
        forkserver._forkserver._forkserver_alive_fd = None
    try:
        os.kill(supervisor_pid, 0)
    except ProcessLookupError:
        return False
    return True
