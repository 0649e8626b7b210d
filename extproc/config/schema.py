"""The settings' schema: what the YAML file (and the environment) may say, validated by pydantic.

Validated once at start (unknown keys and bad values are rejected with the field's name); the
worker compiles the result once (extproc/compile.py), the Envoy config is rendered from it.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from ..auth.keyfiles import CredentialError, read_key_file
from ..core.catalogue import ENDPOINT_NAMES, MIN_API_VERSION_BY_ENDPOINT
from ..routing import DEFAULT_BACKEND, UnmappedModelPolicy, is_deployment_name

DEFAULT_API_VERSION = "2024-10-21"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # Azure's audio limit is 25 MB; multipart adds a little
MIN_MAX_BODY_BYTES = 1024 * 1024  # envoy/envoy.yaml's per-connection buffer and HTTP/2 stream window


class ConfigError(Exception):
    """The configuration is invalid; the message names the field or variable."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=1, le=65535)]


ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
EntraKind = Literal["default", "managed_identity", "workload_identity", "client_secret", "certificate"]
ENTRA_KIND_LABELS: dict[str, str] = {
    "default": "DefaultAzureCredential",
    "managed_identity": "managed identity",
    "workload_identity": "workload identity",
    "client_secret": "service principal (client secret)",
    "certificate": "service principal (certificate)",
}


class EntraSettings(_Strict):
    """How the gateway gets Entra ID tokens for a backend (azure-identity). `kind` is inferred when left
    out: a client secret or certificate is a service principal, `managed_identity_client_id` a user-assigned
    managed identity, nothing DefaultAzureCredential's chain (environment, workload identity, managed
    identity, then developer sign-ins such as `az login`)."""

    kind: EntraKind | None = None
    managed_identity_client_id: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None  # the name of the variable that holds the secret
    client_secret_file: Path | None = None
    certificate_file: Path | None = None  # PEM: the certificate and its private key
    authority_host: str | None = None  # sovereign clouds (default: AZURE_AUTHORITY_HOST, else the public cloud)
    scope: str = ENTRA_SCOPE

    @model_validator(mode="after")
    def _complete(self) -> EntraSettings:
        kind = self.resolved_kind
        secret = self.client_secret_env is not None or self.client_secret_file is not None
        if self.client_secret_env is not None and self.client_secret_file is not None:
            raise ValueError("give client_secret_env or client_secret_file, not both")
        if kind == "client_secret" and not secret:
            raise ValueError("kind client_secret needs client_secret_env or client_secret_file")
        if kind == "certificate" and self.certificate_file is None:
            raise ValueError("kind certificate needs certificate_file")
        if kind in ("client_secret", "certificate") and not (self.tenant_id and self.client_id):
            raise ValueError(f"a service principal ({kind}) needs tenant_id and client_id")
        if secret and kind != "client_secret" or self.certificate_file is not None and kind != "certificate":
            raise ValueError(f"kind {kind} takes no client secret or certificate")
        if self.managed_identity_client_id is not None and kind not in ("managed_identity", "default"):
            raise ValueError(f"kind {kind} takes no managed_identity_client_id")
        if self.authority_host is not None and not self.authority_host.startswith("https://"):
            raise ValueError("authority_host must be an https:// URL such as https://login.microsoftonline.us")
        # Said but unused would quietly mean another identity: a managed identity is chosen by
        # managed_identity_client_id; DefaultAzureCredential reads AZURE_CLIENT_ID and AZURE_TENANT_ID.
        if kind in ("default", "managed_identity") and (self.client_id or self.tenant_id):
            raise ValueError(f"kind {kind} takes no client_id or tenant_id (a user-assigned managed identity: "
                             "managed_identity_client_id)")
        if kind == "managed_identity" and self.authority_host is not None:
            raise ValueError("a managed identity takes no authority_host")
        object.__setattr__(self, "kind", kind)  # one credential, one token, however it was spelled
        return self

    @property
    def resolved_kind(self) -> str:
        if self.kind is not None:
            return self.kind
        if self.client_secret_env is not None or self.client_secret_file is not None:
            return "client_secret"
        if self.certificate_file is not None:
            return "certificate"
        if self.managed_identity_client_id is not None:
            return "managed_identity"
        return "default"

    @property
    def label(self) -> str:
        """What the credential is, for messages (never what it holds)."""
        return ENTRA_KIND_LABELS[self.resolved_kind]


