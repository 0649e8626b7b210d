"""Loading the settings: the YAML file (paths relative to it), then the environment, validated once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from ..auth.client import key_digest
from ..auth.keyfiles import CredentialError, read_key_file
from .legacy_env import apply_env
from .schema import ConfigError, Settings

CONFIG_PATH_ENV = "AOAI_GATEWAY_CONFIG"


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    """Paths in a config file are relative to the file, not to the current directory."""
    sections: list[tuple[object, tuple[str, ...]]] = [
        (raw.get("azure"), ("api_key_file", "ca_file")),
        (raw.get("listen"), ("tls_cert_file", "tls_key_file")),
        (raw.get("extproc"), ("socket_dir",)),
        (raw.get("forward_proxy"), ("ca_cert_file", "ca_key_file")),
    ]
    backends = raw.get("backends")
    if isinstance(backends, dict):
        sections += [(values, ("api_key_file", "ca_file")) for values in backends.values()]
    clients = raw.get("clients")
    if isinstance(clients, dict) and isinstance(clients.get("keys"), list):
        sections += [(entry, ("key_file",)) for entry in clients["keys"]]
    for values, keys in sections:
        if isinstance(values, dict):
            for key in keys:
                if isinstance(values.get(key), str) and not values[key].startswith(("/", "~")):
                    values[key] = str(base / values[key])
    if isinstance(raw.get("state_dir"), str) and not raw["state_dir"].startswith(("/", "~")):
        raw["state_dir"] = str(base / raw["state_dir"])


def _keys_from_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """`backends.<name>.api_key_env: VAR`: the key is read from the environment at start."""
    backends = raw.get("backends")
    if not isinstance(backends, dict):
        return
    for name, values in backends.items():
        if not isinstance(values, dict) or "api_key_env" not in values:
            continue
        variable = values.pop("api_key_env")
        if "api_key" in values or "api_key_file" in values:
            raise ConfigError(f"backends.{name}: give one of api_key, api_key_file and api_key_env")
        if not isinstance(variable, str) or not env.get(variable, "").strip():
            raise ConfigError(f"backends.{name}.api_key_env: the variable {variable!r} is not set or empty")
        values["api_key"] = env[variable].strip()


def _client_keys_from_sources(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """`clients.keys[].key_env` / `key_file`: read at start, kept only as the key's SHA-256."""
    clients = raw.get("clients")
    keys = clients.get("keys") if isinstance(clients, dict) else None
    if not isinstance(keys, list):
        return
    for i, entry in enumerate(keys):
        if not isinstance(entry, dict):
            continue
        sources = [k for k in ("key_sha256", "key_env", "key_file") if k in entry]
        if len(sources) != 1:
            raise ConfigError(f"clients.keys[{i}]: give one of key_sha256, key_env and key_file")
        if "key_env" in entry:
            variable = entry.pop("key_env")
            key = env.get(variable, "").strip() if isinstance(variable, str) else ""
            if not key:
                raise ConfigError(f"clients.keys[{i}].key_env: the variable {variable!r} is not set or empty")
            entry["key_sha256"] = key_digest(key)
        elif "key_file" in entry:
            path = Path(str(entry["key_file"])).expanduser()  # kept: the worker re-reads it when it changes
            try:
                key = read_key_file(path, f"clients.keys[{i}].key_file")
            except CredentialError as exc:
                raise ConfigError(str(exc)) from None
            if key is None:
                raise ConfigError(f"clients.keys[{i}].key_file: {path} is empty")
            entry["key_sha256"] = key_digest(key)


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{field}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the YAML file (if any) and the environment, and validate the result once."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_PATH_ENV) or None
    raw: dict[str, Any] = {}
    if path is not None:
        file = Path(path).expanduser()
        try:
            loaded = yaml.safe_load(file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file}: the top level must be a mapping")
        raw = loaded
        _resolve_relative_paths(raw, file.resolve().parent)
    raw = apply_env(raw, env)
    _keys_from_env(raw, env)
    _client_keys_from_sources(raw, env)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    for backend in settings.all_backends.values():
        backend.resolved_api_key()  # fail at start, not on the first request, if a key file is unreadable
    return settings


