"""HTTP/1.1 edges aiohttp handles outside the app: requests its parser rejects, and `Expect`.

aiohttp answers requests its parser rejects (request lines over `max_line_size`, methods llhttp
does not know, bad headers) from the connection's `RequestHandler.handle_error`, with a text/plain
body and without running the app: middlewares and `on_response_prepare` never see them
(aiohttp issues #3287 and #6463; there is no hook for it in aiohttp 3.14). `AzureAppRunner`
therefore serves connections with `AzureRequestHandler`, whose `handle_error` answers in
Azure's JSON error shape instead.
"""

from __future__ import annotations

import ast
import logging
import re

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, InvalidURLError, LineTooLong

from .errors import AzureError, bad_request, expectation_failed, internal_error, resource_not_found
from .middleware import stamp_azure_headers

log = logging.getLogger("extproc.emulator")

# RFC 9110 token characters: what a method may be made of.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# llhttp's errors quote the offending line: "<reason>:\n\n  b'<line>'\n  <pointer>".
_QUOTED_LINE = re.compile(r":\n\n  (b'.*'|b\".*\")\n")


def _method_is_token(error: BadHttpMethod) -> bool:
    """Whether llhttp refused a well-formed but unknown method (`FOO`, `post`) rather than garbage."""
    match = _QUOTED_LINE.search(error.message)
    if match is None:
        return False  # e.g. TLS on the plain port, or aiohttp's Python parser (it accepts any token)
    try:
        line = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return False
    method, space, _rest = line.partition(b" ")
    return bool(space) and _TOKEN.fullmatch(method) is not None


def protocol_error(status: int, exc: BaseException | None) -> AzureError:
    """Azure's answer to a request aiohttp could not parse or could not handle.

    - an unknown method: the 404 Azure gives every method/path it has no operation for (the router
      answers unknown methods the same way when the parser lets them through);
    - a request line or header line over aiohttp's 8190-byte limit, or any other malformed request: 400;
    - a failure of the emulator itself: 500 (504 on a timeout).
    The client's bytes are never echoed back.
    """
    if status >= 500:
        if status == 504:
            return AzureError(504, {"code": "GatewayTimeout", "message": "The operation timed out."})
        return internal_error()
    if isinstance(exc, BadHttpMethod) and _method_is_token(exc):
        return resource_not_found()
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "the limit of"
        return bad_request(f"The request line or a header line is longer than {limit} bytes.")
    if isinstance(exc, InvalidURLError):
        return bad_request("The request target is not a valid URL.")
    if isinstance(exc, BadStatusLine):
        return bad_request("The request line is not a valid HTTP/1.1 request line.")
    return bad_request("The request is not a valid HTTP/1.1 request.")


class AzureRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering its own errors in Azure's JSON shape."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            # The client left mid-request (e.g. closed before sending all of its body): nobody to answer.
            log.debug("Client %s went away mid-request (%s)", request.remote, type(exc).__name__)
        elif status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            # Hostile or broken clients are routine; the message could quote a header (an api-key).
            log.debug("Refused an unparseable request from %s (%s)", request.remote, type(exc).__name__)
        # As aiohttp's own handle_error: once bytes went out, only closing the connection is left.
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        response = protocol_error(status, exc).response()
        stamp_azure_headers(request, response)
        response.force_close()  # the parser's state is unknown: do not read another request from it
        return response


class AzureServer(web.Server):
    """aiohttp's low-level server, creating `AzureRequestHandler`s for its connections."""

    def __call__(self) -> web.RequestHandler:
        # What `web.Server.__call__` does, with our handler class (the protocol factory of each connection).
        return AzureRequestHandler(self, loop=self._loop, **self._kwargs)


class AzureAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer parser errors as Azure does."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app's server as aiohttp configured it, only creating our connection handler class.
        server.__class__ = AzureServer
        return server


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """The routes' `Expect` handler: aiohttp's (100 Continue for `100-continue`), but an unknown
    expectation gets a JSON 417 instead of aiohttp's text one."""
    if request.version != HttpVersion11:
        return None  # HTTP/1.0 has no Expect; aiohttp ignores it there too
    if request.headers.get("Expect", "").lower() != "100-continue":
        return expectation_failed().response()
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the interim response is not the response (aiohttp does the same)
    return None
