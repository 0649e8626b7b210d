"""A small gRPC server (HTTP/2 over a Unix socket, on asyncio) for the few methods this process serves.

Why not grpcio's server: measured with `python -m bench` on 2 cores, grpc.aio spent ~600 us of CPU
per ext_proc stream (two messages each way), of which the handler itself was under 10%: the rest
was the runtime (a completion-queue thread handing every event to the event loop, a coroutine and
a context per RPC, a write per frame). This server parses the frames of a whole read at once,
calls plain synchronous handlers, and answers with one write per read.

Scope, deliberately narrow: cleartext HTTP/2 with prior knowledge (h2c, as Envoy and grpcio
clients speak on a Unix socket); request-stream methods whose handlers answer each message at once
(`Call.on_message`); no compression (none is advertised, a compressed message fails the call);
no server push, no priorities. HPACK decoding is the `hpack` package's; responses are encoded
with literals that never touch the dynamic table, so no encoder state exists.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import hpack

from .status import INTERNAL, OK, RESOURCE_EXHAUSTED, UNIMPLEMENTED, UNKNOWN, RpcError

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0x0, 0x1, 0x3, 0x6, 0x9
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_FRAME = 16384
OUR_MAX_FRAME = 1 << 20  # large bodies arrive in fewer frames
HEADER_CACHE_SIZE = 64
MAX_HEADER_BLOCK = 256 * 1024  # gRPC request headers are a few hundred bytes

_FRAME_HEAD = struct.Struct(">HBBBI")  # length (24 bits: high 16, low 8), type, flags, stream id


class Call(Protocol):
    """One RPC. `on_message` gets each request message (serialized) and returns the serialized
    responses to send, and True when the RPC is complete (status OK); or raises RpcError. The
    client ending its side early also completes the RPC with OK."""

    def on_message(self, message: bytes) -> tuple[tuple[bytes, ...], bool]: ...


Methods = Mapping[bytes, Callable[[], Call]]  # b"/package.Service/Method" -> a new Call per RPC


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME_HEAD.pack(length >> 8, length & 0xFF, kind, flags, stream) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman (lengths < 127)."""
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


# `:status: 200` (static index 8) and `content-type: application/grpc` (static name index 31).
RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + bytes((16,)) + b"application/grpc"
OUR_SETTINGS = frame(SETTINGS, 0, 0, struct.pack(">HIHI", SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW,
                                                    SETTINGS_MAX_FRAME_SIZE, OUR_MAX_FRAME))
# The connection's receive window starts at 65,535 whatever the settings say: open it fully at once.
OPENING = OUR_SETTINGS + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535))
OK_TRAILERS = _literal(b"grpc-status", b"0")
RST_NO_ERROR = struct.pack(">I", NO_ERROR)


def _trailers(status: int, message: str = "") -> bytes:
    block = OK_TRAILERS if status == OK else _literal(b"grpc-status", str(status).encode())
    if message:
        block += _literal(b"grpc-message", _percent_encoded(message, _MAX_LITERAL))
    return block


_MAX_LITERAL = 126  # _literal writes one-byte lengths; 127 and up need HPACK's multi-byte integers


def _percent_encoded(message: str, limit: int) -> bytes:
    """grpc-message's encoding (percent-encoded UTF-8), cut to `limit` bytes between escapes."""
    out = bytearray()
    for byte in message.encode("utf-8", "backslashreplace"):
        piece = bytes((byte,)) if 0x20 <= byte < 0x7F and byte != 0x25 else b"%%%02X" % byte
        if len(out) + len(piece) > limit:
            break
        out += piece
    return bytes(out)


