"""The workers' Unix sockets: whether one is served, and making a path ready to bind."""

from __future__ import annotations

import socket
from pathlib import Path


class SocketInUseError(RuntimeError):
    pass


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


def prepare_socket(path: Path) -> None:
    """Make `path` ready to bind: its folder made, a stale socket file removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        # Binding would silently take the path over from a live server (another instance, or an
        # orphaned worker); only a file whose process is gone is removed.
        if socket_in_use(path):
            raise SocketInUseError(f"{path}: another process is serving on this socket")
        path.unlink()
