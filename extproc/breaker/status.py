"""`python -m extproc status`: ask the running gateway's breaker process how each pool stands."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def fetch_status(path: Path, *, reset: bool = False, timeout: float = 5.0) -> dict[str, Any]:
    """The breaker's /status (after /reset when asked); OSError when no breaker answers there."""
    connection = _UnixConnection(path, timeout)
    try:
        connection.request("POST" if reset else "GET", "/reset" if reset else "/status")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise OSError(f"the breaker answered HTTP {response.status}")
    result: dict[str, Any] = json.loads(body)
    return result


def format_status(status: dict[str, Any]) -> str:
    lines = [f"pools at {status['time']}:"]
    for model, members in status["pools"].items():
        lines.append(f"  {model}")
        for member in members:
            state = member["state"]
            if state == "tripped":
                state = f"tripped until {member['until']} ({member['seconds_left']:g}s left)"
            elif state == "recovering":
                state = "recovering (one failure trips it again)"
            lines.append(f"    {member['backend']}/{member['deployment']}  priority {member['priority']}, "
                         f"weight {member['weight']}: {state}")
    return "\n".join(lines)
