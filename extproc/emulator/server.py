"""Build the aiohttp application and run it on a socket."""

from __future__ import annotations

from aiohttp import web

from .handlers_admin import add_admin_routes
from .journal import Journal
from .middleware import add_azure_headers, azure_middleware
from .protocol import AzureAppRunner
from .routing import add_api_routes, add_fallback_route
from .settings import EmulatorSettings
from .state import STATE, EmulatorState

# Audio uploads reach 25 MB and batch input files far more; aiohttp's 1 MB default is too small.
MAX_BODY_BYTES = 512 * 1024 * 1024
SHUTDOWN_TIMEOUT_S = 0.5
# Bodies reach the handlers as sent: Azure OpenAI documents no request compression, so a
# Content-Encoding other than identity is refused (415) rather than inflated (a decompression bomb).
HANDLER_ARGS = {"auto_decompress": False}


def build_app(settings: EmulatorSettings) -> web.Application:
    app = web.Application(
        middlewares=[azure_middleware], client_max_size=MAX_BODY_BYTES, handler_args=HANDLER_ARGS
    )
    app[STATE] = EmulatorState(settings=settings)
    add_admin_routes(app)
    add_api_routes(app)
    add_fallback_route(app)  # last: it matches everything
    app.on_response_prepare.append(add_azure_headers)
    return app


class RunningEmulator:
    """A listening emulator; `url` is the resource endpoint (like https://x.openai.azure.com)."""

    def __init__(self, runner: web.AppRunner, state: EmulatorState, url: str, port: int) -> None:
        self._runner = runner
        self._state = state
        self.url = url
        self.port = port

    @property
    def settings(self) -> EmulatorSettings:
        return self._state.settings

    @property
    def journal(self) -> Journal:
        """The requests received so far, in arrival order (the live list; the newest
        `settings.journal_max_requests` of them)."""
        return self._state.journal

    def clear_journal(self) -> None:
        self._state.journal.clear()

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> RunningEmulator:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


def _url_host(host: str) -> str:
    """How clients on this machine reach a bind address (0.0.0.0 is not an address to call)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


async def start_emulator(settings: EmulatorSettings | None = None) -> RunningEmulator:
    """Start listening and return once the socket is bound (port 0 picks a free port)."""
    settings = settings or EmulatorSettings()
    app = build_app(settings)
    # No access log: the middleware logs one line per request without headers (api keys).
    # A short shutdown timeout: stopping must not wait for slow streams to finish.
    # AzureAppRunner: requests aiohttp's parser rejects get Azure's JSON errors too.
    runner = AzureAppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=settings.ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    scheme = "https" if settings.ssl_context is not None else "http"
    host = _url_host(settings.host)
    state = app[STATE]
    state.base_url = f"{scheme}://{host}:{port}"
    return RunningEmulator(runner, state, state.base_url, port)
