"""Size limits shared by the ext_proc server and the Envoy config, in a module that imports nothing
heavy (the workers need them without yaml or cryptography)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings

# The ext_proc's gRPC limit is the body limit plus room for headers and framing.
GRPC_MESSAGE_HEADROOM = 1024 * 1024


# How long the supervisor gives its workers to stop before SIGKILL; whoever stops the supervisor
# (`up`) must wait longer than this, or the supervisor dies before it kills a hung worker.
WORKER_STOP_TIMEOUT_S = 10.0


def grpc_max_message_bytes(settings: Settings) -> int:
    return settings.limits.max_request_body_bytes + GRPC_MESSAGE_HEADROOM
