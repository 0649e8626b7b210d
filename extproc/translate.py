"""The translation core: an OpenAI API request in, a decision out. Pure; no gRPC, no I/O.

`Translator` is compiled once from `Settings`. Envoy's ext_proc glue calls `on_headers` with the
request headers and, when that returns `AwaitBody`, calls its `finish` with the buffered body.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote, unquote

import orjson

from . import errors
from .config import DEPLOYMENT_OPERATIONS, RESOURCE_OPERATIONS, Settings
from .decision import AwaitBody, BodyDecision, Forward, HeadersDecision, Reply, RequestHead
from .mapping import ModelMapper
from .multipart import MultipartError, boundary_of, find_field, replace_field

AZURE_CLUSTER = "azure"  # the Envoy cluster of the (today single) Azure resource
# images/edits also takes JSON (image URLs or file ids); these two take only multipart/form-data.
MULTIPART_ONLY_OPERATIONS = frozenset({"audio/transcriptions", "audio/translations"})
RESOURCE_METHODS = frozenset({"GET", "POST", "DELETE"})


def merge_query(raw_query: str, api_version: str | None) -> str:
    """The client's query parameters, untouched, with api-version set exactly once (or removed)."""
    kept = [p for p in raw_query.split("&") if p and unquote(p.partition("=")[0]) != "api-version"]
    if api_version is not None:
        kept.append("api-version=" + quote(api_version, safe=""))
    return "?" + "&".join(kept) if kept else ""


@dataclass(frozen=True, slots=True)
class _BodyRoute:
    """How a request whose model is in the body is sent on, once the deployment is known."""

    operation: str
    path_for: Callable[[str, str], str]  # (deployment, client query) -> Azure path
    model_in_body: bool  # Azure reads the deployment from the body's model (v1 API, responses)


