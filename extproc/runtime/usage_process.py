"""The usage process, as the supervisor runs it (extproc/usage/service.py is what it serves)."""

from __future__ import annotations

import asyncio
import logging

from ..config import Settings
from ..usage.service import serve_usage
from .sockets import prepare_socket
from .worker import die_with_supervisor


def run_usage(settings: Settings, supervisor_pid: int, log_level: int | None = None) -> None:
    """Entry point of the usage process (blocks until SIGTERM/SIGINT); it dies with the supervisor."""
    logging.basicConfig(level=log_level or logging.INFO,
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    if not die_with_supervisor(supervisor_pid):
        return
    prepare_socket(settings.usage_paths.access_log)  # a restarted process finds its predecessor's socket file
    asyncio.run(serve_usage(settings))
