"""The gRPC glue: Envoy's ext_proc stream <-> the translation core.

One stream per HTTP request. The request headers arrive first; the answer is either final (a
reply, or a forward with the body left streaming) or a bare CONTINUE, after which Envoy sends the
whole buffered body once. The RPC returns right after its last answer so Envoy does not hold the
stream open until Azure's response headers arrive.
"""

from __future__ import annotations

import logging

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import ExternalProcessorServicer
from envoy.type.v3.http_status_pb2 import HttpStatus

from .decision import AwaitBody, Forward, RequestHead
from .decision import Reply
from .translate import Translator

log = logging.getLogger(__name__)

ROUTE_HEADER = "x-aoai-gateway-cluster"  # read by the route's cluster_header; clients' copies are stripped
REMOVED_CLIENT_HEADERS = ("authorization",)  # `api-key` is overwritten, never removed and re-added
REPLY_DETAILS = "aoai_gateway_reply"

_CONTINUE_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
# A mode override replaces the whole mode (unset header modes mean SEND): spell every field out.
_STREAM_BODY_MODE = ProcessingMode(
    request_header_mode=ProcessingMode.SEND,
    request_body_mode=ProcessingMode.NONE,
    request_trailer_mode=ProcessingMode.SKIP,
    response_header_mode=ProcessingMode.SKIP,
    response_body_mode=ProcessingMode.NONE,
    response_trailer_mode=ProcessingMode.SKIP,
)
_JSON_CONTENT_TYPE = HeaderValueOption(header=HeaderValue(key="content-type", raw_value=b"application/json"))


def _encode(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def request_head(headers: pb.HttpHeaders) -> RequestHead:
    """Pick the few headers the core reads, in one pass."""
    method = path = content_type = authorization = api_key = ""
    for header in headers.headers.headers:
        key = header.key
        if key == ":path":
            path = _decode(header.raw_value)
        elif key == ":method":
            method = _decode(header.raw_value)
        elif key == "content-type":
            content_type = _decode(header.raw_value)
        elif key == "authorization":
            authorization = _decode(header.raw_value)
        elif key == "api-key":
            api_key = _decode(header.raw_value)
    return RequestHead(method, path, content_type, authorization, api_key, has_body=not headers.end_of_stream)


def _common_response(forward: Forward) -> pb.CommonResponse:
    set_headers = [
        HeaderValueOption(header=HeaderValue(key=":path", raw_value=_encode(forward.path))),
        HeaderValueOption(header=HeaderValue(key="api-key", raw_value=_encode(forward.api_key))),
        HeaderValueOption(header=HeaderValue(key=ROUTE_HEADER, raw_value=_encode(forward.cluster))),
    ]
    common = pb.CommonResponse(
        header_mutation=pb.HeaderMutation(set_headers=set_headers, remove_headers=REMOVED_CLIENT_HEADERS),
        clear_route_cache=True,  # the route's cluster_header must be read again
    )
    if forward.body is not None:
        common.header_mutation.set_headers.append(
            HeaderValueOption(header=HeaderValue(key="content-length", raw_value=str(len(forward.body)).encode()))
        )
        common.body_mutation.body = forward.body
    return common


def reply_response(reply: Reply) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=HttpStatus(code=reply.status),  # type: ignore[arg-type]
            headers=pb.HeaderMutation(set_headers=[_JSON_CONTENT_TYPE]),
            body=reply.body,
            details=REPLY_DETAILS,
        )
    )


def headers_forward_response(forward: Forward, has_body: bool) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=_common_response(forward)))
    if has_body:
        # Decided without the body: let it stream to Azure instead of buffering it here.
        response.mode_override.CopyFrom(_STREAM_BODY_MODE)
    return response


def body_forward_response(forward: Forward) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(request_body=pb.BodyResponse(response=_common_response(forward)))


class ExternalProcessor(ExternalProcessorServicer):
    def __init__(self, translator: Translator) -> None:
        self._translator = translator

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if not first.HasField("request_headers"):
            log.warning("ext_proc stream began with %s, not request_headers", first.WhichOneof("request"))
            return
        head = request_head(first.request_headers)
        decision = self._translator.on_headers(head)
        if isinstance(decision, Reply):
            await context.write(reply_response(decision))
            return
        if isinstance(decision, Forward):
            await context.write(headers_forward_response(decision, head.has_body))
            return
        assert isinstance(decision, AwaitBody)
        if not head.has_body:
            # A POST without a body: the core treats it as an empty (invalid) body.
            await context.write(self._body_decision_response(decision, b"", headers_phase=True))
            return
        await context.write(_CONTINUE_HEADERS)
        second = await context.read()
        if second is grpc.aio.EOF:
            return
        if not second.HasField("request_body"):
            log.warning("expected request_body, got %s", second.WhichOneof("request"))
            return
        await context.write(self._body_decision_response(decision, second.request_body.body, headers_phase=False))

    @staticmethod
    def _body_decision_response(pending: AwaitBody, body: bytes, *, headers_phase: bool) -> pb.ProcessingResponse:
        decision = pending.finish(body)
        if isinstance(decision, Reply):
            return reply_response(decision)
        if headers_phase:
            return headers_forward_response(decision, has_body=False)
        return body_forward_response(decision)
