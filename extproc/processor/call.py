"""One ext_proc stream: Envoy's messages <-> the translation core.

One stream per HTTP request. The request headers arrive first; the answer is either final (a
reply, or a forward with the body left streaming) or a CONTINUE, after which Envoy sends the whole
buffered body once (or, for a request of headers and trailers only, the trailers). The RPC
ends right after its last answer so Envoy does not hold the stream open until Azure's response
headers arrive. Anything else Envoy sends fails the RPC with a gRPC error: Envoy (failure_mode_allow
false) then answers 5xx and forwards nothing, where ending the RPC with OK would let the request
continue unanswered.

`ExtProcCall` is that exchange as a plain synchronous state machine over serialized messages, so
the server (extproc/rpc/h2server.py) calls it without a coroutine per request; answers that repeat
(the same route, credential and deployment) are serialized once and reused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ..core.decision import AwaitBody, Forward, Reply, Tunnel
from ..core.gateway import Gateway
from ..core.translator import Translator
from ..rpc.status import FAILED_PRECONDITION, INTERNAL, RpcError
from .messages import (CONTINUE_BYTES, body_forward_response, headers_forward_response, reply_response, request_head,
                       tunnel_response)

log = logging.getLogger(__name__)

# Serialized forwards kept for reuse: the deployments x phases in use, a handful in practice. Only
# answers up to FORWARD_CACHE_ENTRY_BYTES are kept, so the cache holds at most ~1 MiB whatever the
# requests (long paths and queries are answered uncached).
FORWARD_CACHE_SIZE = 1024
FORWARD_CACHE_ENTRY_BYTES = 1024


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
            found = _serialize(forward, headers_phase, has_body)
            if len(found) <= FORWARD_CACHE_ENTRY_BYTES:
                if len(self._entries) >= self._size:
                    self._entries.clear()
                self._entries[key] = found
        return found


def _serialize(forward: Forward, headers_phase: bool, has_body: bool) -> bytes:
    if headers_phase:
        return headers_forward_response(forward, has_body).SerializeToString()
    return body_forward_response(forward).SerializeToString()


class ExtProcCall:
    """One ext_proc stream: `on_message` takes each serialized ProcessingRequest and returns the
    serialized answers and whether the RPC is over (see extproc.rpc.h2server.Call)."""

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
        if isinstance(decision, Tunnel):  # a CONNECT's body is the tunnel: never read here
            return (tunnel_response(decision).SerializeToString(),), True
        if not head.has_body:
            # A POST without a body: the core treats it as an empty (invalid) body.
            return (self._body_answer(decision, b"", headers_phase=True),), True
        self._pending = decision
        return (CONTINUE_BYTES,), False

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


def call_factory(gateway: Gateway) -> Callable[[], ExtProcCall]:
    """A new ExtProcCall per RPC, all sharing one translator and one cache of answers."""
    translator = Translator(gateway)
    cache = ForwardCache(enabled=gateway.credentials_reusable)
    return lambda: ExtProcCall(translator, cache)
