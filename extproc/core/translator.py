"""The translation core: an OpenAI API request in, a decision out. Pure; no gRPC, no I/O.

`Translator` takes a compiled `Gateway`. Envoy's ext_proc glue calls `on_headers` with the request
headers and, when that returns `AwaitBody`, calls its `finish` with the buffered body.
`finish(b"")` never forwards (an empty body is never a valid request to send on): the glue relies
on it for requests without a body and for a request of headers and trailers alone.

URL families, each handled by one method: an endpoint whose model is in the body (`_model_in_body`),
an endpoint decided from the headers (`_resource`), `/v1/models` (`ModelsEndpoint`), and requests
already in Azure form (`_azure_form`). Anything else is a 404. Before them: the client key
(`_client_key_first`, then `_restricted` for a key with a model list) or a bring-your-own-key key
(`_own_resource`); after them, for limited keys and `unmapped_models: reject`, the deployments a request
names besides its model (`_side_roads_checked`). With `usage.include_stream_usage`, a streamed chat or legacy
completions request is sent asking for its token usage (`_stream_options_wanted`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable
from urllib.parse import unquote

import orjson

from ..auth.client import ClientKeys, presented_key, proxy_key
from ..auth.upstream import API_KEY_HEADER, Headers
from ..routing import Backend, Pool, Target
from ..routing.byok import ByokKey, NotByok, parse_byok
from . import errors
from .bodies import BodyModel, model_name, read_model
from .catalogue import AZURE_DEPLOYMENT_PATH_PREFIXES, AZURE_DEPLOYMENTS_PREFIX, AZURE_UPLOAD_PREFIXES
from .decision import AwaitBody, BodyDecision, Forward, HeadersDecision, Reply, RequestHead, Try, Tunnel
from .gateway import ByokTarget, Gateway
from .models_endpoint import ModelsEndpoint
from .jsonbody import (DuplicateMember, InvalidJson, TooManyMembers, insert_top_level_json, insert_top_level_string,
                       replace_top_level_json, replace_top_level_string)
from .multipart import is_multipart, replace_field
from .paths import (azure_form_segments_ok, escapes_its_prefix, has_api_version, merge_query, query_values,
                    without_credentials)
from .routes import BodyRoute, ResourceRoute

AZURE_METHODS = frozenset({"GET", "POST", "DELETE"})  # what Azure's data-plane API uses (OPTIONS: CORS, later)
_Family = Callable[[RequestHead, str, str], HeadersDecision]  # (head, path, query) -> decision
# The endpoints whose streamed answers report token usage only when the request asks (`stream_options`);
# the Responses API reports it in response.completed, asked or not.
STREAM_USAGE_OPERATIONS = frozenset({"chat/completions", "completions"})


class Translator:
    def __init__(self, gateway: Gateway) -> None:
        self._models = gateway.models
        self._routes = gateway.routes
        self._max_body = gateway.limits.max_request_body_bytes
        self._body_routes = gateway.routes.body_routes
        self._member_body_routes = {name: table.body_routes for name, table in gateway.member_routes.items()}
        self._models_endpoint = gateway.models_endpoint
        self._trips = gateway.trips
        self._default_model = gateway.default_model
        self._clients = gateway.clients
        self._byok = gateway.byok
        self._spend = gateway.spend
        self._stream_usage = gateway.include_stream_usage
        self._checks_tunnels = gateway.checks_tunnels
        # /v1/models as each key with a model list sees it (built once per list).
        self._models_endpoints: dict[frozenset[str], ModelsEndpoint] = {}
        self._deployments: dict[frozenset[str], frozenset[str]] = {}  # of each list's models
        self._auth_unavailable: dict[str, Reply] = {}  # by credential kind
        self._deployments_by_backend: dict[tuple[frozenset[str], str], frozenset[str]] = {}  # ... on one backend
        # (bare path or None, prefix, handler): the first the path equals or starts with.
        families: list[tuple[str | None, str, _Family]] = [
            ("/v1/models", "/v1/models/", lambda head, path, _query: self._models_endpoint.answer(head.method, path)),
            (None, "/openai/", self._azure_form),
        ]
        for route in gateway.routes.resource_routes:
            families.append((route.prefix, route.prefix + "/", self._resource_family(route)))
        self._families = tuple(families)

    # --- per request ----------------------------------------------------------------------------

    def on_headers(self, head: RequestHead) -> HeadersDecision:
        if self._clients is not None:
            if self._checks_tunnels and head.method == "CONNECT":
                return self._tunnel(head, self._clients)
            return self._client_key_first(head, self._clients)
        if self._byok is not None and (":" in head.authorization or ":" in head.api_key):
            return self._own_resource(head, self._byok)
        return self._decide(head)

    # --- bring your own key: the client's resource, deployment and key in its API key ---------------

    def _own_resource(self, head: RequestHead, target: ByokTarget) -> HeadersDecision:
        """The client's key as a bearer token (OpenAI SDKs) or `api-key` (AzureOpenAI clients)."""
        token = presented_key(head.authorization, head.api_key) or ""
        try:
            byok = parse_byok(token)
        except NotByok as exc:
            return errors.byok_malformed(str(exc))
        if byok is None:
            return self._decide(head)
        path, _, query = head.path.partition("?")
        route = self._body_routes.get(path)
        if route is None:
            return errors.BYOK_ENDPOINTS_ONLY
        if head.method != "POST":
            return errors.invalid_url(head.method, path)
        if (too_large := self._too_large(head)) is not None:
            return too_large
        return AwaitBody(lambda body: self._to_own_resource(head, route, query, byok, target, body))

    def _to_own_resource(self, head: RequestHead, route: BodyRoute, query: str, byok: ByokKey, target: ByokTarget,
                         body: bytes) -> BodyDecision:
        found = read_model(body, head.content_type, multipart_only=route.multipart_only)
        if isinstance(found, Reply):
            return found
        model = model_name(found)
        if isinstance(model, Reply):
            return model
        deployment = byok.deployment_for(model)
        if deployment is None:
            return errors.model_not_found(model, byok.models)
        path = route.path_for(deployment, query)
        if byok.api_version is not None and ("?api-version=" in path or "&api-version=" in path):
            path = path.partition("?")[0] + merge_query(query, byok.api_version)
        new_body = None
        if route.model_in_body and deployment != model:
            new_body = _with_model(body, found, deployment)
            if isinstance(new_body, Reply):
                return new_body
        if self._stream_usage and (usage := self._stream_options_wanted(route, found)) is not None:
            new_body = _with_stream_options(body if new_body is None else new_body, found, usage)
            if isinstance(new_body, Reply):
                return new_body
        return Forward(path, ((API_KEY_HEADER, byok.key),), target.cluster, new_body,
                       authority=target.authority(byok.resource), model=model, deployment=deployment, backend="byok")

    @staticmethod
    def _tunnel(head: RequestHead, clients: ClientKeys) -> Tunnel | Reply:
        """Forward-proxy mode: a CONNECT to an intercepted host (Envoy refuses any other before asking) opens a
        tunnel only with a client key in its Proxy-Authorization."""
        key = proxy_key(head.proxy_authorization)
        if key is None:
            return errors.PROXY_KEY_MISSING
        client = clients.identify_key(key)
        if client is None:
            return errors.PROXY_KEY_UNKNOWN
        return Tunnel(client.name)

    def _client_key_first(self, head: RequestHead, clients: ClientKeys) -> HeadersDecision:
        """Client keys: decided before anything else (a 401 reads no body, reaches nothing)."""
        client = clients.identify(head.authorization, head.api_key)
        if client is None:
            return errors.CLIENT_KEY_MISSING if not (head.authorization or head.api_key) else errors.CLIENT_KEY_UNKNOWN
        if client.spend_slot >= 0:
            window, wait = self._spend.wait(client.spend_slot)
            if wait > 0:
                return replace(errors.token_limit_reached(client.name, window, wait), client=client.name)
        if client.models is None:
            return _named(self._decide(head), client.name)
        path, _, query = head.path.partition("?")
        return _named(self._restricted(head, path, query, client.models), client.name)

    def _decide(self, head: RequestHead) -> HeadersDecision:
        if head.image_deployment and not self._models.allows_deployment(head.image_deployment):
            return errors.deployment_not_found(head.image_deployment, self._models.known_deployments)
        path, _, query = head.path.partition("?")
        route = self._body_routes.get(path)
        if route is not None:
            return self._model_in_body(head, route, query)
        for bare, prefix, family in self._families:
            if path == bare or path.startswith(prefix):
                return family(head, path, query)
        return errors.invalid_url(head.method, path)

    def _restricted(self, head: RequestHead, path: str, query: str, models: frozenset[str]) -> HeadersDecision:
        """A key that may use only `models`: the endpoints that name their model (checked against the list),
        `/v1/models` (the list), and Azure-form requests naming an allowed deployment in their path."""
        route = self._body_routes.get(path)
        if route is not None:
            return self._model_in_body(head, route, query, models)
        if path == "/v1/models" or path.startswith("/v1/models/"):
            endpoint = self._models_endpoints.get(models)
            if endpoint is None:
                endpoint = self._models_endpoints.setdefault(models, self._models_endpoint.only(models))
            return endpoint.answer(head.method, path)
        # Azure's classic form only (the v1 surface reads the deployment from the body), without a
        # `deployment` query parameter (realtime and others name it there).
        if path.lower().startswith(AZURE_DEPLOYMENTS_PREFIX) and not query_values(query, "deployment"):
            allowed = self._deployments.get(models)
            if allowed is None:
                allowed = self._deployments.setdefault(models, self._models.default_backend_deployments_of(models))
            deployment = unquote(path[len(AZURE_DEPLOYMENTS_PREFIX) :].partition("/")[0])
            if deployment not in allowed:
                return errors.deployment_not_found(deployment, tuple(sorted(allowed)))
            return self._side_roads_of_azure_form(head, self._azure_form(head, path, query), models)
        return errors.NOT_FOR_RESTRICTED_KEYS

    def _side_roads_of_azure_form(self, head: RequestHead, decision: HeadersDecision,
                                  allowed: frozenset[str] | None) -> HeadersDecision:
        """An Azure-form request to a deployment, its other deployments checked (see _side_roads_checked): the
        body is read for it (Envoy streams such bodies unless told otherwise, as it is here)."""
        if not isinstance(decision, Forward):
            return decision
        if head.image_deployment:
            refused = self._side_roads_checked(head, BodyModel(None), {self._models.default_backend}, allowed)
            if isinstance(refused, Reply):
                return refused
        # A form (an audio upload) names no other deployment: it streams on unread, past the body limit.
        if head.method != "POST" or not head.has_body or is_multipart(head.content_type):
            return decision
        if (too_large := self._too_large(head)) is not None:
            return too_large
        content_type = head.content_type

        def finish(body: bytes) -> BodyDecision:
            found = read_model(body, content_type, require_object=False)
            if isinstance(found, Reply):
                return found
            checked = self._side_roads_checked(head, found, {self._models.default_backend}, allowed)
            if isinstance(checked, Reply):
                return checked
            return decision if checked is None else decision._replace(body=checked)

        return AwaitBody(finish)

    def _credential(self, head: RequestHead, backend: Backend) -> Headers | Reply:
        """The headers that authenticate the request to `backend`, or the 401 refusing it."""
        credential = backend.credential.headers_for(head.authorization, head.api_key)
        if type(credential) is tuple:
            return credential
        if credential is None:
            return errors.missing_api_key(head.authorization)
        return self._auth_unavailable.setdefault(credential.kind, errors.upstream_auth_unavailable(credential.kind))

    # --- endpoints whose model is in the body ---------------------------------------------------

    def _too_large(self, head: RequestHead) -> Reply | None:
        """A declared body over the limit is refused at once, not after waiting for it (413)."""
        if head.content_length > self._max_body:
            return errors.request_too_large(head.content_length, self._max_body)
        return None

    def _model_in_body(self, head: RequestHead, route: BodyRoute, query: str,
                       allowed: frozenset[str] | None = None) -> HeadersDecision:
        if head.method != "POST":
            return errors.invalid_url(head.method, head.path.partition("?")[0])
        if (too_large := self._too_large(head)) is not None:
            return too_large
        # The default backend's credential is checked before the body is read (a 401 needs no body);
        # a model served elsewhere gets its own backend's (_on_body).
        credential = self._credential(head, self._models.default_backend)
        if isinstance(credential, Reply) and credential.status == 401:
            return credential
        # (No Entra ID token for the default backend: the model may be served by another; decided with the body.)
        return AwaitBody(lambda body: self._on_body(head, route, query, credential, body, allowed))

    def _on_body(self, head: RequestHead, route: BodyRoute, query: str, credential: Headers | Reply, body: bytes,
                 allowed: frozenset[str] | None = None) -> BodyDecision:
        found = read_model(body, head.content_type, multipart_only=route.multipart_only)
        if isinstance(found, Reply):
            return found
        if self._default_model is not None and _names_no_model(found):
            model: str | Reply = self._default_model
        else:
            model = model_name(found)
        if isinstance(model, Reply):
            return model
        if allowed is not None and model not in allowed:  # OpenAI's answer for a model the key cannot use
            return errors.model_not_found(model, tuple(sorted(allowed)))
        target = self._models.target_for(model)
        if target is None:
            if self._models.rejects_unknown:
                return errors.model_not_found(model, self._models.known_models)
            return errors.not_a_deployment_name(model)
        usage = self._stream_options_wanted(route, found) if self._stream_usage else None
        canonical = None
        if allowed is not None or self._models.rejects_unknown:
            backends = {m.backend for m in target.members} if isinstance(target, Pool) else {target.backend}
            checked = self._side_roads_checked(head, found, backends, allowed, usage)
            if isinstance(checked, Reply):
                return checked
            if checked is not None:
                body = canonical = checked
                usage = None  # written into it
        if isinstance(target, Pool):
            decision = self._to_pool(head, route, query, body, found, model, target)
            if not isinstance(decision, Forward):
                return decision
            new_body = canonical if decision.body is None else decision.body
            if usage is not None:
                new_body = _with_stream_options(body if new_body is None else new_body, found, usage)
                if isinstance(new_body, Reply):
                    return new_body
            return decision if new_body is decision.body else decision._replace(body=new_body)
        if target.backend is not self._models.default_backend or isinstance(credential, Reply):
            credential = self._credential(head, target.backend)
            if isinstance(credential, Reply):
                return credential
        new_body = canonical
        if route.model_in_body and (target.deployment != model or _names_no_model(found)):
            new_body = _with_model(body, found, target.deployment)
            if isinstance(new_body, Reply):
                return new_body
        if usage is not None:
            new_body = _with_stream_options(body if new_body is None else new_body, found, usage)
            if isinstance(new_body, Reply):
                return new_body
        return Forward(route.path_for(target.deployment, query), credential, target.backend.cluster, new_body,
                       model=model, deployment=target.deployment, backend=target.backend.name)

    def _side_roads_checked(self, head: RequestHead, found: BodyModel, backends: set[Backend],
                            allowed: frozenset[str] | None,
                            stream_options: dict[str, object] | None = None) -> Reply | bytes | None:
        """Deployments a request names besides its model (the image tool's header or `tools[]` entry, "on your
        data"'s embedding deployment), for a key with a model list (only its models' deployments on the backends
        the request goes to) or under `unmapped_models: reject` (only mapped ones). The refusal; or, when the body
        has such members at all, the body to send instead: the parsed document written out again, so that Azure
        reads what was checked (a duplicate or case-variant member, which parsers read differently, is gone),
        with `stream_options` (if given) as its member of that name; None when it names nothing."""
        named, present = _other_deployments(found.document)
        if head.image_deployment:
            named.append((head.image_deployment, False))
        for deployment, tool_model in named:
            if not self._models.allows_deployment(deployment) and not (tool_model and deployment in self._models.known_models):
                return errors.deployment_not_found(deployment, self._models.known_deployments)
            if allowed is not None:
                for backend in backends:
                    permitted = self._deployments_on(allowed, backend)
                    if deployment not in permitted:
                        return errors.deployment_not_found(deployment, tuple(sorted(permitted)))
        if not present or found.document is None:
            return None
        document = found.document if stream_options is None else {**found.document, "stream_options": stream_options}
        return _dumps(document)

    def _stream_options_wanted(self, route: BodyRoute, found: BodyModel) -> dict[str, object] | None:
        """`usage.include_stream_usage`: the `stream_options` a streamed chat or legacy completions request must
        send for Azure to end its stream with the usage chunk, when it does not already; None when the body
        stays as it is: not streamed, already asking, another endpoint, or a `stream_options` that is no
        object (Azure's 400 answers it)."""
        document = found.document
        if document is None or document.get("stream") is not True or \
                route.operation.path not in STREAM_USAGE_OPERATIONS:
            return None
        options = document.get("stream_options", _ABSENT)
        if options is _ABSENT:
            return _INCLUDE_USAGE
        if type(options) is not dict or options.get("include_usage") is True:
            return None
        return {**options, "include_usage": True}

    def _deployments_on(self, models: frozenset[str], backend: Backend) -> frozenset[str]:
        key = (models, backend.name)
        permitted = self._deployments_by_backend.get(key)
        if permitted is None:
            permitted = self._deployments_by_backend.setdefault(key, self._models.deployments_of(models, backend))
        return permitted

    def _to_pool(self, head: RequestHead, route: BodyRoute, query: str, body: bytes, found: BodyModel,
                 model: str, pool: Pool) -> BodyDecision:
        """Every member's path and credential: Envoy picks the member and fails over between them;
        when the circuit breaker has tripped every member, the 429 that says when to come back."""
        tries = []
        in_body = set()  # the deployments members read from the body (Azure's v1 and responses, OpenAI)
        unavailable: Reply | None = None
        for member in pool.members:
            credential = self._credential(head, member.backend)
            if isinstance(credential, Reply):
                if credential.status == 401:
                    return credential
                # No Entra ID token for this member: it gets no try (Envoy's try there is answered 503 by the
                # pool's upstream filter, and the next member is tried); the others still serve.
                unavailable = credential
                continue
            routes = self._member_body_routes.get(member.backend.name)
            member_route = routes["/v1/" + route.operation.path] if routes is not None else route
            path = member_route.path_for(member.deployment, query)
            if not path.isascii():  # Envoy gets the tries as metadata, which holds text only
                return errors.invalid_url(head.method, head.path.partition("?")[0])
            tries.append(Try(member.id, path, credential))
            if member_route.model_in_body:
                in_body.add(member.deployment)
        if not tries and unavailable is not None:
            return unavailable
        # After the credentials: a client without one gets its 401, not news of the pool's state.
        open_members, pickable, wait = self._trips.availability(pool.circuits)
        if not open_members:
            return errors.pool_tripped(model, wait)
        # Envoy skips tripped members, and would try a member still in twice rather than try fewer times;
        # a member whose trip its health checks have not seen yet may still be picked: it counts.
        max_retries = min(pickable, pool.max_attempts) - 1 if pickable < len(pool.members) else None
        new_body = None
        if in_body:
            # Envoy resends the same body on every try: one name must do for every member reading it.
            if len(in_body) > 1:
                return errors.pool_needs_one_deployment(model)
            deployment = in_body.pop()
            if deployment != model or _names_no_model(found):
                new_body = _with_model(body, found, deployment)
                if isinstance(new_body, Reply):
                    return new_body
        return Forward(tries[0].path, (), pool.cluster, new_body, tuple(tries), max_retries, model=model)

    # --- endpoints decided from the headers -----------------------------------------------------

    def _resource_family(self, route: ResourceRoute) -> _Family:
        def resource(head: RequestHead, path: str, query: str) -> HeadersDecision:
            # `/v1/responses/` is no id, and Azure could take it for `/v1/responses` unmapped.
            if head.method not in route.methods or path == route.prefix + "/" or escapes_its_prefix(path):
                return errors.invalid_url(head.method, path)
            backend = self._models.default_backend
            credential = self._credential(head, backend)
            if isinstance(credential, Reply):
                return credential
            forward = Forward(route.path_for(path, query), credential, backend.cluster, backend=backend.name)
            if self._models.rejects_unknown:
                # e.g. /v1/responses/input_tokens: a model in the body reaches Azure as it is.
                return self._body_checked_under_reject(head, forward)
            return forward

        return resource

    # --- requests already in Azure form ---------------------------------------------------------

    def _azure_form(self, head: RequestHead, path: str, query: str) -> HeadersDecision:
        """Requests already in Azure form pass through; a missing api-version gets the default.
        `unmapped_models: reject` holds for them too: the deployment they name, in the path or (v1
        surface, responses, assistants...) in the body's model, must be a mapped one."""
        if head.method not in AZURE_METHODS:
            return errors.method_not_allowed(head.method, path)
        backend = self._models.default_backend
        credential = self._credential(head, backend)
        if isinstance(credential, Reply):
            return credential
        # Plain segments only: this also refuses `.`/`..` in any spelling (escapes_its_prefix's job elsewhere).
        if not azure_form_segments_ok(path):
            return errors.invalid_url(head.method, path)
        if path.startswith("/openai/v1/") or has_api_version(query):
            query = without_credentials(query) if query else query
            azure_path = path + ("?" + query if query else "")
        else:
            azure_path = path + self._routes.azure_form_query(query)
        forward = Forward(azure_path, credential, backend.cluster, backend=backend.name,
                          deployment=_deployment_in(path))
        if not self._models.rejects_unknown:
            return forward
        # Realtime and others name it in the query (`?deployment=`); refused whatever the path.
        for deployment in query_values(query, "deployment") if query else ():
            if not self._models.allows_deployment(deployment):
                return errors.deployment_not_found(deployment, self._models.known_deployments)
        lowered = path.lower()
        for prefix in AZURE_DEPLOYMENT_PATH_PREFIXES:
            if lowered.startswith(prefix):
                # Azure serves the deployment in the path (matched case-insensitively, as Azure may);
                # a model in the body is not read for routing.
                deployment = unquote(path[len(prefix) :].partition("/")[0])
                if not self._models.allows_deployment(deployment):
                    return errors.deployment_not_found(deployment, self._models.known_deployments)
                return self._side_roads_of_azure_form(head, forward, None)
        return self._body_checked_under_reject(head, forward)

    # --- `unmapped_models: reject` for bodies the route does not read ---------------------------

    def _body_checked_under_reject(self, head: RequestHead, forward: Forward) -> HeadersDecision:
        """`forward` once the body's model is checked; at once for requests without a body and for
        uploads (they stream unread, may exceed the body limit, name no model)."""
        if head.method != "POST" or not head.has_body or forward.path.startswith(AZURE_UPLOAD_PREFIXES):
            return forward
        if (too_large := self._too_large(head)) is not None:
            return too_large
        content_type = head.content_type
        return AwaitBody(lambda body: self._check_named_deployments(head, forward, content_type, body))

    def _check_named_deployments(self, head: RequestHead, forward: Forward, content_type: str, body: bytes) -> BodyDecision:
        """Forward the body unchanged if the deployment its model names is a mapped one (or it has no
        model: nothing to route by); anything unreadable is refused, not forwarded unchecked."""
        if not body and is_multipart(content_type):
            return errors.INVALID_MULTIPART
        found = read_model(body, content_type, require_object=False)
        if isinstance(found, Reply):
            return found
        named = [found.value]
        session = found.document.get("session") if found.document is not None else None
        if isinstance(session, dict):  # realtime client secrets name the deployment there
            named.append(session.get("model"))
        for deployment in named:
            if isinstance(deployment, str) and deployment and not self._models.allows_deployment(deployment):
                return errors.deployment_not_found(deployment, self._models.known_deployments)
        checked = self._side_roads_checked(head, found, {self._models.default_backend}, None)
        if isinstance(checked, Reply):
            return checked
        return forward if checked is None else forward._replace(body=checked)


