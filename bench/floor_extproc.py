"""A measuring stick, not a product: the cheapest ext_proc Python can be on this design.

It speaks just enough HTTP/2 and gRPC to serve Envoy's ext_proc streams, and answers every request
with pre-serialized constants (CONTINUE to the headers, a fixed routing decision to the body),
without decoding a header block or parsing a message. `python -m bench --floor` runs it as a
separate (b) so the table shows (1) how much of (b)'s cost is Envoy's own work for the ext_proc
round trips, and (2) how close a Python server could get if gRPC's runtime were out of the way.

    python -m bench.floor_extproc --socket PATH [--socket PATH ...]   (one process per socket)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import struct
from pathlib import Path

from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from extproc.core.decision import Forward
from extproc.processor.messages import CONTINUE_HEADERS, body_forward_response
from extproc.rpc.h2server import (
    ACK,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    OK_TRAILERS,
    PING,
    PREFACE,
    RESPONSE_HEADERS,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)


def grpc_message(message: Message) -> bytes:
    data = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(data)) + data


CONTINUE = grpc_message(CONTINUE_HEADERS)
SERVING = grpc_message(health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING))
DECISION = grpc_message(body_forward_response(Forward(
    "/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21", (("api-key", "bench-azure-key"),), "azure")))
# Our settings: no dynamic table, effectively unlimited stream windows; and a huge connection window.
OUR_SETTINGS = frame(SETTINGS, 0, 0, struct.pack(">HIHI", 0x1, 0, 0x4, MAX_WINDOW))
OPENING = OUR_SETTINGS + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535))


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.preface = False
        self.streams: dict[int, list] = {}  # stream id -> [pending bytes, messages seen]
        self.consumed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(OPENING)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        out: list[bytes] = []
        if not self.preface:
            if len(buffer) < len(PREFACE):
                self.buffer = buffer
                return
            buffer = buffer[len(PREFACE):]
            self.preface = True
        pos = 0
        end = len(buffer)
        while end - pos >= 9:
            length = int.from_bytes(buffer[pos:pos + 3], "big")
            if end - pos < 9 + length:
                break
            kind, flags = buffer[pos + 3], buffer[pos + 4]
            stream = int.from_bytes(buffer[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            payload = buffer[pos + 9:pos + 9 + length]
            pos += 9 + length
            if kind == DATA:
                self.consumed += length
                if flags & 0x8:  # padded
                    payload = payload[1:len(payload) - payload[0]]
                state = self.streams.get(stream)
                if state is None:
                    continue
                pending = state[0]
                pending += payload
                while len(pending) >= 5 and len(pending) >= 5 + (size := int.from_bytes(pending[1:5], "big")):
                    del pending[: 5 + size]
                    state[1] += 1
                    if state[1] == 1 and size == 0:
                        # Envoy's health check: an empty grpc.health.v1 HealthCheckRequest (an ext_proc
                        # ProcessingRequest is never empty). Without SERVING no request is routed here.
                        out.append(frame(HEADERS, END_HEADERS, stream, RESPONSE_HEADERS) + frame(DATA, 0, stream, SERVING)
                                   + frame(HEADERS, END_HEADERS | END_STREAM, stream, OK_TRAILERS)
                                   + frame(RST_STREAM, 0, stream, b"\0\0\0\0"))
                        del self.streams[stream]
                        break
                    if state[1] == 1:
                        out.append(frame(HEADERS, END_HEADERS, stream, RESPONSE_HEADERS) + frame(DATA, 0, stream, CONTINUE))
                    else:
                        # Like grpc's servers (and extproc/h2server.py): trailers, then RST_STREAM(NO_ERROR).
                        out.append(frame(DATA, 0, stream, DECISION) + frame(HEADERS, END_HEADERS | END_STREAM, stream, OK_TRAILERS)
                                   + frame(RST_STREAM, 0, stream, b"\0\0\0\0"))
                        del self.streams[stream]
                        break
            elif kind == HEADERS:
                if stream not in self.streams:
                    self.streams[stream] = [bytearray(), 0]
            elif kind == SETTINGS:
                if not flags & ACK:
                    out.append(frame(SETTINGS, ACK, 0))
            elif kind == PING:
                if not flags & ACK:
                    out.append(frame(PING, ACK, 0, payload))
            elif kind == RST_STREAM:
                self.streams.pop(stream, None)
            elif kind == GOAWAY:
                self.transport.close()
                return
        self.buffer = buffer[pos:]
        if self.consumed > 1 << 30:
            out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.consumed)))
            self.consumed = 0
        if out:
            self.transport.write(b"".join(out))


async def serve(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Connection, str(path))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_extproc")
    parser.add_argument("--socket", type=Path, action="append", required=True)
    args = parser.parse_args()
    children = []
    for path in args.socket[1:]:
        pid = os.fork()
        if pid == 0:
            args.socket, children = [path], []
            break
        children.append(pid)
    import uvloop

    uvloop.run(serve(args.socket[0]))
    for pid in children:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
