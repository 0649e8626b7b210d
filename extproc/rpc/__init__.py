"""The gRPC transports: the own HTTP/2 server (h2server), grpcio's asyncio server as a fallback
(grpcio_server), the health service, and status codes. They serve `Call`s (one per RPC, serialized
messages in and out) and know nothing of ext_proc or Envoy."""

from .status import RpcError

__all__ = ["RpcError"]
