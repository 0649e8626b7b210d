"""The translation core: an OpenAI API request in, a decision out. Pure; no gRPC, no I/O.

`Translator` is compiled once from `Settings`. Envoy's ext_proc glue calls `on_headers` with the
request headers and, when that returns `AwaitBody`, calls its `finish` with the buffered body.
`finish(b"")` never forwards (an empty body is never a valid request to send on): the glue relies
on it for requests without a body and for a request of headers and trailers alone.
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
from .jsonbody import InvalidJson, kind_of, names_more_than_once, parse_json, replace_top_level_string
from .mapping import ModelMapper
from .multipart import DuplicateFieldError, FormField, MultipartError, boundary_of, find_field, is_multipart, replace_field

AZURE_CLUSTER = "azure"  # the Envoy cluster of the (today single) Azure resource
# images/edits also takes JSON (image URLs or file ids); these two take only multipart/form-data.
MULTIPART_ONLY_OPERATIONS = frozenset({"audio/transcriptions", "audio/translations"})
RESOURCE_METHODS = frozenset({"GET", "POST", "DELETE"})
AZURE_DEPLOYMENTS_PREFIX = "/openai/deployments/"
# Azure-form uploads whose bodies stream (never buffered, may exceed the body limit) and carry no model.
AZURE_UPLOAD_PREFIXES = ("/openai/files", "/openai/v1/files", "/openai/uploads", "/openai/v1/uploads")


# --- query strings --------------------------------------------------------------------------------


def _is_api_version(param: str) -> bool:
    # Compared decoded and case-insensitively: Azure (ASP.NET) reads query keys that way, so
    # `API-Version=x` next to ours would be a second, conflicting api-version.
    return unquote(param.partition("=")[0]).lower() == "api-version"


def has_api_version(raw_query: str) -> bool:
    """Whether the query has an api-version parameter (by key, not a substring of another key)."""
    return bool(raw_query) and any(_is_api_version(p) for p in raw_query.split("&"))


def _query_merger(api_version: str | None) -> Callable[[str], str]:
    """merge_query with the api-version fixed and its encoding done once, at compile time."""
    tail = None if api_version is None else "api-version=" + quote(api_version, safe="")
    alone = "?" + tail if tail is not None else ""

    def merge(raw_query: str) -> str:
        if not raw_query:
            return alone  # the common case: no client query at all
        kept = [p for p in raw_query.split("&") if p and not _is_api_version(p)]
        if tail is not None:
            kept.append(tail)
        return "?" + "&".join(kept) if kept else ""

    return merge


def merge_query(raw_query: str, api_version: str | None) -> str:
    """The client's query parameters, untouched and in order, with api-version set exactly once (or
    removed): the client's own api-version, in any case or encoding, is dropped."""
    return _query_merger(api_version)(raw_query)


# --- paths ----------------------------------------------------------------------------------------


def escapes_its_prefix(path: str) -> bool:
    """Whether the path has a dot segment (`..`, `.`, also percent-encoded or after a backslash).

    Envoy does not normalize paths here and Azure may: `/v1/files/../deployments/x/...` would be
    routed as a file request and served as a call to deployment x. No API path has one.
    """
    if "." not in path and "%" not in path and "\\" not in path:
        return False
    return any(segment in (".", "..") for segment in unquote(path).replace("\\", "/").split("/"))


