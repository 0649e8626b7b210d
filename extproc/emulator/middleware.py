"""What happens to every request: journal it, authenticate it, render Azure errors,
stamp Azure's response headers and log one line."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from .auth import check_auth
from .bodies import ParsedBody, parse_body
from .context import DEPLOYMENT_NAME, PARSED_BODY, REQUEST_ID
from .errors import (
    AzureError,
    bad_request,
    internal_error,
    payload_too_large,
    resource_not_found,
    unsupported_content_encoding,
)
from .ids import request_id
from .journal import record
from .state import STATE

log = logging.getLogger("extproc.emulator")

ADMIN_PREFIX = "/_emulator/"
REGION = "Sweden Central"
# Static quota figures: enough for clients and gateways that read the headers.
RATELIMIT_HEADERS = {"x-ratelimit-remaining-requests": "999", "x-ratelimit-remaining-tokens": "149000"}


def _unsupported_encoding(request: web.Request) -> str | None:
    """The first content coding other than identity. aiohttp is told not to decode bodies
    (`auto_decompress=False`): Azure OpenAI documents no request compression."""
    for value in request.headers.getall("Content-Encoding", ()):
        for coding in value.split(","):
            coding = coding.strip().lower()
            if coding and coding != "identity":
                return coding
    return None


async def _read_body(request: web.Request, max_parts: int) -> tuple[ParsedBody, AzureError | None]:
    """The parsed body, and the error to answer (after auth) if the body itself is refused."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return ParsedBody(raw=b""), payload_too_large()
    except web.RequestPayloadError:
        # A broken chunked encoding or a body shorter than its Content-Length.
        return ParsedBody(raw=b""), bad_request("The request body could not be read.")
    if raw and (coding := _unsupported_encoding(request)) is not None:
        return ParsedBody(raw=raw), unsupported_content_encoding(coding)  # not parsed: it is not plain bytes
    return await parse_body(request.headers, raw, max_parts), None


@web.middleware
async def azure_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    request[REQUEST_ID] = request_id()
    state = request.app[STATE]
    settings = state.settings
    body, body_error = await _read_body(request, settings.multipart_max_parts)
    request[PARSED_BODY] = body
    admin = request.path.startswith(ADMIN_PREFIX)
    if not admin:  # the journal is for API traffic, not for reads of the journal itself
        state.journal.append(record(request, body, min(settings.journal_max_body_bytes, settings.journal_max_bytes)))
    try:
        if not admin:
            check_auth(request.headers, request.path, settings)
        if body_error is not None:
            raise body_error
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
        response = internal_error().response()
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
    stamp_azure_headers(request, response)


def stamp_azure_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Azure's per-response headers (also on answers to requests aiohttp could not parse)."""
    rid = request.get(REQUEST_ID) or request_id()
    response.headers["apim-request-id"] = rid
    response.headers["x-request-id"] = rid
    response.headers["x-ms-region"] = REGION
    client_request_id = request.headers.get("x-ms-client-request-id")
    if client_request_id:
        response.headers["x-ms-client-request-id"] = client_request_id
    if response.status < 400:
        response.headers.update(RATELIMIT_HEADERS)
