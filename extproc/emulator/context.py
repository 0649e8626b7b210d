"""What a handler gets: the request, resolved deployment, parsed body and fault plan."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from aiohttp import web

from .bodies import Form, ParsedBody
from .model_capabilities import Capability, ModelInfo, model_info
from .errors import deployment_not_found, model_not_found, model_not_supported, not_found, operation_not_supported
from .faults import FaultPlan
from .state import EmulatorState

# Per-request values the middleware and the router hand each other.
PARSED_BODY = web.RequestKey("emulator_parsed_body", ParsedBody)
REQUEST_ID = web.RequestKey("emulator_request_id", str)
DEPLOYMENT_NAME = web.RequestKey("emulator_deployment", str)

T = TypeVar("T")


class Surface(enum.Enum):
    """The three URL shapes of an Azure OpenAI resource, and OpenAI's own (`openai_api` mode)."""

    DEPLOYMENT = "/openai/deployments/{deployment}/"  # deployment in the path, api-version required
    RESOURCE = "/openai/"  # resource-level ops (files, batches, responses), api-version required
    V1 = "/openai/v1/"  # OpenAI-compatible: deployment in the body's `model`, no api-version
    OPENAI = "/v1/"  # OpenAI itself: as V1, with OpenAI's errors; the only surface in that mode


@dataclass(frozen=True)
class Deployment:
    name: str
    model: str

    @property
    def info(self) -> ModelInfo:
        return model_info(self.model)

    @property
    def reported_model(self) -> str:
        """The `model` Azure reports in response bodies (the dated model name)."""
        return self.info.reported_name


def resolve_deployment(
    deployments: Mapping[str, str], name: str, capability: Capability, openai: bool = False
) -> Deployment:
    """Find a deployment and check its model can do the operation, as Azure does
    (`openai`: as OpenAI does, the deployment standing for the model of that name)."""
    model = deployments.get(name)
    if model is None:
        raise model_not_found(name) if openai else deployment_not_found()
    deployment = Deployment(name, model)
    if capability not in deployment.info.capabilities:
        if openai:
            raise model_not_supported(name, capability.value)
        raise operation_not_supported(capability.value, model)
    return deployment


@dataclass(frozen=True)
class Call:
    request: web.Request
    state: EmulatorState
    body: ParsedBody
    faults: FaultPlan
    surface: Surface
    api_version: str  # "v1" on the v1 surface, for error messages
    deployment: Deployment | None

    @property
    def json(self) -> dict[str, Any]:
        """The JSON object body; the router has already rejected anything else."""
        assert isinstance(self.body.json, dict)
        return self.body.json

    @property
    def form(self) -> Form:
        assert self.body.form is not None
        return self.body.form

    @property
    def target(self) -> Deployment:
        assert self.deployment is not None
        return self.deployment

    def match(self, name: str) -> str:
        return self.request.match_info[name]

    def stored(self, name: str, items: Mapping[str, T], missing: str) -> T:
        """The item the URL's `{name}` names, or a 404 with `missing` (its `{id}` filled in)."""
        item_id = self.match(name)
        item = items.get(item_id)
        if item is None:
            raise not_found(missing.format(id=item_id))
        return item


Handler = Callable[[Call], Awaitable[web.StreamResponse]]