def _deployment_in(path: str) -> str:
    """The deployment an Azure-form path names (`/openai/deployments/<name>/...`), "" when none."""
    if not path.lower().startswith(AZURE_DEPLOYMENTS_PREFIX):
        return ""
    return unquote(path[len(AZURE_DEPLOYMENTS_PREFIX):].partition("/")[0])


def _named(decision: HeadersDecision, client: str) -> HeadersDecision:
    """The decision carrying the client key's name (for Envoy's per-key rate limit and its access logs)."""
    if isinstance(decision, AwaitBody):
        finish = decision.finish
        return AwaitBody(lambda body: _named_body(finish(body), client))
    return _named_body(decision, client)


def _named_body(decision: BodyDecision, client: str) -> BodyDecision:
    return decision._replace(client=client) if isinstance(decision, Forward) else replace(decision, client=client)


def _folded(name: str) -> str:
    """A member name as a case-insensitive reader that also takes camelCase (Azure's older `dataSources`,
    `embeddingDependency`) would match it."""
    return name.lower().replace("_", "")


def _members(value: object, name: str) -> list[object]:
    """Every member of a JSON object whose name folds to `name` (all of them: a reader may take any)."""
    return [v for k, v in value.items() if _folded(k) == name] if isinstance(value, dict) else []


