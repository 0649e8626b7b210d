"""`python -m extproc.emulator`: serve an emulated Azure OpenAI resource until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
from pathlib import Path
from typing import Callable, Coroutine

from .server import start_emulator
from .settings import DEFAULT_API_KEY, DEFAULT_DEPLOYMENTS, EmulatorSettings
from .throttling import ThrottleSpec

log = logging.getLogger("extproc.emulator")


def _deployment(value: str) -> tuple[str, str]:
    name, sep, model = value.partition("=")
    if not sep or not name or not model:
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL, got {value!r}")
    return name, model


def _throttle(text: str) -> ThrottleSpec:
    try:
        return ThrottleSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m extproc.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--tls-cert", help="PEM certificate chain; serves HTTPS with --tls-key")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument(
        "--api-key", action="append", dest="api_keys", help=f"accepted api-key (repeatable; default {DEFAULT_API_KEY})"
    )
    parser.add_argument(
        "--bearer-token", action="append", dest="bearer_tokens", help="accepted bearer token (repeatable)"
    )
    parser.add_argument(
        "--entra-public-key", metavar="PEM",
        help="Entra ID mode: accept bearer JWTs signed (RS256) by this public key's private key, for the audience "
             "https://cognitiveservices.azure.com, unexpired",
    )
    parser.add_argument(
        "--disable-local-auth", action="store_true",
        help="refuse api-key authentication with Azure's 403 (the resource's disableLocalAuth)",
    )
    parser.add_argument(
        "--deployment",
        action="append",
        type=_deployment,
        dest="deployments",
        metavar="NAME=MODEL",
        help="a deployment (repeatable; replaces the default set)",
    )
    parser.add_argument(
        "--add-deployment",
        metavar="NAME=MODEL",
        type=_deployment,
        dest="added_deployments",
        action="append",
        default=[],
        help="a deployment beside the default set (or beside --deployment's; repeatable)",
    )
    parser.add_argument(
        "--throttle",
        action="append",
        dest="throttles",
        default=[],
        type=_throttle,
        metavar="SPEC",
        help="fail matching requests, e.g. deployment=gpt-4o,status=429,retry_after=30[,count=N][,percent=P]"
        " (repeatable; an empty SPEC: 429 for every request; see /_emulator/throttle)",
    )
    parser.add_argument(
        "--openai-api",
        action="store_true",
        help="serve OpenAI's API (/v1/..., body `model` names a deployment, Bearer api key) instead of Azure's",
    )
    parser.add_argument("--chunk-interval-ms", type=float, default=0.0, help="default pause between streamed chunks")
    parser.add_argument("--log-level", default="INFO", help="DEBUG logs one line per request")
    return parser


def settings_from_args(args: argparse.Namespace) -> EmulatorSettings:
    ssl_context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("--tls-cert and --tls-key go together")
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    return EmulatorSettings(
        api_keys=tuple(args.api_keys or (DEFAULT_API_KEY,)),
        bearer_tokens=tuple(args.bearer_tokens or ()),
        entra_public_key_pem=Path(args.entra_public_key).read_bytes() if args.entra_public_key else None,
        local_auth_disabled=args.disable_local_auth,
        deployments={**(dict(args.deployments) if args.deployments else DEFAULT_DEPLOYMENTS), **dict(args.added_deployments)},
        host=args.host,
        port=args.port,
        ssl_context=ssl_context,
        default_chunk_interval_s=args.chunk_interval_ms / 1000,
        throttles=tuple(args.throttles),
        openai_api=args.openai_api,
    )


async def serve(settings: EmulatorSettings) -> None:
    """Run until SIGINT or SIGTERM."""
    emulator = await start_emulator(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    api = "OpenAI API" if settings.openai_api else "Azure OpenAI"
    log.info("%s emulator listening on %s (deployments: %s)", api, emulator.url, ", ".join(settings.deployments))
    try:
        await stop.wait()
    finally:
        await emulator.stop()


def _run(main: Callable[[], Coroutine[object, object, None]]) -> None:
    try:
        import uvloop  # faster, and what the gateway itself runs on
    except ImportError:
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    _run(lambda: serve(settings))
    return 0
