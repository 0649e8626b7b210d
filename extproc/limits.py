"""Size limits shared by the ext_proc server and the Envoy config, in a module that imports nothing
heavy (the workers need them without yaml or cryptography)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings

# The ext_proc's gRPC limit is the body limit plus room for headers and framing.
GRPC_MESSAGE_HEADROOM = 1024 * 1024


def grpc_max_message_bytes(settings: Settings) -> int:
    return settings.limits.max_request_body_bytes + GRPC_MESSAGE_HEADROOM
