"""Command line: `python -m extproc {up,serve,config,render-envoy,emulator}`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ConfigError, load_settings, redacted_dump


def _parser() -> argparse.ArgumentParser:
    # --config and --log-level are accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS,
                        help="YAML config file (default: $AOAI_GATEWAY_CONFIG, else none)")
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser = argparse.ArgumentParser(prog="python -m extproc", description=__doc__, parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", parents=[common],
                        help="run Envoy + ext_proc (+ the emulator without an Azure endpoint) in the foreground")
    serve = commands.add_parser("serve", parents=[common], help="run only the ext_proc gRPC service (sidecar containers)")
    serve.add_argument("--write-envoy-config", type=Path, metavar="PATH",
                       help="first render the Envoy config for these settings to PATH (for an Envoy container)")
    commands.add_parser("health", parents=[common], help="exit 0 when every ext_proc worker answers gRPC health SERVING")
    commands.add_parser("config", parents=[common], help="print the effective configuration, secrets redacted")
    render = commands.add_parser("render-envoy", parents=[common], help="write the Envoy config for these settings and validate it")
    render.add_argument("--output", "-o", type=Path, required=True)
    render.add_argument("--tls-cert", type=Path, help="downstream certificate (default: listen.tls_cert_file)")
    render.add_argument("--tls-key", type=Path, help="downstream key (default: listen.tls_key_file)")
    render.add_argument("--no-validate", action="store_true", help="skip `envoy --mode validate`")
    commands.add_parser("emulator", help="run the Azure OpenAI emulator (see `python -m extproc.emulator --help`)",
                        add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["emulator"]:
        from .emulator.__main__ import main as emulator_main

        return emulator_main(argv[1:])
    args = _parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
        if args.command == "config":
            print(json.dumps(redacted_dump(settings), indent=2))
            return 0
        if args.command == "serve":
            from .server import serve

            if args.write_envoy_config:
                from . import envoy_config

                envoy_config.prepare(settings, args.write_envoy_config)
            return serve(settings)
        if args.command == "health":
            from .server import check_health

            return check_health(settings)
        if args.command == "render-envoy":
            return _render(settings, args)
        from .up import run_up

        return run_up(settings, args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _render(settings, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from . import envoy_config

    cert = args.tls_cert or settings.listen.tls_cert_file
    key = args.tls_key or settings.listen.tls_key_file
    if cert and key:
        settings = settings.model_copy(
            update={"listen": settings.listen.model_copy(update={"tls_cert_file": cert, "tls_key_file": key})})
    path = envoy_config.prepare(settings, args.output, check=not args.no_validate)
    print(path)
    return 0
