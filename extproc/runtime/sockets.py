"""The workers' Unix sockets: whether one is served, and making a path ready to bind."""

from __future__ import annotations

from pathlib import Path

from ..rpc.probe import socket_in_use

__all__ = ["SocketInUseError", "prepare_socket", "socket_in_use"]


class SocketInUseError(RuntimeError):
    pass


def prepare_socket(path: Path) -> None:
    """Make `path` ready to bind: its folder made, a stale socket file removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        # Binding would silently take the path over from a live server (another instance, or an
        # orphaned worker); only a file whose process is gone is removed.
        if socket_in_use(path):
            raise SocketInUseError(f"{path}: another process is serving on this socket")
        path.unlink()
