"""The token process: one TokenKeeper per Entra ID credential the backends use (Settings.entra_credentials)."""

from __future__ import annotations

import asyncio
import logging
import signal

from ..config import Settings
from .credentials import make_credential
from .keeper import TokenKeeper

log = logging.getLogger(__name__)


async def serve_tokens(settings: Settings) -> None:
    """Keep every credential's token until SIGTERM/SIGINT."""
    credentials = [(entra, make_credential(entra)) for entra in settings.entra_credentials]
    keepers = [TokenKeeper(credential, entra.scope, settings.token_path(entra), entra.label)
               for entra, credential in credentials]
    log.info("entra: keeping %d token(s): %s", len(keepers), ", ".join(e.label for e, _ in credentials))
    tasks: list[asyncio.Task[None]] = []
    try:
        # Every token asked for once before the gateway says it is ready (a failure counts: it is logged, and
        # requests get 503 until a token comes), then each on its own schedule.
        waits = await asyncio.gather(*(keeper.once() for keeper in keepers))
        settings.entra_ready_path.touch()
        tasks = [asyncio.create_task(keeper.run(first_wait)) for keeper, first_wait in zip(keepers, waits)]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, credential in credentials:
            await credential.close()
