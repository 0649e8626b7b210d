"""Whether a server listens on a Unix socket: the supervisor, `up` and the usage process's status ask it of the
workers' and the usage process's sockets."""

from __future__ import annotations

import socket
from pathlib import Path


def socket_in_use(path: Path, timeout: float = 1.0) -> bool:
    """Whether some process accepts connections on the Unix socket `path` (False for a file left
    behind by a process that is gone, or no file)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except (TimeoutError, BlockingIOError):
            return True  # a full backlog: there is a listener
    return True
