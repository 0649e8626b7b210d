"""The route table: which operations exist on which URL surface, and the checks
every operation shares (api-version, body shape, deployment, fault injection)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aiohttp import web

from . import (
    handlers_audio,
    handlers_batches,
    handlers_chat,
    handlers_completions,
    handlers_embeddings,
    handlers_files,
    handlers_images,
    handlers_models,
    handlers_responses,
)
from .bodies import ParsedBody
from .model_capabilities import Capability
from .context import DEPLOYMENT_NAME, PARSED_BODY, Call, Handler, Surface, resolve_deployment
from .errors import bad_request, invalid_url, missing_field, missing_model, resource_not_found
from .faults import FaultPlan
from .protocol import expect_handler
from .state import STATE, EmulatorState

# Versions the openai SDK and Azure docs use to reach the v1 surface; all are ignored.
V1_API_VERSIONS = ("v1", "preview", "latest")


class Body(enum.Enum):
    NONE = "none"
    JSON = "json"
    MULTIPART = "multipart"


@dataclass(frozen=True)
class Operation:
    name: str  # Azure's operation id, quoted in 429 messages
    handler: Handler
    body: Body = Body.NONE
    capability: Capability | None = None  # set: the operation runs on a deployment
    min_api_version: str | None = None
    feature: str = ""  # how Azure names the feature when the api-version is too old


def _responses(name: str, handler: Handler, body: Body = Body.NONE, capability: Capability | None = None) -> Operation:
    """The Responses API only exists from this preview version on (or on v1)."""
    return Operation(name, handler, body, capability, "2025-03-01-preview", "Azure OpenAI Responses API")


# Operations addressed as /openai/deployments/{deployment}/<path> (and /openai/v1/<path>).
DEPLOYMENT_OPERATIONS: dict[str, Operation] = {
    "chat/completions": Operation(
        "ChatCompletions_Create", handlers_chat.create_chat_completion, Body.JSON, Capability.CHAT
    ),
    "completions": Operation(
        "Completions_Create", handlers_completions.create_completion, Body.JSON, Capability.COMPLETION
    ),
    "embeddings": Operation(
        "Embeddings_Create", handlers_embeddings.create_embeddings, Body.JSON, Capability.EMBEDDINGS
    ),
    "audio/transcriptions": Operation(
        "Transcriptions_Create", handlers_audio.create_transcription, Body.MULTIPART, Capability.TRANSCRIPTION
    ),
    "audio/translations": Operation(
        "Translations_Create", handlers_audio.create_translation, Body.MULTIPART, Capability.TRANSCRIPTION
    ),
    "audio/speech": Operation("Speech_Create", handlers_audio.create_speech, Body.JSON, Capability.SPEECH),
    "images/generations": Operation(
        "ImageGenerations_Create", handlers_images.create_image, Body.JSON, Capability.IMAGES
    ),
    "images/edits": Operation("ImageEdits_Create", handlers_images.edit_image, Body.MULTIPART, Capability.IMAGES),
}

# Operations addressed as /openai/<path> (and /openai/v1/<path>): (method, path, operation).
RESOURCE_OPERATIONS: tuple[tuple[str, str, Operation], ...] = (
    (
        "POST",
        "responses",
        _responses("Responses_Create", handlers_responses.create_response, Body.JSON, Capability.RESPONSES),
    ),
    ("GET", "responses/{response_id}", _responses("Responses_Get", handlers_responses.get_response)),
    ("DELETE", "responses/{response_id}", _responses("Responses_Delete", handlers_responses.delete_response)),
    (
        "GET",
        "responses/{response_id}/input_items",
        _responses("Responses_ListInputItems", handlers_responses.list_input_items),
    ),
    ("POST", "files", Operation("Files_Upload", handlers_files.upload_file, Body.MULTIPART)),
    ("GET", "files", Operation("Files_List", handlers_files.list_files)),
    ("GET", "files/{file_id}", Operation("Files_Get", handlers_files.get_file)),
    ("GET", "files/{file_id}/content", Operation("Files_GetContent", handlers_files.get_file_content)),
    ("DELETE", "files/{file_id}", Operation("Files_Delete", handlers_files.delete_file)),
    ("POST", "batches", Operation("Batches_Create", handlers_batches.create_batch, Body.JSON)),
    ("GET", "batches", Operation("Batches_List", handlers_batches.list_batches)),
    ("GET", "batches/{batch_id}", Operation("Batches_Get", handlers_batches.get_batch)),
    ("POST", "batches/{batch_id}/cancel", Operation("Batches_Cancel", handlers_batches.cancel_batch)),
)

# The model listings differ per surface: base models vs. deployments.
RESOURCE_ONLY = (("GET", "models", Operation("Models_List", handlers_models.list_base_models)),)
V1_ONLY = (
    ("GET", "models", Operation("Models_List", handlers_models.list_deployment_models)),
    ("GET", "models/{model}", Operation("Models_Get", handlers_models.get_deployment_model)),
)


def add_api_routes(app: web.Application) -> None:
    def add(method: str, path: str, handler: Handler) -> None:
        app.router.add_route(method, path, handler, expect_handler=expect_handler)

    def add_v1(surface: Surface) -> None:
        """The OpenAI-compatible operation set, deployment named by the body's `model`."""
        for path, operation in DEPLOYMENT_OPERATIONS.items():
            add("POST", surface.value + path, endpoint(operation, surface))
        for method, path, operation in RESOURCE_OPERATIONS + V1_ONLY:
            add(method, surface.value + path, endpoint(operation, surface))

    if app[STATE].settings.openai_api:
        add_v1(Surface.OPENAI)  # OpenAI has no Azure paths: they fall through to its 404
        return
    for path, operation in DEPLOYMENT_OPERATIONS.items():
        add("POST", Surface.DEPLOYMENT.value + path, endpoint(operation, Surface.DEPLOYMENT))
    for method, path, operation in RESOURCE_OPERATIONS + RESOURCE_ONLY:
        add(method, Surface.RESOURCE.value + path, endpoint(operation, Surface.RESOURCE))
    add_v1(Surface.V1)


