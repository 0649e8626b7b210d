"""The Entra ID token process, as the supervisor runs it (extproc/identity/service.py is what it does)."""

from __future__ import annotations

import asyncio
import logging

from ..config import Settings
from ..identity.service import serve_tokens
from .worker import die_with_supervisor


def run_identity(settings: Settings, supervisor_pid: int, log_level: int | None = None) -> None:
    """Entry point of the token process (blocks until SIGTERM/SIGINT); it dies with the supervisor."""
    logging.basicConfig(level=log_level or logging.INFO,
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    # azure-identity and MSAL log every failed attempt (and HTTP details): the keeper logs once per streak.
    for noisy in ("azure", "msal"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not die_with_supervisor(supervisor_pid):
        return
    settings.socket_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve_tokens(settings))
