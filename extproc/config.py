"""The one configuration model: a YAML file plus the environment variables of the older proxies.

Loaded and validated once at start (unknown keys and bad values are rejected with the field's
name); everything downstream (routing table, Envoy config) is compiled from the `Settings` object.
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_API_VERSION = "2024-10-21"
# The Responses API exists only from this (preview) api-version on, on the classic surface; an older
# global api_version (common in configs written for chat) must not break it.
MIN_API_VERSION_BY_ENDPOINT = {"responses": "2025-04-01-preview"}
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # Azure's audio limit is 25 MB; multipart adds a little
CONFIG_PATH_ENV = "AOAI_GATEWAY_CONFIG"

# Endpoint names a per-endpoint option may be given for (the OpenAI path after /v1/).
DEPLOYMENT_OPERATIONS = (
    "chat/completions",
    "completions",
    "embeddings",
    "audio/transcriptions",
    "audio/translations",
    "audio/speech",
    "images/generations",
    "images/edits",
)
RESOURCE_OPERATIONS = ("responses", "files", "batches")
ENDPOINT_NAMES = DEPLOYMENT_OPERATIONS + RESOURCE_OPERATIONS


class ConfigError(Exception):
    """The configuration is invalid; the message names the field or variable."""


class UnmappedModelPolicy(str, Enum):
    PASSTHROUGH = "passthrough"  # use the model name as the deployment name (the FastAPI proxy)
    STRIP_DOTS = "strip_dots"  # gpt-3.5-turbo -> gpt-35-turbo (the Go proxy)
    REJECT = "reject"  # 404 model_not_found naming the known models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=1, le=65535)]


class AzureSettings(_Strict):
    endpoint: str | None = None
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    api_version: str = DEFAULT_API_VERSION
    ca_file: Path | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_a_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL such as https://NAME.openai.azure.com")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be the resource's base URL, without a path or query")
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("api_version")
    @classmethod
    def _api_version_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @model_validator(mode="after")
    def _one_key_source(self) -> AzureSettings:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("give api_key or api_key_file, not both")
        return self

    def resolved_api_key(self) -> str | None:
        """The server's Azure key, read from the file if one is named."""
        if self.api_key_file is not None:
            try:
                return self.api_key_file.read_text().strip() or None
            except OSError as exc:
                raise ConfigError(f"azure.api_key_file: cannot read {self.api_key_file}: {exc.strerror}") from exc
        return self.api_key.get_secret_value() if self.api_key else None

    @property
    def host(self) -> str | None:
        return urlsplit(self.endpoint).hostname if self.endpoint else None

    @property
    def port(self) -> int | None:
        if not self.endpoint:
            return None
        parts = urlsplit(self.endpoint)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def uses_tls(self) -> bool:
        return bool(self.endpoint and self.endpoint.startswith("https://"))


class EndpointSettings(_Strict):
    # classic: /openai/deployments/{dep}/{op}?api-version=V (or /openai/{op} for responses, files, batches)
    # v1: /openai/v1/{op} with the deployment name as the body's model, no api-version
    api: Literal["classic", "v1"] = "classic"
    api_version: str | None = None


class ListenSettings(_Strict):
    # This machine only by default: anyone who reaches the listener spends the Azure key, and the
    # gateway has no client authentication yet. Containers and shared gateways set 0.0.0.0 explicitly.
    address: str = "127.0.0.1"
    http_port: Port | None = 8080
    https_port: Port | None = 8443
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> ListenSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        if self.http_port is None and self.https_port is None:
            raise ValueError("at least one of http_port and https_port must be set")
        return self


class EnvoySettings(_Strict):
    admin_port: Port = 9901  # always bound to 127.0.0.1
    concurrency: Annotated[int, Field(ge=1, le=256)] | None = None  # worker threads; None = cores
    # No route timeout (streams can last minutes); instead close a request idle this long.
    upstream_idle_timeout_seconds: Annotated[int, Field(ge=1)] = 900
    binary: str = "envoy"


class ExtprocSettings(_Strict):
    socket_dir: Path | None = None  # default: <state_dir>/run
    workers: Annotated[int, Field(ge=1, le=64)] | None = None  # processes; None = cores
    message_timeout_ms: Annotated[int, Field(ge=50, le=60_000)] = 2000


class LimitSettings(_Strict):
    max_request_body_bytes: Annotated[int, Field(ge=64 * 1024, le=512 * 1024 * 1024)] = DEFAULT_MAX_BODY_BYTES