class BackendSettings(_Strict):
    """One upstream resource: the `azure:` section (the backend named `default`) or one of `backends:`.
    `type: openai` is OpenAI itself or an OpenAI-compatible API (pool members only): `/v1/{op}`, the
    deployment as the body's model, `Authorization: Bearer` with its key, no api-version."""

    type: Literal["azure", "openai"] = "azure"
    endpoint: str | None = None
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    api_version: str = DEFAULT_API_VERSION
    ca_file: Path | None = None
    # api_key: the key above (none: each client's own key is sent on); entra: Entra ID tokens (`entra:` says
    # which credential; none: DefaultAzureCredential), sent as `Authorization: Bearer`.
    auth: Literal["api_key", "entra"] = "api_key"
    entra: EntraSettings | None = None

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
    def _one_key_source(self) -> BackendSettings:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("give api_key or api_key_file, not both")
        if self.entra is not None and self.auth != "entra":
            if "auth" in self.model_fields_set:
                raise ValueError("entra: is set but auth is api_key")
            object.__setattr__(self, "auth", "entra")  # an `entra:` section says it
        if self.auth == "entra":
            if self.api_key is not None or self.api_key_file is not None:
                raise ValueError("auth entra sends Entra ID tokens, not a key: remove api_key/api_key_file "
                                 "(or AZURE_OPENAI_API_KEY), or use auth: api_key")
            if self.type == "openai":
                raise ValueError("an openai-type backend takes its API key, not Entra ID tokens")
        return self

    @property
    def entra_credential(self) -> EntraSettings | None:
        """The Entra ID credential of an `auth: entra` backend (DefaultAzureCredential when not spelled out)."""
        if self.auth != "entra":
            return None
        return self.entra or EntraSettings()

    @property
    def holds_credential(self) -> bool:
        """Whether the gateway authenticates to this backend itself (a key or Entra ID)."""
        return self.api_key is not None or self.api_key_file is not None or self.auth == "entra"

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        # Fail closed: an empty key must not quietly mean "forward the client's own key".
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty; set a key, or leave it out to forward each client's own key")
        return value

    def resolved_api_key(self) -> str | None:
        """The server's Azure key as it is now, read from the file if one is named (the worker's
        credential provider re-reads the file when it changes)."""
        if self.api_key_file is not None:
            try:
                key = read_key_file(self.api_key_file, "azure.api_key_file")
            except CredentialError as exc:
                raise ConfigError(str(exc)) from None
            if key is None:
                raise ConfigError(f"azure.api_key_file: {self.api_key_file} is empty")
            return key
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


BACKEND_NAME = r"^[A-Za-z0-9_-]{1,32}$"
# A DNS name in lower case with at least two labels, the last not all digits (no IP literal, no trailing dot).
FORWARD_PROXY_HOST = r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z0-9-]*[a-z-][a-z0-9-]*)$"


class PoolMember(_Strict):
    """One place a pooled model is served: a deployment on a backend. Lower `priority` numbers are
    tried first; within a priority, members share requests by `weight`."""

    backend: str
    deployment: str
    priority: Annotated[int, Field(ge=1, le=100)] = 1
    weight: Annotated[int, Field(ge=1, le=128)] = 1

    @field_validator("deployment")
    @classmethod
    def _deployment_name(cls, value: str) -> str:
        if not is_deployment_name(value):
            raise ValueError(f"{value!r} is not a deployment name Azure allows: 1-64 letters, digits, '-', '_' "
                             "and '.', not starting or ending with '.'")
        return value


StatusRange = Annotated[str, Field(pattern=r"^\s*\d{3}\s*-\s*\d{3}\s*$")]


