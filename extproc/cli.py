"""Command line only: `python -m extproc {up,serve,health,config,status,keys,render-envoy,emulator}`; each command's
work lives in its package (runtime, envoy_config, config, emulator)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ConfigError, Settings, load_settings, redacted_dump


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
    keys = commands.add_parser("keys", help="client keys: `keys new --name NAME` prints a new key and its config entry")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_commands.add_parser("new", help="print a new random client key (once) and the entry for clients.keys")
    new.add_argument("--name", required=True, help="the client's name (its rate limit is kept under it)")
    new.add_argument("--models", help="comma-separated models the key may use (default: every model)")
    status = commands.add_parser("status", parents=[common],
                                 help="print each pool's members and their circuit breaker state (running gateway)")
    status.add_argument("--json", action="store_true", help="the breaker's answer as JSON")
    status.add_argument("--reset", action="store_true", help="first make every member healthy again")
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
    if args.command == "keys":  # needs no settings
        return _new_key(args)
    args.config = getattr(args, "config", None)
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
        if args.command == "config":
            print(json.dumps(_config_as_run(settings), indent=2))
            return 0
        if args.command == "serve":
            from .runtime.supervisor import serve

            if args.write_envoy_config:
                _prepare_envoy(settings, args.write_envoy_config)
            return serve(settings)
        if args.command == "health":
            from .runtime.supervisor import check_health

            return check_health(settings)
        if args.command == "status":
            return _status(settings, args)
        if args.command == "render-envoy":
            return _render(settings, args)
        from .runtime.up import run_up

        return run_up(settings, args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _new_key(args: argparse.Namespace) -> int:
    import re

    import yaml

    from .auth.client import key_digest, new_key

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.name):
        print("error: --name: 1-64 letters, digits, '.', '_' and '-'", file=sys.stderr)
        return 2
    key = new_key()
    entry: dict[str, object] = {"name": args.name, "key_sha256": key_digest(key)}
    if args.models:
        entry["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"key (shown once; give it to {args.name}, keep it out of the config): {key}")
    print("entry for clients.keys in the config file:")
    print(yaml.safe_dump([entry], sort_keys=False).rstrip())
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from .breaker.status import fetch_status, format_status

    if not settings.pools:
        print("no pools are configured (models: {name: [members]}): there is no circuit breaker")
        return 0
    path = settings.breaker_paths.http
    try:
        status = fetch_status(path, reset=args.reset)
    except OSError as exc:
        print(f"error: no circuit breaker answers on {path} ({exc}); is the gateway running with this config?",
              file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _config_as_run(settings: Settings) -> dict[str, object]:
    """What `up` would run: without an Azure endpoint, the emulator's endpoint and key."""
    dump = redacted_dump(settings)
    if settings.azure.endpoint is not None:
        return dump
    from .runtime.demo import EMULATOR_KEY

    endpoint = "http://127.0.0.1:PORT (a free port chosen at start)"
    dump["azure"]["endpoint"] = dump["effective"]["backends"]["default"] = endpoint
    effective = dump["effective"]
    effective["upstream"] = "the built-in Azure OpenAI emulator: no azure.endpoint (AZURE_OPENAI_ENDPOINT) is set"
    if settings.azure.resolved_api_key() is None:
        dump["azure"]["api_key"] = "<redacted>"
        effective["api_key_source"] = f"the emulator's key, {EMULATOR_KEY!r} (up gives it to the emulator and the gateway)"
    if not settings.models:
        effective["models"] = "none configured: up maps each deployment the emulator lists to itself"
    return dump


def _prepare_envoy(settings: Settings, output: Path, *, check: bool = True) -> Path:
    from . import envoy_config

    path = envoy_config.prepare(settings, output, check=check)
    if notice := envoy_config.dev_ca_notice(settings):
        print(notice, flush=True)
    return path


def _render(settings: Settings, args: argparse.Namespace) -> int:
    cert = args.tls_cert or settings.listen.tls_cert_file
    key = args.tls_key or settings.listen.tls_key_file
    if cert and key:
        settings = settings.model_copy(
            update={"listen": settings.listen.model_copy(update={"tls_cert_file": cert, "tls_key_file": key})})
    print(_prepare_envoy(settings, args.output, check=not args.no_validate))
    return 0