class Settings(_Strict):
    azure: AzureSettings = AzureSettings()
    models: dict[str, str] = {}
    unmapped_models: UnmappedModelPolicy = UnmappedModelPolicy.PASSTHROUGH
    endpoints: dict[str, EndpointSettings] = {}
    listen: ListenSettings = ListenSettings()
    envoy: EnvoySettings = EnvoySettings()
    extproc: ExtprocSettings = ExtprocSettings()
    limits: LimitSettings = LimitSettings()
    state_dir: Path = Path("~/.local/state/aoai-gateway")

    @field_validator("models")
    @classmethod
    def _models_not_blank(cls, value: dict[str, str]) -> dict[str, str]:
        for model, deployment in value.items():
            if not model.strip() or not deployment.strip():
                raise ValueError(f"model and deployment names must not be empty (got {model!r}: {deployment!r})")
            if deployment in (".", ".."):
                raise ValueError(f"{deployment!r} is not a deployment name (model {model!r})")
        return value

    @field_validator("endpoints")
    @classmethod
    def _known_endpoints(cls, value: dict[str, EndpointSettings]) -> dict[str, EndpointSettings]:
        for name in value:
            if name not in ENDPOINT_NAMES:
                raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(ENDPOINT_NAMES)}")
        return value

    def endpoint(self, name: str) -> EndpointSettings:
        return self.endpoints.get(name, EndpointSettings())

    def api_version_for(self, name: str) -> str:
        options = self.endpoint(name)
        if options.api_version:
            return options.api_version
        minimum = MIN_API_VERSION_BY_ENDPOINT.get(name)
        # api-versions are dates (YYYY-MM-DD[-preview]), so string order is release order.
        if minimum and self.azure.api_version < minimum:
            return minimum
        return self.azure.api_version

    @property
    def state_path(self) -> Path:
        return self.state_dir.expanduser()

    @property
    def socket_dir(self) -> Path:
        return (self.extproc.socket_dir or self.state_path / "run").expanduser()

    @property
    def worker_count(self) -> int:
        return self.extproc.workers or os.cpu_count() or 1

    def socket_paths(self) -> list[Path]:
        return [self.socket_dir / f"extproc-{i}.sock" for i in range(self.worker_count)]


# --- loading ---------------------------------------------------------------------------------


def _parse_model_mapper(text: str) -> dict[str, str]:
    """The Go proxy's `a=b,c=d` format."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        model, sep, deployment = item.partition("=")
        if not sep or not model.strip() or not deployment.strip():
            raise ConfigError(f"AZURE_OPENAI_MODEL_MAPPER: {item!r} is not of the form model=deployment")
        pairs[model.strip()] = deployment.strip()
    return pairs


def _parse_model_map_json(text: str) -> dict[str, str]:
    """The FastAPI proxy's JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"AZURE_MODEL_MAP: not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError('AZURE_MODEL_MAP: must be a JSON object of strings, e.g. {"gpt-4o": "my-deployment"}')
    return value


def _first_env(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay the older proxies' environment variables on the file's values (env wins)."""
    azure = dict(raw.get("azure") or {})
    if endpoint := _first_env(env, "AZURE_OPENAI_ENDPOINT"):
        azure["endpoint"] = endpoint
    if key := _first_env(env, "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_TOKEN"):
        azure["api_key"] = key
        azure.pop("api_key_file", None)
    if version := _first_env(env, "AZURE_OPENAI_API_VERSION", "AZURE_OPENAI_APIVERSION"):
        azure["api_version"] = version
    if ca_file := _first_env(env, "AZURE_OPENAI_CA_FILE"):
        azure["ca_file"] = ca_file
    if azure:
        raw["azure"] = azure

    models = dict(raw.get("models") or {})
    if text := _first_env(env, "AZURE_MODEL_MAP"):
        models.update(_parse_model_map_json(text))
    if text := _first_env(env, "AZURE_OPENAI_MODEL_MAPPER"):
        models.update(_parse_model_mapper(text))
    if models:
        raw["models"] = models

    if policy := _first_env(env, "AOAI_GATEWAY_UNMAPPED_MODELS"):
        raw["unmapped_models"] = policy
    if address := _first_env(env, "AZURE_OPENAI_PROXY_ADDRESS"):
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"AZURE_OPENAI_PROXY_ADDRESS: {address!r} is not of the form host:port")
        listen = dict(raw.get("listen") or {})
        listen.update(address=host or "0.0.0.0", http_port=int(port))
        raw["listen"] = listen
    if state_dir := _first_env(env, "AOAI_GATEWAY_STATE_DIR"):
        raw["state_dir"] = state_dir
    if socket_dir := _first_env(env, "AOAI_GATEWAY_SOCKET_DIR"):
        raw["extproc"] = {**(raw.get("extproc") or {}), "socket_dir": socket_dir}
    if workers := _first_env(env, "AOAI_GATEWAY_WORKERS"):
        raw["extproc"] = {**(raw.get("extproc") or {}), "workers": workers}
    return raw


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    """Paths in a config file are relative to the file, not to the current directory."""
    for section, keys in (
        ("azure", ("api_key_file", "ca_file")),
        ("listen", ("tls_cert_file", "tls_key_file")),
        ("extproc", ("socket_dir",)),
    ):
        values = raw.get(section)
        if isinstance(values, dict):
            for key in keys:
                if isinstance(values.get(key), str) and not values[key].startswith(("/", "~")):
                    values[key] = str(base / values[key])
    if isinstance(raw.get("state_dir"), str) and not raw["state_dir"].startswith(("/", "~")):
        raw["state_dir"] = str(base / raw["state_dir"])


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
    raw = _apply_env(raw, env)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    settings.azure.resolved_api_key()  # fail at start, not on the first request, if the key file is unreadable
    return settings


def redacted_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration with secrets replaced, for `python -m extproc config`."""
    data = settings.model_dump(mode="json")
    key = settings.azure.resolved_api_key()
    data["azure"]["api_key"] = "<redacted>" if key else None
    data["effective"] = {
        "api_key_source": (
            "azure.api_key_file"
            if settings.azure.api_key_file
            else "azure.api_key / AZURE_OPENAI_API_KEY"
            if settings.azure.api_key
            else "none: the client's Bearer token is forwarded as api-key"
        ),
        "api_versions": {name: settings.api_version_for(name) for name in ENDPOINT_NAMES},
        "extproc_sockets": [str(p) for p in settings.socket_paths()],
    }
    return data
