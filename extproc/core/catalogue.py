"""The endpoint catalogue: one declarative entry per OpenAI endpoint the gateway serves.

The translator's route table (core/routes.py), the Envoy routes that stream an upload instead of
buffering it (envoy_config/rendering.py), the names `endpoints:` accepts in the config, and the README's
"What is translated" table (`markdown_table`, checked by a test) all come from `CATALOGUE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ModelIn(Enum):
    """Where the request names its model."""

    JSON = "JSON body `model`"
    MULTIPART = "multipart form field `model`"
    JSON_OR_MULTIPART = "multipart form field `model` (also takes JSON)"
    NOWHERE = "(none) decided from the headers"


class Scope(Enum):
    """How Azure addresses the operation."""

    DEPLOYMENT = "/openai/deployments/{deployment}/{op}"  # the deployment in the path
    RESOURCE = "/openai/{op}"  # resource-level; any deployment is named in the body


class Upload(Enum):
    BUFFERED = "buffered"  # the ext_proc reads the whole body (the model is in it)
    STREAMED = "streamed"  # decided from the headers; the body streams to Azure, never held


@dataclass(frozen=True, slots=True)
class Operation:
    """One OpenAI endpoint: `POST /v1/{path}` (or, with `subpaths`, everything below it too)."""

    path: str  # after /v1/, e.g. "chat/completions"
    methods: frozenset[str]
    model_in: ModelIn
    scope: Scope
    upload: Upload
    config_name: str = ""  # the key under `endpoints:` (default: `path`)
    subpaths: bool = False  # `/v1/{path}/...` (ids, sub-resources) belong to it, not `/v1/{path}` itself
    min_api_version: str | None = None  # the oldest api-version Azure serves it on (classic surface)

    @property
    def name(self) -> str:
        return self.config_name or self.path

    @property
    def openai_path(self) -> str:
        return "/v1/" + self.path + ("/" if self.subpaths else "")


_POST = frozenset({"POST"})
_ANY = frozenset({"GET", "POST", "DELETE"})
# The Responses API exists only from this (preview) api-version on, on the classic surface; an older
# global api_version (common in configs written for chat) must not break it.
RESPONSES_MIN_API_VERSION = "2025-04-01-preview"


def _deployment(path: str, model_in: ModelIn = ModelIn.JSON) -> Operation:
    return Operation(path, _POST, model_in, Scope.DEPLOYMENT, Upload.BUFFERED)


CATALOGUE: tuple[Operation, ...] = (
    _deployment("chat/completions"),
    _deployment("completions"),
    _deployment("embeddings"),
    _deployment("audio/transcriptions", ModelIn.MULTIPART),
    _deployment("audio/translations", ModelIn.MULTIPART),
    _deployment("audio/speech"),
    _deployment("images/generations"),
    _deployment("images/edits", ModelIn.JSON_OR_MULTIPART),
    Operation("responses", _POST, ModelIn.JSON, Scope.RESOURCE, Upload.BUFFERED,
              min_api_version=RESPONSES_MIN_API_VERSION),
    # Retrieval, cancel, input items, ... of a stored response.
    Operation("responses", _ANY, ModelIn.NOWHERE, Scope.RESOURCE, Upload.STREAMED, subpaths=True,
              min_api_version=RESPONSES_MIN_API_VERSION),
    Operation("files", _ANY, ModelIn.NOWHERE, Scope.RESOURCE, Upload.STREAMED),
    Operation("batches", _ANY, ModelIn.NOWHERE, Scope.RESOURCE, Upload.STREAMED),
)
# The names `endpoints:` accepts, in catalogue order, each once.
ENDPOINT_NAMES: tuple[str, ...] = tuple(dict.fromkeys(op.name for op in CATALOGUE))
MIN_API_VERSION_BY_ENDPOINT: dict[str, str] = {
    op.name: op.min_api_version for op in CATALOGUE if op.min_api_version is not None
}
# Azure-form uploads whose bodies stream (never buffered, may exceed the body limit) and carry no model.
AZURE_UPLOAD_PREFIXES = ("/openai/files", "/openai/v1/files", "/openai/uploads", "/openai/v1/uploads")


AZURE_FORM_PREFIX = "/openai"  # requests already in Azure form
# Azure-form paths that name their deployment: decided from the path, the body never read. (The second is
# not a path of Azure's v1 surface today, but a reader could serve it as one: it is checked the same way.)
AZURE_DEPLOYMENTS_PREFIX = "/openai/deployments/"
AZURE_DEPLOYMENT_PATH_PREFIXES = (AZURE_DEPLOYMENTS_PREFIX, "/openai/v1/deployments/")


def headers_only_prefixes(bodies_checked: bool) -> tuple[str, ...]:
    """The paths whose bodies Envoy streams without buffering them for the ext_proc (their routes'
    ext_proc body mode is NONE): the streamed endpoints and the Azure form. Under `unmapped_models:
    reject` (`bodies_checked`) the ext_proc reads the body of every other POST there (it may name a
    deployment), so only the uploads and the paths that name their deployment keep streaming, and the
    rest is buffered by its route: a route switched from NONE to BUFFERED by the headers' answer lets
    Envoy forward a chunked body over the limit, or hand the ext_proc only part of it
    (tests/hostile/test_body_limits.py)."""
    streamed = [op for op in CATALOGUE if op.upload is Upload.STREAMED]
    if not bodies_checked:
        return (*(op.openai_path for op in streamed), AZURE_FORM_PREFIX)
    uploads = [op.openai_path for op in streamed if f"/openai/{op.path}".startswith(AZURE_UPLOAD_PREFIXES)]
    return (*uploads, *AZURE_UPLOAD_PREFIXES, *(prefix.rstrip("/") for prefix in AZURE_DEPLOYMENT_PATH_PREFIXES))


def markdown_table() -> str:
    """The README's table of the OpenAI endpoints and what each becomes (classic surface)."""
    lines = ["| OpenAI request | Sent to Azure | Model taken from | Body |", "| --- | --- | --- | --- |"]
    for op in CATALOGUE:
        methods = ", ".join(m for m in ("GET", "POST", "DELETE") if m in op.methods)
        suffix = "{id}…" if op.subpaths else ("…" if op.model_in is ModelIn.NOWHERE else "")
        request = f"{methods} /v1/{op.path}{'/' if op.subpaths else ''}{suffix}"
        if op.scope is Scope.DEPLOYMENT:
            target = f"/openai/deployments/{{deployment}}/{op.path}"
        else:
            target = f"/openai/{op.path}{'/' if op.subpaths else ''}{suffix}"
        lines.append(f"| `{request}` | `{target}?api-version=V` | {op.model_in.value} | {op.upload.value} |")
    return "\n".join(lines)
