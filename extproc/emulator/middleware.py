"""What happens to every request: journal it, authenticate it, render Azure errors,
stamp Azure's response headers and log one line."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from .auth import check_auth
from .bodies import parse_body
from .context import DEPLOYMENT_NAME, PARSED_BODY, REQUEST_ID
from .errors import AzureError, payload_too_large, resource_not_found
from .ids import request_id
from .journal import record
from .state import STATE

log = logging.getLogger("extproc.emulator")

ADMIN_PREFIX = "/_emulator/"
REGION = "Sweden Central"
# Static quota figures: enough for clients and gateways that read the headers.
RATELIMIT_HEADERS = {"x-ratelimit-remaining-requests": "999", "x-ratelimit-remaining-tokens": "149000"}


@web.middleware
async def azure_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    request[REQUEST_ID] = request_id()
    state = request.app[STATE]
    try:
        raw, too_large = await request.read(), False
    except web.HTTPRequestEntityTooLarge:
        raw, too_large = b"", True
    body = await parse_body(request.headers, raw)
    request[PARSED_BODY] = body
    admin = request.path.startswith(ADMIN_PREFIX)
    if not admin:  # the journal is for API traffic, not for reads of the journal itself
        state.journal.append(record(request, body))
    try:
        if not admin:
            check_auth(request.headers, request.path, state.settings)
        if too_large:
            raise payload_too_large()
        response = await handler(request)
    except AzureError as error:
        response = error.response()
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        # aiohttp's router found no route: Azure answers every unknown path the same way.
        response = resource_not_found().response()
    except web.HTTPException as error:
        response = AzureError(error.status, {"code": str(error.status), "message": error.reason}).response()
    except Exception:
        log.exception("emulator handler failed for %s %s", request.method, request.path)
        response = AzureError(500, {"code": "InternalServerError", "message": "The emulator failed."}).response()
    # Never log headers: they carry the api-key.
    log.debug(
        "%s %s%s -> %d in %.1f ms",
        request.method,
        request.path,
        f" [{request[DEPLOYMENT_NAME]}]" if DEPLOYMENT_NAME in request else "",
        response.status,
        (time.monotonic() - started) * 1000,
    )
    return response


async def add_azure_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """`on_response_prepare` hook: runs for streamed and error responses too."""
    rid = request.get(REQUEST_ID) or request_id()
    response.headers["apim-request-id"] = rid
    response.headers["x-request-id"] = rid
    response.headers["x-ms-region"] = REGION
    client_request_id = request.headers.get("x-ms-client-request-id")
    if client_request_id:
        response.headers["x-ms-client-request-id"] = client_request_id
    if response.status < 400:
        response.headers.update(RATELIMIT_HEADERS)
