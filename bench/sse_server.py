"""The streaming upstream of the benchmark: an HTTP/1.1 server that answers every request with an
SSE stream of N chat-completion chunks, the first at once and then one every I ms on a fixed
schedule (not sleep-after-write, so its own jitter does not accumulate).

    python -m bench.sse_server --port P [--chunks N] [--interval-ms I]

`x-bench-sse-chunks` / `x-bench-sse-interval-ms` request headers override the defaults per request.
Plain asyncio on purpose: no framework between the timer and the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import time

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
EVENT = (
    b'data: {"id":"chatcmpl-BENCH","object":"chat.completion.chunk","created":1767225600,"model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{"content":"token%05d "},"finish_reason":null}]}\n\n'
)
DONE = b"data: [DONE]\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _read_request(reader: asyncio.StreamReader) -> dict[bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    headers: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    if length:
        await reader.readexactly(length)
    return headers


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunks: int, interval_s: float) -> None:
    try:
        while (headers := await _read_request(reader)) is not None:
            count = int(headers.get(b"x-bench-sse-chunks", chunks))
            interval = float(headers.get(b"x-bench-sse-interval-ms", interval_s * 1000)) / 1000
            writer.write(HEAD + _chunk(EVENT % 0))
            start = time.perf_counter()
            for i in range(1, count):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(_chunk(EVENT % i))
            writer.write(_chunk(DONE) + b"0\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _main(port: int, chunks: int, interval_s: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve(r, w, chunks, interval_s), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    args = parser.parse_args()
    try:
        asyncio.run(_main(args.port, args.chunks, args.interval_ms / 1000))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
