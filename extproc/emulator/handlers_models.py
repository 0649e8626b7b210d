"""Model listings: deployments on the v1 surface, base models on the resource surface."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .model_capabilities import Capability, model_info
from .context import Call, Surface
from .errors import model_not_found, not_found
from .jsonio import json_response

_STARTED = int(time.time())


def _deployment_model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _STARTED, "owned_by": "system"}


async def list_deployment_models(call: Call) -> web.StreamResponse:
    """GET /openai/v1/models (and /v1/models): the deployments, which is what v1 clients pass as `model`."""
    data = [_deployment_model(name) for name in call.state.settings.deployments]
    return json_response({"object": "list", "data": data})


async def get_deployment_model(call: Call) -> web.StreamResponse:
    name = call.match("model")
    if name not in call.state.settings.deployments:
        if call.surface is Surface.OPENAI:
            raise model_not_found(name)
        raise not_found(f"The model '{name}' does not exist")
    return json_response(_deployment_model(name))


async def list_base_models(call: Call) -> web.StreamResponse:
    """GET /openai/models?api-version=...: the underlying models with Azure's capability flags."""
    data = []
    for model in sorted(set(call.state.settings.deployments.values())):
        capabilities = model_info(model).capabilities
        data.append(
            {
                "id": model,
                "object": "model",
                "created_at": _STARTED,
                "status": "succeeded",
                "lifecycle_status": "generally-available",
                "capabilities": {
                    "fine_tune": False,
                    "inference": True,
                    "completion": Capability.COMPLETION in capabilities,
                    "chat_completion": Capability.CHAT in capabilities,
                    "embeddings": Capability.EMBEDDINGS in capabilities,
                },
            }
        )
    return json_response({"object": "list", "data": data})
