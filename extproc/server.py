"""Run the ext_proc gRPC service: one asyncio gRPC server per worker process, each on its own socket.

Envoy lists every socket as an endpoint of the `extproc` cluster (least-request balancing):
Unix sockets have no SO_REUSEPORT, so separate sockets are how several processes share the load.
The server is extproc/h2server.py (about a sixth of grpcio's CPU per request, see bench/);
AOAI_GATEWAY_EXTPROC_RUNTIME=grpcio runs the same calls on grpcio's asyncio server instead.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .config import Settings
from .envoy_config import grpc_max_message_bytes
from .h2server import NOT_FOUND, GrpcServer, RpcError
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


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()  # left over from a process that did not exit cleanly


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
    log.info("ext_proc listening on unix:%s", socket_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=2)
    socket_path.unlink(missing_ok=True)


def run_worker(settings: Settings, socket_path: Path) -> None:
    """Entry point of one worker process (blocks until SIGTERM/SIGINT)."""
    _install_uvloop()
    asyncio.run(_serve_one(settings, socket_path))


def serve(settings: Settings) -> int:
    """Run `worker_count` worker processes and wait; SIGTERM/SIGINT stop them all."""
    paths = settings.socket_paths()
    if len(paths) == 1:
        run_worker(settings, paths[0])
        return 0
    context = multiprocessing.get_context("spawn")  # no gRPC state is ever inherited across fork
    workers = [context.Process(target=run_worker, args=(settings, path), name=f"extproc-{i}") for i, path in enumerate(paths)]
    for worker in workers:
        worker.start()

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for worker in workers:
        worker.join()
        if worker.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT):
            log.error("%s exited with %s", worker.name, worker.exitcode)
            status = 1
    return status


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
