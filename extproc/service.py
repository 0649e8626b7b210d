"""The gRPC glue: Envoy's ext_proc stream <-> the translation core.

One stream per HTTP request. The request headers arrive first; the answer is either final (a
reply, or a forward with the body left streaming) or a CONTINUE, after which Envoy sends the whole
buffered body once (or, for a request of headers and trailers only, the trailers). The RPC
ends right after its last answer so Envoy does not hold the stream open until Azure's response
headers arrive. Anything else Envoy sends fails the RPC with a gRPC error: Envoy (failure_mode_allow
false) then answers 5xx and forwards nothing, where ending the RPC with OK would let the request
continue unanswered.

`ExtProcCall` is that exchange as a plain synchronous state machine over serialized messages, so
the server (extproc/h2server.py) calls it without a coroutine per request; answers that repeat
(the same route, key and deployment) are serialized once and reused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import ExternalProcessorServicer
from envoy.type.v3.http_status_pb2 import HttpStatus

from .decision import AwaitBody, Forward, Reply, RequestHead
from .h2server import FAILED_PRECONDITION, INTERNAL, RpcError
from .translate import Translator

log = logging.getLogger(__name__)

ROUTE_HEADER = "x-aoai-gateway-cluster"  # matched exactly by the one route to Azure; clients' copies are stripped
# The client's credentials never reach Azure. `api-key` is overwritten, never removed and re-added.
REMOVED_CLIENT_HEADERS = ("authorization", "proxy-authorization")
REPLY_DETAILS = "aoai_gateway_reply"

PROCESS_METHOD = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"
# Serialized forwards kept for reuse: the deployments x phases in use, a handful in practice.
FORWARD_CACHE_SIZE = 1024
# A mode override replaces the whole mode (unset header modes mean SEND): spell every field out.
# Request trailers: SKIP where the override comes with the RPC's last answer (nothing more is wanted,
# and a SEND would hold the trailers for a stream that is ending); SEND with the CONTINUE, so that a
# request of headers and trailers alone is answered whatever the Envoy config says.
def _request_mode(body: int, trailers: int) -> ProcessingMode:
    return ProcessingMode(
        request_header_mode=ProcessingMode.SEND,
        request_body_mode=body,
        request_trailer_mode=trailers,
        response_header_mode=ProcessingMode.SKIP,
        response_body_mode=ProcessingMode.NONE,
        response_trailer_mode=ProcessingMode.SKIP,
    )


_STREAM_BODY_MODE = _request_mode(ProcessingMode.NONE, ProcessingMode.SKIP)
_BUFFER_BODY_MODE = _request_mode(ProcessingMode.BUFFERED, ProcessingMode.SEND)
_CONTINUE_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse(), mode_override=_BUFFER_BODY_MODE)
_CONTINUE_BYTES = _CONTINUE_HEADERS.SerializeToString()
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
        clear_route_cache=True,  # the route is chosen again, now matching the routing header
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


class ForwardCache:
    """Serialized answers to forwards without a new body, by phase; cleared when full.

    Disabled when the api-key is the client's own (no server key): client credentials are not
    kept beyond their request.
    """

    def __init__(self, enabled: bool, size: int = FORWARD_CACHE_SIZE) -> None:
        self._enabled = enabled
        self._size = size
        self._entries: dict[tuple[bool, bool, Forward], bytes] = {}

    def get(self, forward: Forward, *, headers_phase: bool, has_body: bool = False) -> bytes:
        if forward.body is not None or not self._enabled:
            return _serialize(forward, headers_phase, has_body)
        key = (headers_phase, has_body, forward)
        found = self._entries.get(key)
        if found is None:
            if len(self._entries) >= self._size:
                self._entries.clear()
            found = self._entries[key] = _serialize(forward, headers_phase, has_body)
        return found


def _serialize(forward: Forward, headers_phase: bool, has_body: bool) -> bytes:
    if headers_phase:
        return headers_forward_response(forward, has_body).SerializeToString()
    return body_forward_response(forward).SerializeToString()


class ExtProcCall:
    """One ext_proc stream: `on_message` takes each serialized ProcessingRequest and returns the
    serialized answers and whether the RPC is over (see extproc.h2server.Call)."""

    __slots__ = ("_translator", "_cache", "_pending")

    def __init__(self, translator: Translator, cache: ForwardCache) -> None:
        self._translator = translator
        self._cache = cache
        self._pending: AwaitBody | None = None

    def on_message(self, message: bytes) -> tuple[tuple[bytes, ...], bool]:
        """Raises RpcError for any message this exchange does not expect (see the module doc)."""
        request = pb.ProcessingRequest.FromString(message)
        kind = request.WhichOneof("request")
        pending = self._pending
        if pending is None:
            if kind != "request_headers":
                raise _unexpected(kind, "request_headers")
            return self._on_headers(request)
        if kind == "request_body":
            # In BUFFERED mode this is the whole body even when trailers follow (end_of_stream false):
            # the answer is final and the RPC ends; Envoy then lets the trailers through.
            return (self._body_answer(pending, request.request_body.body, headers_phase=False),), True
        if kind == "request_trailers":
            # Trailers with no body before them (BUFFERED sends any body first): an empty body.
            return (self._trailers_answer(pending),), True
        raise _unexpected(kind, "request_body")

    def _on_headers(self, request: pb.ProcessingRequest) -> tuple[tuple[bytes, ...], bool]:
        head = request_head(request.request_headers)
        decision = self._translator.on_headers(head)
        if isinstance(decision, Forward):
            return (self._cache.get(decision, headers_phase=True, has_body=head.has_body),), True
        if isinstance(decision, Reply):
            return (reply_response(decision).SerializeToString(),), True
        if not head.has_body:
            # A POST without a body: the core treats it as an empty (invalid) body.
            return (self._body_answer(decision, b"", headers_phase=True),), True
        self._pending = decision
        return (_CONTINUE_BYTES,), False

    def _body_answer(self, pending: AwaitBody, body: bytes, *, headers_phase: bool) -> bytes:
        decision = pending.finish(body)
        if isinstance(decision, Reply):
            return reply_response(decision).SerializeToString()
        return self._cache.get(decision, headers_phase=headers_phase)

    @staticmethod
    def _trailers_answer(pending: AwaitBody) -> bytes:
        decision = pending.finish(b"")
        if isinstance(decision, Reply):
            return reply_response(decision).SerializeToString()
        # A trailers answer cannot change the request's headers: never forward from here.
        log.error("the core forwards an empty body; refusing it in the trailers phase")
        raise RpcError(INTERNAL, "cannot forward from the request_trailers phase")


def _unexpected(kind: str | None, expected: str) -> RpcError:
    log.warning("ext_proc protocol: got %s, expected %s; failing the call", kind, expected)
    return RpcError(FAILED_PRECONDITION, f"unexpected {kind}, expected {expected}")


def call_factory(translator: Translator) -> Callable[[], ExtProcCall]:
    cache = ForwardCache(enabled=translator.has_server_key)
    return lambda: ExtProcCall(translator, cache)


class ExternalProcessor(ExternalProcessorServicer):
    """The same calls served by grpcio's asyncio server (AOAI_GATEWAY_EXTPROC_RUNTIME=grpcio): kept
    as a fallback and for comparison in the benchmark; about six times the CPU per request."""

    def __init__(self, translator: Translator) -> None:
        self._new_call = call_factory(translator)

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        call = self._new_call()
        while (message := await context.read()) is not grpc.aio.EOF:
            try:
                answers, done = call.on_message(message)
            except RpcError as exc:
                # As h2server does: the error status, never an OK that leaves Envoy's question unanswered.
                await context.abort(_STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN), exc.message)
                return  # not reached: abort raises
            for answer in answers:
                await context.write(answer)
            if done:
                return


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _identity(data: bytes) -> bytes:
    return data


def grpcio_handler(translator: Translator) -> grpc.GenericRpcHandler:
    """The servicer with serialized messages in and out (ExtProcCall does the (de)serializing)."""
    servicer = ExternalProcessor(translator)
    return grpc.method_handlers_generic_handler(
        "envoy.service.ext_proc.v3.ExternalProcessor",
        {"Process": grpc.stream_stream_rpc_method_handler(servicer.Process, _identity, _identity)},
    )
