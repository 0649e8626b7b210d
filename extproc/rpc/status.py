"""gRPC status codes and the error a handler raises to end its RPC with one."""

from __future__ import annotations

# The gRPC status codes used here.
OK, UNKNOWN, NOT_FOUND, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, UNIMPLEMENTED, INTERNAL = 0, 2, 5, 8, 9, 12, 13


class RpcError(Exception):
    """Raised by a handler: end the RPC with this gRPC status."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