def add_fallback_route(app: web.Application) -> None:
    """Every other method and path, added last: unknown requests then pass the middleware (journal,
    auth, Azure's 404 or OpenAI's) and the JSON Expect check, instead of aiohttp's built-in 404/405/417."""
    app.router.add_route("*", "/{path:.*}", _unknown_route, expect_handler=expect_handler)


async def _unknown_route(request: web.Request) -> web.StreamResponse:
    if request.app[STATE].settings.openai_api:
        raise invalid_url(request.method, request.path)
    raise resource_not_found()


def endpoint(operation: Operation, surface: Surface) -> Handler:
    """Wrap an operation's handler with the checks Azure makes, in Azure's order."""

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        api_version = _check_api_version(request, operation, surface, state)
        body = request[PARSED_BODY]
        deployments, capability = state.settings.deployments, operation.capability
        deployment = None
        # A deployment in the path is checked before the body; one named in the body, after it.
        if capability is not None and surface is Surface.DEPLOYMENT:
            deployment = resolve_deployment(deployments, request.match_info["deployment"], capability)
        _check_body(body, operation.body)
        if capability is not None and surface is not Surface.DEPLOYMENT:
            openai = surface is Surface.OPENAI
            deployment = resolve_deployment(deployments, _model_from_body(body, openai), capability, openai)
        if deployment is not None and (throttled := state.throttles.check(deployment.name, operation.name, api_version)):
            raise throttled
        faults = FaultPlan.from_headers(request.headers, state.settings.default_chunk_interval_s)
        await faults.apply(operation.name, api_version)
        if deployment is not None:
            request[DEPLOYMENT_NAME] = deployment.name  # for the request log line
        call = Call(request, state, body, faults, surface, api_version, deployment)
        return await operation.handler(call)

    return handle


def _check_api_version(request: web.Request, operation: Operation, surface: Surface, state: EmulatorState) -> str:
    version = request.query.get("api-version")
    if surface is Surface.OPENAI:
        return "v1"  # OpenAI has no api-version; one a client sends anyway is ignored
    if surface is Surface.V1:
        # The v1 surface needs no version; whatever a client sends is ignored.
        return version if version in V1_API_VERSIONS else "v1"
    if version is None or version not in state.settings.api_versions:
        raise resource_not_found()
    # Dated versions compare correctly as strings on their YYYY-MM-DD prefix.
    if operation.min_api_version and version[:10] < operation.min_api_version[:10]:
        raise bad_request(f"{operation.feature} is enabled only for api-version {operation.min_api_version} and later")
    return version


def _check_body(body: ParsedBody, expected: Body) -> None:
    if expected is Body.JSON and not isinstance(body.json, dict):
        raise bad_request("Could not parse the JSON body of your request. The request body must be a JSON object.")
    if expected is Body.MULTIPART and body.form is None:
        raise bad_request(body.form_error or "The request must be multipart/form-data with a valid body.")


def _model_from_body(body: ParsedBody, openai: bool) -> str:
    model = body.json.get("model") if isinstance(body.json, dict) else None
    if model is None and body.form is not None:
        model = body.form.value("model")
    if not isinstance(model, str) or not model:
        raise missing_model() if openai else missing_field("model")
    return model