class CircuitBreakerSettings(_Strict):
    """Per pool member (backend + deployment: Azure's quotas are per deployment), one state for the
    whole gateway (the breaker process, extproc/breaker). Azure API Management's semantics: `failures`
    failure statuses within `interval_seconds` trip the member for `trip_seconds`, or for the
    Retry-After it sent when that is longer (`honour_retry_after`), at most `max_trip_seconds`."""

    # Also what fails over inside a request: an answer with one of these goes to the next member.
    failure_statuses: list[int | StatusRange] = [429, "500-599"]
    failures: Annotated[int, Field(ge=1, le=1000)] = 3
    interval_seconds: Annotated[float, Field(gt=0, le=86400)] = 300
    trip_seconds: Annotated[float, Field(gt=0, le=86400)] = 60
    honour_retry_after: bool = True
    max_trip_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] = 86400

    @field_validator("failure_statuses")
    @classmethod
    def _statuses_are_failures(cls, value: list[int | str]) -> list[int | str]:
        if not value:
            raise ValueError("must name at least one status (e.g. [429])")
        for item in value:
            low, high = (item, item) if isinstance(item, int) else (int(part) for part in item.split("-"))
            if low > high:
                raise ValueError(f"{item!r}: a range goes from the lower status to the higher")
            if low < 400 or high > 599:
                raise ValueError(f"{item!r}: only error statuses (400-599) can be failures")
        return value

    @model_validator(mode="after")
    def _trip_within_max(self) -> CircuitBreakerSettings:
        if self.trip_seconds > self.max_trip_seconds:
            raise ValueError("trip_seconds is longer than max_trip_seconds")
        return self

    @property
    def statuses(self) -> tuple[int, ...]:
        """Every failure status, expanded and sorted."""
        codes: set[int] = set()
        for item in self.failure_statuses:
            low, high = (item, item) if isinstance(item, int) else (int(part) for part in item.split("-"))
            codes.update(range(low, high + 1))
        return tuple(sorted(codes))


class FailoverSettings(_Strict):
    # Tries across a pool's members for one request (the first included); Envoy sends them.
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    # A try without response headers this long fails over like a 5xx (slow reasoning answers
    # take minutes without streaming; streamed answers send their headers at once).
    try_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 600


class ClientKeySettings(_Strict):
    """One client's key, by its SHA-256 (`python -m extproc keys new` makes both): the key itself is
    never in the file. `key_env: VAR` / `key_file: PATH` are read at start and kept as their digest."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    key_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    key_file: Path | None = None  # where key_sha256 was read from (loading.py): re-read when it changes
    models: list[str] | None = None  # what the key may use; None: every model
    # Enforced by Envoy (one token bucket per key for the whole gateway): a minute's worth may come at once,
    # then the bucket refills evenly; over it, 429 with Retry-After.
    requests_per_minute: Annotated[int, Field(ge=1, le=6_000_000)] | None = None
    # Enforced by the usage process from the tokens Azure reports (the whole gateway, sliding windows): once
    # the last minute's (day's) answers reach it, the key gets 429 with Retry-After until enough falls out.
    tokens_per_minute: Annotated[int, Field(ge=1, le=10**12)] | None = None
    tokens_per_day: Annotated[int, Field(ge=1, le=10**14)] | None = None

    @property
    def token_limited(self) -> bool:
        return self.tokens_per_minute is not None or self.tokens_per_day is not None


class ByokSettings(_Strict):
    """Bring your own key: a client's bearer token RESOURCE:DEPLOYMENT:KEY[:API_VERSION] (the Node proxy's
    format) sends its request to https://RESOURCE.<host_suffix> with its own key. Envoy connects (a dynamic
    forward proxy held to that suffix); the gateway never connects to a host the client spells out."""

    enabled: bool = True
    host_suffix: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")] = \
        "openai.azure.com"  # sovereign clouds: openai.azure.us, openai.azure.cn
    port: Port = 443
    ca_file: Path | None = None  # the CA bundle to trust (default: the system's)
    # A DNS server Envoy asks for the resources' addresses, "IPV4:PORT" (default: the system's resolver).
    dns_resolver: str | None = None

    @field_validator("dns_resolver")
    @classmethod
    def _address_and_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        address, _, port = value.rpartition(":")
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise ValueError("must be IPV4:PORT, e.g. 10.0.0.10:53") from None
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("must be IPV4:PORT, e.g. 10.0.0.10:53")
        return value


class ClientSettings(_Strict):
    keys: list[ClientKeySettings] = []
    allow_unauthenticated: bool = False
    byok: bool | ByokSettings = False

    @property
    def byok_settings(self) -> ByokSettings | None:
        """Bring-your-own-key's settings when it is on (`byok: true` takes the defaults)."""
        if self.byok is True:
            return ByokSettings()
        if isinstance(self.byok, ByokSettings) and self.byok.enabled:
            return self.byok
        return None

    @field_validator("keys")
    @classmethod
    def _distinct(cls, value: list[ClientKeySettings]) -> list[ClientKeySettings]:
        names = [key.name for key in value]
        if len(set(names)) != len(names):
            raise ValueError("two keys have the same name")
        if len({key.key_sha256 for key in value}) != len(value):
            raise ValueError("the same key is listed twice")
        return value


