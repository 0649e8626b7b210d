"""Small helpers for starting local processes and waiting on them (used by `up` and the benchmark)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Callable

# How long the supervisor gives its workers to stop before SIGKILL; whoever stops the supervisor
# (`up`) must wait longer than this, or the supervisor dies before it kills a hung worker. Here, in a
# light module, so `up`'s own process does not load gRPC to know it.
WORKER_STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own loopback URL
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until(check: Callable[[], bool], what: str, timeout_s: float, *,
               still_ok: Callable[[], None] = lambda: None, interval_s: float = 0.05) -> None:
    """Poll `check` until it is true; `still_ok` runs first each time and raises to stop waiting
    (a child died, a stop was asked for). RuntimeError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        still_ok()
        if check():
            return
        time.sleep(interval_s)
    raise RuntimeError(f"timed out waiting for {what}")
