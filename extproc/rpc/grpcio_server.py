"""The same Calls served by grpcio's asyncio server (AOAI_GATEWAY_EXTPROC_RUNTIME=grpcio): kept as a
fallback and for comparison in the benchmark; about six times the CPU per request of h2server."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .h2server import Call
from .status import RpcError

_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _identity(data: bytes) -> bytes:
    return data


def _stream_handler(new_call: Callable[[], Call]) -> grpc.RpcMethodHandler:
    async def serve(request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        call = new_call()
        while (message := await context.read()) is not grpc.aio.EOF:
            try:
                answers, done = call.on_message(message)
            except RpcError as exc:
                # As h2server does: the error status, never an OK that leaves the question unanswered.
                await context.abort(_STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN), exc.message)
                return  # not reached: abort raises
            for answer in answers:
                await context.write(answer)
            if done:
                return

    # Serialized messages in and out: the Call does the (de)serializing.
    return grpc.stream_stream_rpc_method_handler(serve, _identity, _identity)


async def start_grpcio_server(
    methods: dict[bytes, Callable[[], Call]], socket_path: Path, max_message_bytes: int, mode: int = 0o660
) -> grpc.aio.Server:
    """Serve `methods` (b"/package.Service/Method" -> a new Call per RPC) and grpc.health.v1
    (SERVING for every service named in `methods`) on `socket_path`."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for path, new_call in methods.items():
        service, _, method = path.decode().lstrip("/").partition("/")
        services.setdefault(service, {})[method] = _stream_handler(new_call)
    server.add_generic_rpc_handlers(
        tuple(grpc.method_handlers_generic_handler(service, handlers) for service, handlers in services.items()))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    os.chmod(socket_path, mode)
    for service in ("", *services):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server