class Translator:
    def __init__(self, settings: Settings) -> None:
        self._server_key = settings.azure.resolved_api_key()
        self._mapper = ModelMapper(settings.models, settings.unmapped_models)
        self._default_api_version = settings.azure.api_version
        self._body_routes: dict[str, _BodyRoute] = {}
        self._resource_prefixes: dict[str, tuple[str, str | None]] = {}
        for op in DEPLOYMENT_OPERATIONS:
            self._body_routes["/v1/" + op] = self._deployment_route(settings, op)
        for op in RESOURCE_OPERATIONS:
            v1 = settings.endpoint(op).api == "v1"
            version = None if v1 else settings.api_version_for(op)
            self._resource_prefixes["/v1/" + op] = ("/openai/v1/" + op if v1 else "/openai/" + op, version)
        responses_prefix, responses_version = self._resource_prefixes["/v1/responses"]
        self._body_routes["/v1/responses"] = _BodyRoute(
            "responses",
            lambda _dep, query: responses_prefix + merge_query(query, responses_version),
            model_in_body=True,
        )
        created = int(time.time())
        self._model_objects = {
            name: {"id": name, "object": "model", "created": created, "owned_by": "azure-openai"}
            for name in self._mapper.known_models
        }
        self._models_list = Reply(200, orjson.dumps({"object": "list", "data": list(self._model_objects.values())}))

    @property
    def has_server_key(self) -> bool:
        """Whether every forward carries the server's key (else the client's own credential)."""
        return self._server_key is not None

    # --- compile time ---------------------------------------------------------------------------

    @staticmethod
    def _deployment_route(settings: Settings, op: str) -> _BodyRoute:
        if settings.endpoint(op).api == "v1":
            path = "/openai/v1/" + op
            return _BodyRoute(op, lambda _dep, query: path + merge_query(query, None), model_in_body=True)
        version = settings.api_version_for(op)
        suffix = "/" + op
        return _BodyRoute(
            op,
            lambda dep, query: "/openai/deployments/" + quote(dep, safe="") + suffix + merge_query(query, version),
            model_in_body=False,
        )

    # --- per request ----------------------------------------------------------------------------

    def on_headers(self, head: RequestHead) -> HeadersDecision:
        path, _, query = head.path.partition("?")
        api_key = self._api_key_for(head)

        route = self._body_routes.get(path)
        if route is not None:
            if head.method != "POST":
                return Reply.error(errors.invalid_url(head.method, path))
            if api_key is None:
                return Reply.error(errors.MISSING_API_KEY)
            content_type = head.content_type
            return AwaitBody(lambda body: self._on_body(route, query, content_type, api_key, body))

        if path == "/v1/models" or path.startswith("/v1/models/"):
            return self._models_reply(head.method, path)

        if path.startswith("/openai/"):
            if api_key is None:
                return Reply.error(errors.MISSING_API_KEY)
            return Forward(self._azure_form_path(path, query), api_key, AZURE_CLUSTER)

        for prefix, (azure_prefix, version) in self._resource_prefixes.items():
            if path == prefix or path.startswith(prefix + "/"):
                if head.method not in RESOURCE_METHODS:
                    break
                if api_key is None:
                    return Reply.error(errors.MISSING_API_KEY)
                return Forward(azure_prefix + path[len(prefix) :] + merge_query(query, version), api_key, AZURE_CLUSTER)

        return Reply.error(errors.invalid_url(head.method, path))

    def _api_key_for(self, head: RequestHead) -> str | None:
        """The server's key; without one, the client's own (Bearer token or api-key header)."""
        if self._server_key is not None:
            return self._server_key
        scheme, _, token = head.authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return head.api_key or None

    def _azure_form_path(self, path: str, query: str) -> str:
        """Requests already in Azure form pass through; a missing api-version gets the default."""
        if path.startswith("/openai/v1/") or "api-version=" in query:
            return path + ("?" + query if query else "")
        return path + merge_query(query, self._default_api_version)

    def _models_reply(self, method: str, path: str) -> Reply:
        if method != "GET":
            return Reply.error(errors.invalid_url(method, path))
        if path == "/v1/models":
            return self._models_list
        model = unquote(path.removeprefix("/v1/models/"))
        found = self._model_objects.get(model)
        if found is None:
            return Reply.error(errors.model_not_found(model, self._mapper.known_models))
        return Reply(200, orjson.dumps(found))

    def _on_body(self, route: _BodyRoute, query: str, content_type: str, api_key: str, body: bytes) -> BodyDecision:
        boundary = boundary_of(content_type) if content_type.startswith("multipart/") else None
        if boundary is not None:
            return self._on_multipart(route, query, api_key, body, boundary)
        if route.operation in MULTIPART_ONLY_OPERATIONS:
            return Reply.error(errors.INVALID_MULTIPART)
        return self._on_json(route, query, api_key, body)

    def _on_json(self, route: _BodyRoute, query: str, api_key: str, body: bytes) -> BodyDecision:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Reply.error(errors.INVALID_JSON)
        if not isinstance(document, dict):
            return Reply.error(errors.BODY_NOT_OBJECT)
        model = document.get("model")
        if model is None or model == "":
            return Reply.error(errors.MISSING_MODEL)
        if not isinstance(model, str):
            return Reply.error(errors.MODEL_NOT_STRING)
        deployment = self._mapper.deployment_for(model)
        if deployment is None:
            return Reply.error(errors.model_not_found(model, self._mapper.known_models))
        new_body = None
        if route.model_in_body and deployment != model:
            document["model"] = deployment  # same key, same position: only the value changes
            new_body = orjson.dumps(document)
        return Forward(route.path_for(deployment, query), api_key, AZURE_CLUSTER, new_body)

    def _on_multipart(self, route: _BodyRoute, query: str, api_key: str, body: bytes, boundary: bytes) -> BodyDecision:
        try:
            field = find_field(body, boundary, "model")
        except MultipartError:
            return Reply.error(errors.INVALID_MULTIPART)
        if field is None or not field.value:
            return Reply.error(errors.MISSING_MODEL)
        deployment = self._mapper.deployment_for(field.value)
        if deployment is None:
            return Reply.error(errors.model_not_found(field.value, self._mapper.known_models))
        new_body = None
        if route.model_in_body and deployment != field.value:
            new_body = replace_field(body, field, deployment)
        return Forward(route.path_for(deployment, query), api_key, AZURE_CLUSTER, new_body)