def _other_deployments(document: dict[str, object] | None) -> tuple[list[tuple[str, bool]], bool]:
    """The deployments a JSON body names besides its model, each with whether it is the image tool's (which
    may give a model's name instead): chat's "on your data" embedding deployment (`data_sources[].parameters.
    embedding_dependency.deployment_name`) and the Responses API's image tool (`tools[]` of type
    image_generation, its `model`); and whether the body has such members at all."""
    named: list[tuple[str, bool]] = []
    if document is None:
        return named, False
    sources, tools = _members(document, "datasources"), _members(document, "tools")
    for source in (s for value in sources if isinstance(value, list) for s in value):
        for parameters in _members(source, "parameters"):
            for dependency in _members(parameters, "embeddingdependency"):
                named.extend((name, False) for name in _members(dependency, "deploymentname") if isinstance(name, str))
    for tool in (t for value in tools if isinstance(value, list) for t in value):
        if any(isinstance(kind, str) and _folded(kind) == "imagegeneration" for kind in _members(tool, "type")):
            named.extend((name, True) for name in _members(tool, "model") if isinstance(name, str))
    return named, bool(sources or tools)


def _names_no_model(found: BodyModel) -> bool:
    """A JSON body without a `model` member, or a form without a `model` field (`default_model`'s case)."""
    return found.field is None and (found.document is None or "model" not in found.document)


