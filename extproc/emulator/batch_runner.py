"""Runs a batch's JSONL input through the same builders the HTTP handlers use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from .model_capabilities import Capability
from .context import Deployment, resolve_deployment
from .errors import AzureError, invalid_request, missing_field
from .handlers_chat import build_chat_completion
from .handlers_completions import build_completion
from .handlers_embeddings import build_embeddings
from .handlers_responses import build_response
from .ids import hex_id, request_id
from .state import EmulatorState

BatchBuilder = Callable[[EmulatorState, dict[str, Any], Deployment], dict[str, Any]]

# Batch endpoint -> (capability the deployment needs, builder).
ENDPOINTS: dict[str, tuple[Capability, BatchBuilder]] = {
    "/chat/completions": (Capability.CHAT, lambda _s, b, d: build_chat_completion(b, d)),
    "/completions": (Capability.COMPLETION, lambda _s, b, d: build_completion(b, d)),
    "/embeddings": (Capability.EMBEDDINGS, lambda _s, b, d: build_embeddings(b, d)),
    "/responses": (Capability.RESPONSES, build_response),
}


def normalise_endpoint(url: str) -> str:
    """Batch lines may say `/chat/completions`, `/v1/chat/completions` or `/openai/v1/...`."""
    path = url.split("?", 1)[0]
    for prefix in ("/openai", "/v1"):
        if path.startswith(prefix + "/"):
            path = path[len(prefix) :]
    return path


class InvalidInput(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


@dataclass
class BatchResult:
    outputs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def run_batch(state: EmulatorState, endpoint: str, data: bytes) -> BatchResult:
    """Answer every line; raises InvalidInput if a line is not a valid request."""
    result = BatchResult()
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            task = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise InvalidInput(number, "The line is not valid JSON.") from None
        if not isinstance(task, dict) or not isinstance(task.get("body"), dict) or "custom_id" not in task:
            raise InvalidInput(number, "Each line needs `custom_id`, `method`, `url` and an object `body`.")
        if normalise_endpoint(str(task.get("url", ""))) != endpoint:
            raise InvalidInput(number, f"The line's url does not match the batch endpoint {endpoint}.")
        status, body = _answer(state, endpoint, task["body"])
        line_result = {
            "id": hex_id("batch_req_"),
            "custom_id": task["custom_id"],
            "response": {"status_code": status, "request_id": request_id(), "body": body},
            "error": None,
        }
        (result.outputs if status == 200 else result.errors).append(line_result)
    return result


def _answer(state: EmulatorState, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    capability, build = ENDPOINTS[endpoint]
    try:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise missing_field("model")
        deployment = resolve_deployment(state.settings.deployments, name, capability)
        if body.get("stream"):
            raise invalid_request("Streaming is not supported in batch mode.", param="stream")
        return 200, build(state, body, deployment)
    except AzureError as error:
        return error.status, {"error": error.error}
