"""The circuit breaker's process, as the supervisor runs it (extproc/breaker/service.py is what it serves)."""

from __future__ import annotations

import asyncio
import logging

from ..breaker.service import serve_breaker
from ..config import Settings
from .sockets import prepare_socket
from .worker import die_with_supervisor


def run_breaker(settings: Settings, supervisor_pid: int, log_level: int | None = None) -> None:
    """Entry point of the breaker process (blocks until SIGTERM/SIGINT); it dies with the supervisor."""
    logging.basicConfig(level=log_level or logging.INFO,
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    if not die_with_supervisor(supervisor_pid):
        return
    paths = settings.breaker_paths
    for path in (paths.access_log, paths.http):
        prepare_socket(path)  # a restarted breaker finds its predecessor's socket files
    asyncio.run(serve_breaker(settings))