_ABSENT = object()
_INCLUDE_USAGE: dict[str, object] = {"include_usage": True}  # shared: never written into
_INCLUDE_USAGE_JSON = b'{"include_usage":true}'


def _dumps(document: object) -> bytes:
    try:
        return orjson.dumps(document)
    except TypeError:  # a lone surrogate or an integer beyond 64 bits: the standard library writes those
        return json.dumps(document).encode()


def _with_stream_options(body: bytes, found: BodyModel, options: dict[str, object]) -> bytes | Reply:
    """The body with its top-level `stream_options` (`options`, from _stream_options_wanted): added as a new
    member when the body has none, else that member's value written anew; every other byte as in `body` (the
    client's, or what the model's rewrite made of it)."""
    try:
        if found.document is None or "stream_options" not in found.document:
            return insert_top_level_json(body, "stream_options", _INCLUDE_USAGE_JSON)
        return replace_top_level_json(body, "stream_options", _dumps(options))
    except TooManyMembers:
        return errors.TOO_MANY_MEMBERS
    except DuplicateMember:  # the parsers read the last; a reader taking the first would not ask for usage
        return errors.DUPLICATE_STREAM_OPTIONS
    except InvalidJson:  # parsed, yet not walkable: not expected; never forward a guess
        return errors.INVALID_JSON


def _with_model(body: bytes, found: BodyModel, deployment: str) -> bytes | Reply:
    """The body with its model replaced by the deployment name (or, naming none, with it added),
    every other byte as sent."""
    if found.field is not None:
        return replace_field(body, found.field, deployment)
    if found.document is None:  # a form without a model field: not written into
        return errors.MISSING_MODEL
    try:
        if "model" not in found.document:
            return insert_top_level_string(body, "model", deployment)
        return replace_top_level_string(body, "model", deployment)
    except TooManyMembers:  # the walk to the model is bounded too
        return errors.TOO_MANY_MEMBERS
    except InvalidJson:  # parsed and one model, yet not walkable: not expected; never forward a guess
        return errors.INVALID_JSON