# --- the translator -------------------------------------------------------------------------------


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
        self._default_query = _query_merger(settings.azure.api_version)
        self._body_routes: dict[str, _BodyRoute] = {}
        self._resource_prefixes: dict[str, tuple[str, Callable[[str], str]]] = {}
        for op in DEPLOYMENT_OPERATIONS:
            self._body_routes["/v1/" + op] = self._deployment_route(settings, op, self._mapper.known_deployments)
        for op in RESOURCE_OPERATIONS:
            v1 = settings.endpoint(op).api == "v1"
            merge = _query_merger(None if v1 else settings.api_version_for(op))
            self._resource_prefixes["/v1/" + op] = ("/openai/v1/" + op if v1 else "/openai/" + op, merge)
        responses_prefix, responses_query = self._resource_prefixes["/v1/responses"]
        self._body_routes["/v1/responses"] = _BodyRoute(
            "responses",
            lambda _dep, query: responses_prefix + responses_query(query),
            model_in_body=True,
        )
        created = int(time.time())
        model_objects = [
            {"id": name, "object": "model", "created": created, "owned_by": "azure-openai"}
            for name in self._mapper.known_models
        ]
        # Every /v1/models answer is built once: they only change with the config.
        self._models_list = Reply(200, orjson.dumps({"object": "list", "data": model_objects}))
        self._model_replies = {obj["id"]: Reply(200, orjson.dumps(obj)) for obj in model_objects}

    @property
    def has_server_key(self) -> bool:
        """Whether every forward carries the server's key (else the client's own credential)."""
        return self._server_key is not None

    # --- compile time ---------------------------------------------------------------------------

    @staticmethod
    def _deployment_route(settings: Settings, op: str, known_deployments: tuple[str, ...]) -> _BodyRoute:
        if settings.endpoint(op).api == "v1":
            path = "/openai/v1/" + op
            no_version = _query_merger(None)
            return _BodyRoute(op, lambda _dep, query: path + no_version(query), model_in_body=True)
        merge = _query_merger(settings.api_version_for(op))
        suffix = "/" + op

        def prefix_of(dep: str) -> str:
            return AZURE_DEPLOYMENTS_PREFIX + quote(dep, safe="") + suffix

        # The mapped deployments' escaped paths, built once; other names (passthrough) per request.
        prefixes = {dep: prefix_of(dep) for dep in known_deployments}

        def path_for(dep: str, query: str) -> str:
            prefix = prefixes.get(dep)
            return (prefix if prefix is not None else prefix_of(dep)) + merge(query)

        return _BodyRoute(op, path_for, model_in_body=False)

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
            if escapes_its_prefix(path):
                return Reply.error(errors.invalid_url(head.method, path))
            if self._mapper.rejects_unknown:
                return self._azure_form_under_reject(head, path, query, api_key)
            return Forward(self._azure_form_path(path, query), api_key, AZURE_CLUSTER)

        for prefix, (azure_prefix, merge) in self._resource_prefixes.items():
            if path == prefix or path.startswith(prefix + "/"):
                # `/v1/responses/` is no id, and Azure could take it for `/v1/responses` unmapped.
                if head.method not in RESOURCE_METHODS or path == prefix + "/" or escapes_its_prefix(path):
                    break
                if api_key is None:
                    return Reply.error(errors.MISSING_API_KEY)
                forward = Forward(azure_prefix + path[len(prefix) :] + merge(query), api_key, AZURE_CLUSTER)
                if self._mapper.rejects_unknown:
                    # e.g. /v1/responses/input_tokens: a model in the body reaches Azure as it is.
                    return self._body_checked_under_reject(head, forward)
                return forward

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
        if path.startswith("/openai/v1/") or has_api_version(query):
            return path + ("?" + query if query else "")
        return path + self._default_query(query)

    def _azure_form_under_reject(self, head: RequestHead, path: str, query: str, api_key: str) -> HeadersDecision:
        """`unmapped_models: reject` holds for Azure-form requests too: the deployment they name, in
        the path or (v1 surface, responses, assistants...) in the body's model, must be a mapped one."""
        forward = Forward(self._azure_form_path(path, query), api_key, AZURE_CLUSTER)
        if path[: len(AZURE_DEPLOYMENTS_PREFIX)].lower() == AZURE_DEPLOYMENTS_PREFIX:
            # Azure serves the deployment in the path (matched case-insensitively, as Azure may);
            # a model in the body is not read for routing.
            deployment = unquote(path[len(AZURE_DEPLOYMENTS_PREFIX) :].partition("/")[0])
            if not self._mapper.allows_deployment(deployment):
                return Reply.error(errors.deployment_not_found(deployment, self._mapper.known_deployments))
            return forward
        return self._body_checked_under_reject(head, forward)

    def _body_checked_under_reject(self, head: RequestHead, forward: Forward) -> HeadersDecision:
        """`forward` once the body's model is checked (_check_azure_form_body); at once for requests
        without a body and for uploads (they stream unread, may exceed the body limit, name no model)."""
        if head.method != "POST" or not head.has_body or forward.path.startswith(AZURE_UPLOAD_PREFIXES):
            return forward
        content_type = head.content_type
        return AwaitBody(lambda body: self._check_azure_form_body(forward, content_type, body))

    def _check_azure_form_body(self, forward: Forward, content_type: str, body: bytes) -> BodyDecision:
        """Forward the body unchanged if the deployment its model names is a mapped one (or it has no
        model: nothing to route by); anything unreadable is refused, not forwarded unchecked."""
        if is_multipart(content_type):
            if not body:
                return Reply.error(errors.INVALID_MULTIPART)
            field = _model_field(body, content_type)
            if isinstance(field, Reply):
                return field
            models: list[object] = [field.value if field is not None else None]
        else:
            try:
                document = parse_json(body)
            except InvalidJson:
                return Reply.error(errors.INVALID_JSON)
            if not isinstance(document, dict):
                return forward  # no model to route by; Azure answers for itself
            if names_more_than_once(body, document, "model"):
                return Reply.error(errors.DUPLICATE_MODEL)
            session = document.get("session")  # realtime client secrets name the deployment there
            models = [document.get("model"), session.get("model") if isinstance(session, dict) else None]
        for named in models:
            if isinstance(named, str) and named and not self._mapper.allows_deployment(named):
                return Reply.error(errors.deployment_not_found(named, self._mapper.known_deployments))
        return forward

    def _models_reply(self, method: str, path: str) -> Reply:
        if method != "GET":
            return Reply.error(errors.invalid_url(method, path))
        if path == "/v1/models":
            return self._models_list
        model = unquote(path.removeprefix("/v1/models/"))
        found = self._model_replies.get(model)
        if found is None:
            return Reply.error(errors.model_not_found(model, self._mapper.known_models))
        return found

    def _on_body(self, route: _BodyRoute, query: str, content_type: str, api_key: str, body: bytes) -> BodyDecision:
        if is_multipart(content_type):
            return self._on_multipart(route, query, api_key, body, content_type)
        if route.operation in MULTIPART_ONLY_OPERATIONS:
            return Reply.error(errors.INVALID_MULTIPART)
        return self._on_json(route, query, api_key, body)

    def _on_json(self, route: _BodyRoute, query: str, api_key: str, body: bytes) -> BodyDecision:
        try:
            document = parse_json(body)
        except InvalidJson:
            return Reply.error(errors.INVALID_JSON)
        if not isinstance(document, dict):
            return Reply.error(errors.body_not_object(kind_of(document)))
        # Several `model`s: parsers differ on which counts, so the one checked here might not be
        # the one Azure reads (v1 surface, responses). Refused everywhere, for one rule.
        if names_more_than_once(body, document, "model"):
            return Reply.error(errors.DUPLICATE_MODEL)
        model = document.get("model")
        if model is None or model == "":
            return Reply.error(errors.MISSING_MODEL)
        if not isinstance(model, str):
            return Reply.error(errors.MODEL_NOT_STRING)
        if not model.isascii() and not _is_text(model):
            return Reply.error(errors.MODEL_NOT_TEXT)
        deployment = self._mapper.deployment_for(model)
        if deployment is None:
            return Reply.error(errors.model_not_found(model, self._mapper.known_models))
        new_body = None
        if route.model_in_body and deployment != model:
            try:
                new_body = replace_top_level_string(body, "model", deployment)
            except InvalidJson:  # parsed and one model, yet not walkable: not expected; never forward a guess
                return Reply.error(errors.INVALID_JSON)
        return Forward(route.path_for(deployment, query), api_key, AZURE_CLUSTER, new_body)

    def _on_multipart(self, route: _BodyRoute, query: str, api_key: str, body: bytes, content_type: str) -> BodyDecision:
        field = _model_field(body, content_type)
        if isinstance(field, Reply):
            return field
        if field is None or not field.value:
            return Reply.error(errors.MISSING_MODEL)
        deployment = self._mapper.deployment_for(field.value)
        if deployment is None:
            return Reply.error(errors.model_not_found(field.value, self._mapper.known_models))
        new_body = None
        if route.model_in_body and deployment != field.value:
            new_body = replace_field(body, field, deployment)
        return Forward(route.path_for(deployment, query), api_key, AZURE_CLUSTER, new_body)


def _model_field(body: bytes, content_type: str) -> FormField | Reply | None:
    """The multipart body's `model` field (None when it has none), or the reply refusing the body."""
    boundary = boundary_of(content_type)
    if boundary is None:  # multipart/mixed, or no boundary: nothing Azure can read either
        return Reply.error(errors.INVALID_MULTIPART)
    try:
        return find_field(body, boundary, "model")
    except DuplicateFieldError:
        return Reply.error(errors.DUPLICATE_MODEL)
    except MultipartError:
        return Reply.error(errors.INVALID_MULTIPART)


def _is_text(value: str) -> bool:
    """Whether the string encodes to UTF-8: JSON's `\\ud800` escape decodes to a lone surrogate,
    which no path or body can carry."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