class CorsSettings(_Strict):
    """Browser apps on these origins may call the gateway (Envoy answers the preflights; none: no CORS)."""

    allowed_origins: list[Annotated[str, Field(pattern=r"^https?://[a-z0-9.\-\[\]:]+$")]] = []  # lower case: as browsers send


class EndpointSettings(_Strict):
    # classic: /openai/deployments/{dep}/{op}?api-version=V (or /openai/{op} for responses, files, batches)
    # v1: /openai/v1/{op} with the deployment name as the body's model, no api-version
    api: Literal["classic", "v1"] = "classic"
    api_version: str | None = None


class MetricsSettings(_Strict):
    """Prometheus `/metrics` and the status page (`/`), served by the usage process. This machine only by
    default: a container or pod that Prometheus scrapes sets 0.0.0.0 (they show model and client names, no secret)."""

    enabled: bool = True
    address: str = "127.0.0.1"
    port: Port = 9464  # OpenTelemetry's Prometheus exporter's


class UsageSettings(_Strict):
    # Adds stream_options.include_usage to streamed chat/completions and completions requests that lack it, so
    # that Azure reports their tokens (counted for metrics and token limits); the client then receives the extra
    # final usage chunk (`choices: []`), as Azure sends it.
    # None: on exactly when a client key has a token limit (a stream that reports no usage would not count).
    include_stream_usage: bool | None = None


class ForwardProxySettings(_Strict):
    """Forward-proxy mode (HTTPS_PROXY): a CONNECT to one of `hosts` on port 443 is terminated by Envoy, TLS inside
    it with a certificate from the gateway's forward-proxy CA (made in <state_dir>/forward-proxy unless
    ca_cert_file/ca_key_file name the operator's), and the requests go through the same processing as direct
    ones. A CONNECT to anything else gets 403 and is never tunnelled."""

    enabled: bool = False
    hosts: Annotated[list[Annotated[str, Field(pattern=FORWARD_PROXY_HOST)]], Field(min_length=1)] = ["api.openai.com"]
    ca_cert_file: Path | None = None
    ca_key_file: Path | None = None

    @model_validator(mode="after")
    def _ca_together(self) -> ForwardProxySettings:
        if (self.ca_cert_file is None) != (self.ca_key_file is None):
            raise ValueError("ca_cert_file and ca_key_file must be given together")
        return self


class ListenSettings(_Strict):
    # This machine only by default: anyone who reaches the listener spends the Azure key, and the
    # gateway has no client authentication yet. Containers and shared gateways set 0.0.0.0 explicitly.
    address: str = "127.0.0.1"
    http_port: Port | None = 8080
    https_port: Port | None = 8443
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Holding a key without client keys, a gateway on loopback answers only requests whose Host is a loopback
    # name (a DNS-rebinding web page names its own site there): these are the other names it is reached by (a
    # reverse proxy on this machine that keeps the client's Host), any port. Listening beyond loopback, listing
    # names here turns the same rule on (the compose file does).
    allowed_hosts: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?$")]] = []

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
    # At least Envoy's own 1 MiB buffers (per connection, per HTTP/2 stream window): a body without a
    # declared length is held to the larger of the two, so a smaller limit would not hold on HTTP/2.
    max_request_body_bytes: Annotated[int, Field(ge=MIN_MAX_BODY_BYTES, le=512 * 1024 * 1024)] = DEFAULT_MAX_BODY_BYTES
    # A request whose body stops arriving (before the gateway has decided where it goes) gets a 408.
    body_idle_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 30