def _hpack_int(block: bytes, i: int, prefix_mask: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541 5.1) at block[i]: (value, index after it)."""
    value = block[i] & prefix_mask
    i += 1
    if value == prefix_mask:
        shift = 0
        while True:
            byte = block[i]
            i += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
    return value, i


def _leaves_table_alone(block: bytes) -> bool:
    """True when no field of the HPACK block adds to the dynamic table or resizes it (only indexed
    fields and literals without indexing, RFC 7541 6.1-6.2): then equal blocks decode equally
    until some other block changes the table."""
    i, n = 0, len(block)
    try:
        while i < n:
            byte = block[i]
            if byte & 0x80:  # indexed field
                _, i = _hpack_int(block, i, 0x7F)
            elif byte & 0xE0:  # literal with incremental indexing (01), or a table size update (001)
                return False
            else:  # literal without indexing (0000) or never indexed (0001)
                name_index, i = _hpack_int(block, i, 0x0F)
                if name_index == 0:
                    length, i = _hpack_int(block, i, 0x7F)
                    i += length
                length, i = _hpack_int(block, i, 0x7F)
                i += length
    except IndexError:
        return False
    return i == n


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class _Stream:
    __slots__ = ("call", "pending", "started", "window", "outbox", "trailers", "remote_closed")

    def __init__(self, call: Call | None, window: int) -> None:
        self.call = call
        self.pending = bytearray()  # request bytes not yet a whole gRPC message
        self.started = False  # response headers sent
        self.window = window  # how much DATA the peer lets us send on this stream
        self.outbox = bytearray()  # response bytes waiting for flow-control window
        self.trailers: bytes | None = None  # sent once the outbox is empty
        self.remote_closed = False


class Http2Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        self._methods = server.methods
        self._max_message = server.max_message_bytes
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = hpack.Decoder()
        self._header_cache: dict[bytes, bytes] = {}  # header block -> its :path
        self._streams: dict[int, _Stream] = {}
        self._last_stream = 0
        self._continuation: tuple[int, int, bytearray] | None = None  # stream, flags, header block so far
        self._window = 65535  # connection send window
        self._initial_window = 65535  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self._max_frame = DEFAULT_MAX_FRAME  # the peer's SETTINGS_MAX_FRAME_SIZE
        self._received = 0  # DATA bytes received since our last connection WINDOW_UPDATE
        self._out: list[bytes] = []
        self._going_away = False
        self.transport: asyncio.Transport | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._server.connections.add(self)
        self.transport.write(OPENING)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._streams.clear()

    def data_received(self, data: bytes) -> None:
        # Most reads hold whole frames: they are parsed in place, and only a partial frame is kept.
        if self._buffer:
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()
        try:
            used = self._process(data)
        except _ConnectionError as exc:
            log.warning("closing an HTTP/2 connection: %s", exc)
            self._out.append(frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream, exc.code)))
            self._flush_output()
            self.transport.close()  # type: ignore[union-attr]
            return
        if used < len(data):
            self._buffer += memoryview(data)[used:]
        self._flush_output()
        if self._going_away and not self._streams:
            self.transport.close()  # type: ignore[union-attr]

    # --- frames -------------------------------------------------------------------------------------

    def _process(self, data: bytes) -> int:
        """Handle the whole frames in `data`; return how many bytes they took."""
        pos = 0
        if not self._preface_seen:
            if len(data) < len(PREFACE):
                return 0
            if data[: len(PREFACE)] != PREFACE:
                raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 client preface")
            pos = len(PREFACE)
            self._preface_seen = True
        end = len(data)
        while end - pos >= 9:
            high, low, kind, flags, stream = _FRAME_HEAD.unpack_from(data, pos)
            length = high << 8 | low
            if length > OUR_MAX_FRAME:
                raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - pos < 9 + length:
                break
            stream &= 0x7FFFFFFF
            payload = data[pos + 9 : pos + 9 + length]
            pos += 9 + length
            if self._continuation is not None and kind != CONTINUATION:
                raise _ConnectionError(PROTOCOL_ERROR, "header block interrupted")
            if kind == DATA:
                self._on_data(stream, flags, payload)
            elif kind == HEADERS:
                self._on_headers(stream, flags, payload)
            elif kind == RST_STREAM:
                self._streams.pop(stream, None)
            elif kind == CONTINUATION:
                self._on_continuation(stream, flags, payload)
            elif kind == SETTINGS:
                if not flags & ACK:
                    self._on_settings(payload)
            elif kind == WINDOW_UPDATE:
                self._on_window_update(stream, payload)
            elif kind == PING:
                if not flags & ACK:
                    self._out.append(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                self._going_away = True
            elif kind == PUSH_PROMISE:
                raise _ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            # PRIORITY and unknown frame types are ignored, as RFC 9113 asks.
        return pos

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
            return payload[1 : len(payload) - payload[0]]
        return payload

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        block = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            block = block[5:]
        if flags & END_HEADERS:
            self._on_header_block(stream_id, flags, block)
        else:
            self._continuation = (stream_id, flags, bytearray(block))

    def _on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self._continuation is None or self._continuation[0] != stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
        self._continuation[2].extend(payload)
        if len(self._continuation[2]) > MAX_HEADER_BLOCK:
            raise _ConnectionError(PROTOCOL_ERROR, "header block too large")
        if flags & END_HEADERS:
            _, first_flags, block = self._continuation
            self._continuation = None
            self._on_header_block(stream_id, first_flags, bytes(block))

    def _method_of(self, block: bytes) -> bytes:
        """The request's :path (its gRPC method), from a header block. Every block is decoded, as
        that keeps the HPACK state in step; Envoy sends the same headers on every stream, so after
        the first, the same bytes each time, and a block that leaves the table alone is decoded once."""
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        try:
            headers = self._decoder.decode(block, raw=True)
        except hpack.HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, f"HPACK: {exc}") from None
        path = next((value for name, value in headers if name == b":path"), b"")
        if _leaves_table_alone(block):
            if len(self._header_cache) >= HEADER_CACHE_SIZE:
                self._header_cache.clear()
            self._header_cache[block] = path  # type: ignore[assignment]
        else:
            self._header_cache.clear()  # the dynamic table may have changed
        return path  # type: ignore[return-value]

    def _on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        path = self._method_of(block)
        if stream_id == 0 or stream_id % 2 == 0:
            raise _ConnectionError(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        if stream_id <= self._last_stream:
            # Trailers from the client (gRPC clients send none) or a stream already finished.
            stream = self._streams.get(stream_id)
            if stream is not None and flags & END_STREAM:
                self._on_remote_end(stream_id, stream)
            return
        self._last_stream = stream_id
        if self._going_away:
            self._out.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", 0x7)))  # REFUSED_STREAM
            return
        factory = self._methods.get(path)
        stream = _Stream(factory() if factory is not None else None, self._initial_window)
        self._streams[stream_id] = stream
        if factory is None:
            self._finish(stream_id, stream, UNIMPLEMENTED, f"unknown method {path.decode(errors='replace')}")
            return
        if flags & END_STREAM:
            self._on_remote_end(stream_id, stream)

    def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        self._received += len(payload)
        if self._received > MAX_WINDOW // 2:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._received)))
            self._received = 0
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return  # a stream this side already finished (or reset): the bytes are dropped
        data = self._unpad(flags, payload)
        stream.remote_closed = bool(flags & END_STREAM)
        if stream.call is not None and stream.trailers is None:
            if (not stream.pending and len(data) >= 5 and data[0] == 0
                    and int.from_bytes(data[1:5], "big") == len(data) - 5 <= self._max_message):
                self._on_message(stream_id, stream, data[5:])  # the usual case: one whole message
            else:
                stream.pending += data
                self._on_messages(stream_id, stream)
        if stream.remote_closed and stream_id in self._streams:
            self._on_remote_end(stream_id, stream)

    def _on_messages(self, stream_id: int, stream: _Stream) -> None:
        pending = stream.pending
        while len(pending) >= 5 and stream.trailers is None:
            size = int.from_bytes(pending[1:5], "big")
            if size > self._max_message:
                self._finish(stream_id, stream, RESOURCE_EXHAUSTED, f"message of {size} bytes is over the limit")
                return
            if len(pending) < 5 + size:
                return
            if pending[0]:
                self._finish(stream_id, stream, UNIMPLEMENTED, "compressed messages are not supported")
                return
            message = bytes(pending[5 : 5 + size])
            del pending[: 5 + size]
            self._on_message(stream_id, stream, message)

    def _on_message(self, stream_id: int, stream: _Stream, message: bytes) -> None:
        try:
            responses, done = stream.call.on_message(message)  # type: ignore[union-attr]
        except RpcError as exc:
            self._finish(stream_id, stream, exc.status, exc.message)
            return
        except Exception:
            log.exception("the handler failed")
            self._finish(stream_id, stream, UNKNOWN, "the ext_proc failed; see its log")
            return
        if len(responses) == 1 and not stream.outbox:
            # The usual case, in one piece: [response headers,] one DATA frame [, trailers, RST_STREAM].
            message = responses[0]
            size = len(message) + 5
            if size <= self._window and size <= stream.window and size <= self._max_frame:
                self._window -= size
                stream.window -= size
                out = self._out
                if not stream.started:
                    stream.started = True
                    out.append(frame(HEADERS, END_HEADERS, stream_id, RESPONSE_HEADERS))
                out.append(_FRAME_HEAD.pack(size >> 8, size & 0xFF, DATA, 0, stream_id)
                           + b"\x00" + len(message).to_bytes(4, "big") + message)
                if done:
                    stream.trailers = OK_TRAILERS
                    self._end(stream_id, stream)
                return
        self._send(stream_id, stream, responses)
        if done:
            self._finish(stream_id, stream, OK)

    def _on_remote_end(self, stream_id: int, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.trailers is None:
            truncated = bool(stream.pending)
            self._finish(stream_id, stream, INTERNAL if truncated else OK, "truncated message" if truncated else "")

    def _on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS length")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta, self._initial_window = value - self._initial_window, value
                for stream in self._streams.values():
                    stream.window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self._max_frame = value
            # HEADER_TABLE_SIZE concerns an encoder's dynamic table; ours has none.
        self._out.append(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            self._window += increment
            self._flush_blocked()
        elif (stream := self._streams.get(stream_id)) is not None:
            stream.window += increment
            self._drain(stream_id, stream)

    # --- responses ----------------------------------------------------------------------------------

    def _send(self, stream_id: int, stream: _Stream, messages: tuple[bytes, ...]) -> None:
        if not messages:
            return
        if not stream.started:
            stream.started = True
            self._out.append(frame(HEADERS, END_HEADERS, stream_id, RESPONSE_HEADERS))
        for message in messages:
            stream.outbox += b"\x00" + len(message).to_bytes(4, "big") + message
        self._drain(stream_id, stream)

    def _finish(self, stream_id: int, stream: _Stream, status: int, message: str = "") -> None:
        if stream.trailers is not None:
            return
        if status != OK:
            stream.outbox.clear()  # an error replaces whatever was still waiting
        if not stream.started and not stream.outbox:
            # Trailers-only response: status and grpc-status in one HEADERS frame.
            stream.started = True
            stream.trailers = RESPONSE_HEADERS + _trailers(status, message)
        else:
            stream.trailers = _trailers(status, message)
        self._drain(stream_id, stream)

    def _drain(self, stream_id: int, stream: _Stream) -> None:
        """Send what flow control allows; once everything is out, the trailers end the stream."""
        outbox = stream.outbox
        while outbox:
            size = min(len(outbox), self._window, stream.window, self._max_frame)
            if size <= 0:
                return  # blocked until a WINDOW_UPDATE
            self._out.append(frame(DATA, 0, stream_id, bytes(outbox[:size])))
            del outbox[:size]
            self._window -= size
            stream.window -= size
        if stream.trailers is not None:
            self._end(stream_id, stream)

    def _end(self, stream_id: int, stream: _Stream) -> None:
        """The trailers, sent once the whole response is out; the stream is then forgotten."""
        self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, stream.trailers))  # type: ignore[arg-type]
        if not stream.remote_closed:
            # As grpc's own servers do: the response is complete, the client need send no more.
            self._out.append(frame(RST_STREAM, 0, stream_id, RST_NO_ERROR))
        del self._streams[stream_id]

    def _flush_blocked(self) -> None:
        for stream_id, stream in list(self._streams.items()):
            if stream.outbox:
                self._drain(stream_id, stream)

    def _flush_output(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def go_away(self) -> None:
        """Refuse new streams; close once the open ones are done."""
        self._going_away = True
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream, NO_ERROR)))
        if not self._streams:
            self.transport.close()

    @property
    def idle(self) -> bool:
        return not self._streams


class GrpcServer:
    """Serve `methods` on a Unix socket. `start()` binds; `stop(grace)` drains and closes."""

    def __init__(self, methods: Methods, max_message_bytes: int) -> None:
        self.methods = methods
        self.max_message_bytes = max_message_bytes
        self.connections: set[Http2Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, socket_path: Path, mode: int = 0o660) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: Http2Connection(self), str(socket_path))
        os.chmod(socket_path, mode)

    async def stop(self, grace: float | None = None) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.go_away()
        deadline = asyncio.get_running_loop().time() + (grace or 0)
        while any(not c.idle for c in self.connections) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        for _ in range(20):  # connection_lost runs on a later turn of the loop
            if not self.connections:
                break
            await asyncio.sleep(0.01)
        self._server = None
