"""The environment variables of the proxies people come from, as a table: each names the setting it
fills. They are laid over the file's values (the environment wins) before validation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .schema import ConfigError


def _text(name: str, value: str) -> str:
    return value


def _model_map_json(name: str, value: str) -> dict[str, str]:
    """The FastAPI proxy's JSON object."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not valid JSON ({exc.msg})") from exc
    if not isinstance(parsed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
        raise ConfigError(f'{name}: must be a JSON object of strings, e.g. {{"gpt-4o": "my-deployment"}}')
    return parsed


def _model_mapper(name: str, value: str) -> dict[str, str]:
    """The Go proxy's `a=b,c=d` format."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        model, sep, deployment = item.partition("=")
        if not sep or not model.strip() or not deployment.strip():
            raise ConfigError(f"{name}: {item!r} is not of the form model=deployment")
        pairs[model.strip()] = deployment.strip()
    return pairs


def _listen_address(name: str, value: str) -> dict[str, Any]:
    """The Go proxy's `host:port` (an empty host listens everywhere, as it did)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{name}: {value!r} is not of the form host:port")
    return {"address": host or "0.0.0.0", "http_port": int(port)}


@dataclass(frozen=True)
class EnvVariable:
    names: tuple[str, ...]  # the variable and its aliases: the first one set (non-empty) counts
    setting: str  # where it goes: "section.key", or "section" for a mapping merged into it
    parse: Callable[[str, str], Any] = _text  # (variable name, value) -> the setting's raw value
    replaces: str | None = None  # a sibling setting it overrides (a key in the env beats a key file)


LEGACY_ENV: tuple[EnvVariable, ...] = (
    EnvVariable(("AZURE_OPENAI_ENDPOINT",), "azure.endpoint"),
    EnvVariable(("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_TOKEN"), "azure.api_key", replaces="api_key_file"),
    EnvVariable(("AZURE_OPENAI_API_VERSION", "AZURE_OPENAI_APIVERSION"), "azure.api_version"),
    EnvVariable(("AZURE_OPENAI_CA_FILE",), "azure.ca_file"),
    EnvVariable(("AZURE_OPENAI_AUTH",), "azure.auth"),  # entra: Entra ID tokens (DefaultAzureCredential)
    EnvVariable(("AZURE_MODEL_MAP",), "models", _model_map_json),
    EnvVariable(("AZURE_OPENAI_MODEL_MAPPER",), "models", _model_mapper),
    EnvVariable(("AOAI_GATEWAY_UNMAPPED_MODELS",), "unmapped_models"),
    EnvVariable(("AZURE_OPENAI_PROXY_ADDRESS",), "listen", _listen_address),
    EnvVariable(("AOAI_GATEWAY_STATE_DIR",), "state_dir"),
    EnvVariable(("AOAI_GATEWAY_SOCKET_DIR",), "extproc.socket_dir"),
    EnvVariable(("AOAI_GATEWAY_WORKERS",), "extproc.workers"),
)


def apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay the variables that are set on the file's values (env wins), in table order."""
    for variable in LEGACY_ENV:
        name = next((n for n in variable.names if env.get(n)), None)
        if name is None:
            continue
        value = variable.parse(name, env[name])
        section, _, key = variable.setting.partition(".")
        if not key:
            if isinstance(value, dict):  # a mapping merged into the section
                raw[section] = {**(raw.get(section) or {}), **value}
            else:
                raw[section] = value
            continue
        values = dict(raw.get(section) or {})
        values[key] = value
        if variable.replaces:
            values.pop(variable.replaces, None)
        raw[section] = values
    return raw