class Settings(_Strict):
    azure: BackendSettings = BackendSettings()
    backends: dict[Annotated[str, Field(pattern=BACKEND_NAME)], BackendSettings] = {}  # beside `azure:`
    # A model maps to one deployment on the default backend, or to a pool of members.
    models: dict[str, str | list[PoolMember]] = {}
    failover: FailoverSettings = FailoverSettings()
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    clients: ClientSettings = ClientSettings()
    cors: CorsSettings = CorsSettings()
    forward_proxy: ForwardProxySettings = ForwardProxySettings()
    # The model a request that names none is served by (the FastAPI proxy's README example); without
    # it such a request gets OpenAI's 400 "you must provide a model parameter".
    default_model: str | None = None
    unmapped_models: UnmappedModelPolicy = UnmappedModelPolicy.PASSTHROUGH
    endpoints: dict[str, EndpointSettings] = {}
    listen: ListenSettings = ListenSettings()
    envoy: EnvoySettings = EnvoySettings()
    extproc: ExtprocSettings = ExtprocSettings()
    limits: LimitSettings = LimitSettings()
    usage: UsageSettings = UsageSettings()
    metrics: MetricsSettings = MetricsSettings()
    state_dir: Path = Path("~/.local/state/aoai-gateway")

    @field_validator("models")
    @classmethod
    def _models_not_blank(cls, value: dict[str, str | list[PoolMember]]) -> dict[str, str | list[PoolMember]]:
        for model, deployment in value.items():
            if isinstance(deployment, list):
                if not model.strip():
                    raise ValueError("model names must not be empty")
                if not deployment:
                    raise ValueError(f"model {model!r}: a pool needs at least one member")
                continue
            if not model.strip() or not deployment.strip():
                raise ValueError(f"model and deployment names must not be empty (got {model!r}: {deployment!r})")
            if not is_deployment_name(deployment):
                raise ValueError(f"{deployment!r} (model {model!r}) is not a deployment name Azure allows: 1-64 letters, "
                                 "digits, '-', '_' and '.', not starting or ending with '.'")
        return value

    @field_validator("endpoints")
    @classmethod
    def _known_endpoints(cls, value: dict[str, EndpointSettings]) -> dict[str, EndpointSettings]:
        for name in value:
            if name not in ENDPOINT_NAMES:
                raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(ENDPOINT_NAMES)}")
        return value

    @property
    def stream_usage_added(self) -> bool:
        """Whether streamed chat/completions requests are sent asking for their usage (usage.include_stream_usage)."""
        if self.usage.include_stream_usage is None:
            return bool(self.token_limited_keys)
        return self.usage.include_stream_usage

    @model_validator(mode="after")
    def _token_limits_see_streams(self) -> Settings:
        if self.usage.include_stream_usage is False and self.token_limited_keys:
            raise ValueError("usage.include_stream_usage: false would let a token-limited key's streams go uncounted "
                             "(clients.keys[].tokens_per_minute/day): leave it out or set it true")
        return self

    @model_validator(mode="after")
    def _metrics_port_free(self) -> Settings:
        if self.metrics.enabled and self.metrics.port in (self.listen.http_port, self.listen.https_port,
                                                          self.envoy.admin_port):
            raise ValueError(f"metrics.port {self.metrics.port} is also a listener's or Envoy's admin port")
        return self

    @model_validator(mode="after")
    def _pools_name_known_backends(self) -> Settings:
        if DEFAULT_BACKEND in self.backends:
            raise ValueError(f"backends.{DEFAULT_BACKEND}: that name is the `azure:` section's backend; "
                             "give this one another name")
        known = {DEFAULT_BACKEND, *self.backends}
        for model, target in self.models.items():
            if not isinstance(target, list):
                continue
            for i, member in enumerate(target):
                if member.backend not in known:
                    raise ValueError(f"models.{model}[{i}].backend: unknown backend {member.backend!r}; "
                                     f"known: {', '.join(sorted(known))}")
            seen = [(m.backend, m.deployment) for m in target]
            if len(set(seen)) != len(seen):
                raise ValueError(f"models.{model}: a member (backend and deployment) is listed twice")
        for name, backend in self.backends.items():
            if backend.endpoint is None:
                raise ValueError(f"backends.{name}.endpoint: required")
            if backend.type == "openai" and backend.api_key is None and backend.api_key_file is None:
                # The client's own key is never sent on: an OpenAI backend needs one of its own.
                raise ValueError(f"backends.{name}: an openai-type backend needs its key "
                                 "(api_key, api_key_file or api_key_env)")
        if self.azure.type != "azure":
            raise ValueError("azure.type: the `azure:` section is an Azure OpenAI resource; "
                             "put other APIs in `backends:` and use them in pools")
        for model, target in self.pools.items():
            # Envoy resends one body to every member: the OpenAI members' model names must agree.
            openai_names = {m.deployment for m in target if self.all_backends[m.backend].type == "openai"}
            if len(openai_names) > 1:
                raise ValueError(f"models.{model}: its openai-type members name different models "
                                 f"({', '.join(sorted(openai_names))}); Envoy sends every member the same "
                                 "body, whose model can be only one of them")
        if not self.loopback_only and self.holds_credentials and not self.clients.keys \
                and not self.clients.allow_unauthenticated:
            raise ValueError(
                f"listen.address {self.listen.address!r} serves beyond this machine, and the gateway holds Azure keys "
                "but no client keys: anyone who reaches it would spend them. Add client keys (clients.keys; "
                "`python -m extproc keys new --name NAME` makes one), listen on 127.0.0.1, or, if something in front "
                "decides who connects (a network policy, a private network), set clients.allow_unauthenticated: true")
        if self.clients.keys and self.clients.byok_settings is not None:
            raise ValueError("clients.byok and clients.keys: the client's bearer token is either the gateway's key "
                             "or the client's own resource and key, not both")
        if self.clients.keys:
            # The client's key is the gateway's; it cannot also be the one sent on to Azure.
            passing = sorted(n for n, b in self.all_backends.items() if not b.holds_credential)
            if passing:
                raise ValueError(f"clients.keys: backend {passing[0]!r} has no key of its own (it would send each "
                                 "client's key on to Azure); with client keys every backend needs its key")
        if self.default_model is not None and not self.default_model.strip():
            raise ValueError("default_model: must not be empty")
        if (self.default_model is not None and self.unmapped_models is UnmappedModelPolicy.REJECT
                and self.default_model not in self.models):
            raise ValueError(f"default_model: {self.default_model!r} is not in `models`, and unmapped_models is "
                             "reject: every request naming no model would be refused")
        return self

    @property
    def all_backends(self) -> dict[str, BackendSettings]:
        """Every upstream resource by name: the `azure:` section's (`default`) and `backends:`."""
        return {DEFAULT_BACKEND: self.azure, **self.backends}

    @property
    def holds_credentials(self) -> bool:
        """Whether the gateway holds a credential of its own for some backend (anyone it serves spends it)."""
        return any(b.holds_credential for b in self.all_backends.values())

    @property
    def loopback_only(self) -> bool:
        """Whether the listeners are reachable from this machine only."""
        return is_loopback(self.listen.address)

    @property
    def pools(self) -> dict[str, list[PoolMember]]:
        return {model: target for model, target in self.models.items() if isinstance(target, list)}

    @property
    def circuits(self) -> tuple[tuple[str, str], ...]:
        """Each (backend, deployment) some pool uses, once, in order of appearance: the circuit
        breaker's unit, numbered by position here (the ext_proc, Envoy's config and the breaker
        process all number them from this one list)."""
        return tuple(dict.fromkeys((m.backend, m.deployment) for members in self.pools.values() for m in members))

    def circuit_of(self, member: PoolMember) -> int:
        """The number of a pool member's circuit in `circuits`."""
        return self.circuits.index((member.backend, member.deployment))

    def endpoint(self, name: str) -> EndpointSettings:
        return self.endpoints.get(name, EndpointSettings())

    def backend_api_version(self, backend: str) -> str:
        """A backend's default api-version: its own if it sets one, else the `azure:` section's."""
        own = self.all_backends[backend]
        return own.api_version if backend == DEFAULT_BACKEND or "api_version" in own.model_fields_set \
            else self.azure.api_version

    def api_version_for(self, name: str, backend: str = DEFAULT_BACKEND) -> str:
        """The api-version endpoint `name` is sent with to `backend`: the endpoint's own setting, else the
        backend's default raised to the endpoint's minimum."""
        options = self.endpoint(name)
        if options.api_version:
            return options.api_version
        default = self.backend_api_version(backend)
        minimum = MIN_API_VERSION_BY_ENDPOINT.get(name)
        # api-versions are dates (YYYY-MM-DD[-preview]), so string order is release order.
        if minimum and default < minimum:
            return minimum
        return default

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

    @property
    def entra_credentials(self) -> tuple[EntraSettings, ...]:
        """Each distinct Entra ID credential the backends use, once (backends with the same one share its
        token): the token process keeps one token each, the workers read them by position here."""
        return tuple(dict.fromkeys(b.entra_credential for b in self.all_backends.values()
                                   if b.entra_credential is not None))

    def token_path(self, credential: EntraSettings) -> Path:
        """Where the token process publishes this credential's token for the workers."""
        return self.socket_dir / f"entra-{self.entra_credentials.index(credential)}.token"

    @property
    def entra_ready_path(self) -> Path:
        """Made by the token process once it has asked for every token once (got it or not): `up` and the health
        check wait for it, so that the first requests do not find the gateway without a token."""
        return self.socket_dir / "entra.ready"

    @property
    def forward_proxy_dir(self) -> Path:
        """The forward proxy's CA (unless the operator's), its certificate and the clients' bundle."""
        return self.state_path / "forward-proxy"

    @property
    def token_limited_keys(self) -> tuple[ClientKeySettings, ...]:
        """The client keys with a token limit, in order: their position is their slot on the spend board."""
        return tuple(key for key in self.clients.keys if key.token_limited)

    @property
    def usage_process(self) -> bool:
        """Whether the usage process runs: for the metrics and status page, or to enforce token limits."""
        return self.metrics.enabled or bool(self.token_limited_keys)

    @property
    def usage_paths(self) -> UsagePaths:
        return UsagePaths(self.socket_dir / "usage-log.sock", self.socket_dir / "spend.board")

    @property
    def breaker_paths(self) -> BreakerPaths:
        return BreakerPaths(self.socket_dir / "breaker.sock", self.socket_dir / "breaker-log.sock",
                            self.socket_dir / "breaker.trips")


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def is_loopback_host(host: str) -> bool:
    """Whether an HTTP Host (name or address, maybe a port, IPv6 in brackets) is a loopback one: localhost,
    *.localhost, 127/8, ::1."""
    name = host.rpartition("]")[0].lstrip("[") if host.startswith("[") else host.partition(":")[0]
    name = name.lower()
    return name == "localhost" or name.endswith(".localhost") or is_loopback(name)


class BreakerPaths(NamedTuple):
    """Where the breaker process (run only when pools exist) listens and publishes."""

    http: Path  # Envoy's health checks (one per member) and `python -m extproc status`
    access_log: Path  # Envoy's gRPC access log of the pool tries that failed
    trips: Path  # each circuit's trip deadline, read by every ext_proc worker (extproc/breaker/board.py)


class UsagePaths(NamedTuple):
    """Where the usage process (extproc/usage) listens and publishes."""

    access_log: Path  # Envoy's gRPC access log of every request
    board: Path  # each token-limited key's blocked-until per window, read by every ext_proc worker
