"""The route table: the endpoint catalogue compiled with the configured options (surface, api-version)
into ready-made path builders, so a request costs a dict lookup and a string join."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping
from urllib.parse import quote

from .catalogue import AZURE_DEPLOYMENTS_PREFIX, CATALOGUE, ModelIn, Operation, Scope, Upload
from .paths import QueryMerger, query_merger


@dataclass(frozen=True, slots=True)
class EndpointOptions:
    """How one endpoint is sent on (the `endpoints:` settings, api-version already resolved)."""

    api_version: str
    v1: bool = False  # /openai/v1/{op} with the deployment as the body's model, no api-version


@dataclass(frozen=True, slots=True)
class BodyRoute:
    """An endpoint whose model is in the body: sent on once the deployment is known."""

    operation: Operation
    path_for: Callable[[str, str], str]  # (deployment, client query) -> Azure path
    model_in_body: bool  # Azure reads the deployment from the body's model (v1 API, responses)

    @property
    def multipart_only(self) -> bool:
        return self.operation.model_in is ModelIn.MULTIPART


@dataclass(frozen=True, slots=True)
class ResourceRoute:
    """An endpoint decided from the headers (`/v1/files`, `/v1/files/{id}`, ...): the prefix swapped."""

    prefix: str  # /v1/files
    azure_prefix: str  # /openai/files (or /openai/v1/files)
    merge_query: QueryMerger
    methods: frozenset[str]

    def path_for(self, path: str, query: str) -> str:
        return self.azure_prefix + path[len(self.prefix) :] + self.merge_query(query)


@dataclass(frozen=True)
class RouteTable:
    body_routes: Mapping[str, BodyRoute]  # by exact OpenAI path
    resource_routes: tuple[ResourceRoute, ...]
    azure_form_query: QueryMerger  # the default api-version for Azure-form requests without one


def compile_routes(
    options: Mapping[str, EndpointOptions], default_api_version: str, known_deployments: tuple[str, ...]
) -> RouteTable:
    body_routes: dict[str, BodyRoute] = {}
    resource_routes: list[ResourceRoute] = []
    for op in CATALOGUE:
        endpoint = options[op.name]
        if op.upload is Upload.STREAMED:
            resource_routes.append(_resource_route(op, endpoint))
        elif op.scope is Scope.DEPLOYMENT:
            body_routes["/v1/" + op.path] = _deployment_route(op, endpoint, known_deployments)
        else:  # responses: resource-level, the deployment replaces the body's model
            resource = _resource_route(op, endpoint)
            body_routes["/v1/" + op.path] = BodyRoute(
                op, lambda _dep, query, r=resource: r.azure_prefix + r.merge_query(query), model_in_body=True)
    return RouteTable(body_routes, tuple(resource_routes), query_merger(default_api_version))


def compile_openai_routes() -> RouteTable:
    """OpenAI's own API (a pool member of `type: openai`): `/v1/{op}`, the deployment as the body's model,
    no api-version. Only the endpoints whose model is in the body: pools serve no others."""
    no_version = query_merger(None)
    body_routes = {
        "/v1/" + op.path: BodyRoute(op, lambda _dep, query, path="/v1/" + op.path: path + no_version(query),
                                    model_in_body=True)
        for op in CATALOGUE if op.upload is not Upload.STREAMED
    }
    return RouteTable(body_routes, (), no_version)


def _resource_route(op: Operation, endpoint: EndpointOptions) -> ResourceRoute:
    azure_prefix = ("/openai/v1/" if endpoint.v1 else "/openai/") + op.path
    merge = query_merger(None if endpoint.v1 else endpoint.api_version)
    return ResourceRoute("/v1/" + op.path, azure_prefix, merge, op.methods)


def _deployment_route(op: Operation, endpoint: EndpointOptions, known_deployments: tuple[str, ...]) -> BodyRoute:
    if endpoint.v1:
        path = "/openai/v1/" + op.path
        no_version = query_merger(None)
        return BodyRoute(op, lambda _dep, query: path + no_version(query), model_in_body=True)
    merge = query_merger(endpoint.api_version)
    suffix = "/" + op.path

    def prefix_of(dep: str) -> str:
        return AZURE_DEPLOYMENTS_PREFIX + quote(dep, safe="") + suffix

    # The mapped deployments' escaped paths, built once; other names (passthrough) per request.
    prefixes = {dep: prefix_of(dep) for dep in known_deployments}

    def path_for(dep: str, query: str) -> str:
        prefix = prefixes.get(dep)
        return (prefix if prefix is not None else prefix_of(dep)) + merge(query)

    return BodyRoute(op, path_for, model_in_body=False)
