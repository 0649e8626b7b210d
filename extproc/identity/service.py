"""The token process: one TokenKeeper per Entra ID credential the backends use (Settings.entra_credentials)."""

from __future__ import annotations

import asyncio
import logging
import signal

from azure.core.credentials_async import AsyncTokenCredential

from ..config import Settings
from ..config.schema import EntraSettings
from .credentials import make_credential
from .keeper import TokenKeeper

log = logging.getLogger(__name__)


async def serve_tokens(settings: Settings) -> None:
    """Keep every credential's token until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before anything else: a stop during the first fetch is clean
        loop.add_signal_handler(sig, stop.set)
    credentials: list[tuple[EntraSettings, AsyncTokenCredential]] = []
    tasks: list[asyncio.Future[object]] = []
    try:
        for entra in settings.entra_credentials:
            credentials.append((entra, make_credential(entra)))
        keepers = [TokenKeeper(credential, entra.scope, settings.token_path(entra), entra.label)
                   for entra, credential in credentials]
        log.info("entra: keeping %d token(s): %s", len(keepers), ", ".join(e.label for e, _ in credentials))
        # Every token asked for once before the gateway says it is ready (a failure counts: it is logged, and
        # requests get 503 until a token comes), then each on its own schedule.
        first = asyncio.ensure_future(asyncio.gather(*(keeper.once() for keeper in keepers)))
        stopping = asyncio.ensure_future(stop.wait())
        tasks += [first, stopping]
        await asyncio.wait({first, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            return
        settings.entra_ready_path.touch()
        tasks += [asyncio.create_task(keeper.run(first_wait)) for keeper, first_wait in zip(keepers, first.result())]
        await stopping
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, credential in credentials:
            await credential.close()
