"""grpc.health.v1: the Check method served beside the ext_proc (Envoy's health checks, probes), and
the client side the `health` command uses."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .status import NOT_FOUND, RpcError

HEALTH_CHECK_METHOD = b"/grpc.health.v1.Health/Check"
_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()


class HealthCheck:
    """A Call answering SERVING for the server as a whole ("") and for each of `services`."""

    def __init__(self, services: frozenset[str]) -> None:
        self._services = services | {""}

    def on_message(self, message: bytes) -> tuple[tuple[bytes, ...], bool]:
        service = health_pb2.HealthCheckRequest.FromString(message).service
        if service not in self._services:
            raise RpcError(NOT_FOUND, "unknown service")
        return (_SERVING,), True


def is_serving(socket_path: Path, timeout_s: float) -> bool | str:
    """True when the server on `socket_path` answers SERVING; else the gRPC status name or False."""
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.RpcError as exc:
        return exc.code().name
    return reply.status == health_pb2.HealthCheckResponse.SERVING
