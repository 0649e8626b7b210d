"""The load: wrk for throughput and latency, a socket client for SSE timing, and the 1 MiB body; with
`--forward-proxy`, bench/h1load.c (built here) for requests through the CONNECT tunnel, which wrk cannot send."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Any
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
CHAT_PATH = "/v1/chat/completions"
CLIENT_HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-client-key"}


def chat_body(approx_bytes: int = 0, stream: bool = False) -> bytes:
    """A realistic chat request: a system prompt, a short conversation, the usual parameters.

    With `approx_bytes`, the last user message is padded (with prose-like text) to about that size.
    """
    messages = [
        {"role": "system", "content": "You are a concise assistant for a logistics company. Answer in the "
                                      "customer's language, cite the order number, and never invent tracking data."},
        {"role": "user", "content": "Where is my order 48213-XK? It was due on Tuesday and the tracking page has "
                                    "not changed since it left the Rotterdam hub."},
        {"role": "assistant", "content": "Order 48213-XK left Rotterdam on Monday at 18:40 and is in transit to the "
                                         "Antwerp depot; the carrier expects delivery on Thursday before noon."},
        {"role": "user", "content": "Can I change the delivery address to my office, Keizersgracht 12, Amsterdam?"},
    ]
    body = {"model": "gpt-4o", "messages": messages, "temperature": 0.2, "max_tokens": 400, "top_p": 1,
            "user": "customer-7731", "stream": stream}
    encoded = json.dumps(body).encode()
    if approx_bytes > len(encoded):
        filler = "The quick brown fox jumps over the lazy dog near the river bank. "
        missing = approx_bytes - len(encoded)
        messages.append({"role": "user", "content": (filler * (missing // len(filler) + 1))[:missing]})
        encoded = json.dumps(body).encode()
    return encoded


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: run bench/setup.sh (apt-get install wrk)")
    return found


@dataclass
class WrkResult:
    requests: int  # h1load: the 2xx answers only (a row of 403s or failed handshakes is no throughput)
    seconds: float
    errors: int  # h1load: failed connections, CONNECTs and handshakes, reads, writes, timeouts, and non-2xx answers
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    # h1load only: the answers by status, those not 2xx, and the connections the server closed (opened again).
    statuses: dict[str, int] | None = None
    non_2xx: int | None = None
    reconnects: int | None = None
    complaints: str = ""  # h1load's stderr: the first few reasons for its errors
    client_cpu_s: float = 0.0  # user + system CPU of the load generator itself (wrk or h1load)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _bench_result(name: str, argv: list[str], seconds: float,
                  env: dict[str, str] | None = None) -> tuple[dict[str, Any], float, str]:
    """Run a load generator (wrk with bench/*.lua, or h1load) to its `BENCH_RESULT {json}` line: that line's
    numbers, the generator's own CPU seconds, and its stderr."""
    cpu_before = _children_cpu()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    client_cpu = _children_cpu() - cpu_before
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{name} failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    return json.loads(line.removeprefix("BENCH_RESULT ")), client_cpu, done.stderr


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load generator, once waited for
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, body_file: Path, connections: int, threads: int, seconds: float,
            headers: dict[str, str] | None = None) -> WrkResult:
    """wrk with chat.lua; with `headers`, peer.lua: chat.lua's request plus (or overriding) those headers."""
    script = HERE / ("peer.lua" if headers else "chat.lua")
    argv = [wrk_binary(), "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{max(seconds, 1):g}s",
            "--timeout", "5s", "-s", str(script), url + CHAT_PATH]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file),
           "BENCH_EXTRA_HEADERS": "".join(f"{k}: {v}\n" for k, v in (headers or {}).items())}
    r, client_cpu, _stderr = _bench_result("wrk", argv, seconds, env)
    errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["status_errors"] + r["timeouts"]
    return WrkResult(r["requests"], r["duration_us"] / 1e6, errors, r["p50_us"] / 1000, r["p90_us"] / 1000,
                     r["p99_us"] / 1000, r["max_us"] / 1000, r["mean_us"] / 1000, client_cpu_s=client_cpu)


H1LOAD_SOURCE = HERE / "h1load.c"


def build_h1load(directory: Path) -> Path:
    """Compile bench/h1load.c into `directory` (a second or so; the run directory, so never stale)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler for bench/h1load.c (--forward-proxy): run bench/setup.sh")
    binary = directory / "h1load"
    done = subprocess.run([compiler, "-O2", "-o", str(binary), str(H1LOAD_SOURCE), "-lssl", "-lcrypto"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cannot build bench/h1load.c (OpenSSL's headers: run bench/setup.sh):\n{done.stderr}")
    return binary


def run_h1load(binary: Path, request_file: Path, address: str, connections: int, seconds: float, *,
               tls_name: str = "", ca_file: Path | None = None, tunnel: str = "") -> WrkResult:
    """`connections` kept-alive connections to `address`, one request in flight on each, for `seconds`; with
    `tls_name`, TLS verified against `ca_file`; with `tunnel`, inside a CONNECT to that authority."""
    argv = [str(binary), "--address", address, "--request", str(request_file), "--connections", str(connections),
            "--duration", f"{max(seconds, 1):g}", "--timeout", "5"]
    if tls_name:
        argv += ["--tls", "--sni", tls_name, "--cafile", str(ca_file)]
    if tunnel:
        argv += ["--tunnel", tunnel]
    r, client_cpu, stderr = _bench_result("h1load", argv, seconds)
    non_2xx = r["requests"] - r["ok"]
    errors = (r["connect_errors"] + r["tunnel_errors"] + r["tls_errors"] + r["read_errors"] + r["write_errors"]
              + r["timeouts"] + r["parse_errors"] + non_2xx)
    return WrkResult(r["ok"], r["duration_us"] / 1e6, errors, r["p50_us"] / 1000, r["p90_us"] / 1000,
                     r["p99_us"] / 1000, r["max_us"] / 1000, r["mean_us"] / 1000,
                     statuses=r["statuses"], non_2xx=non_2xx, reconnects=r["reconnects"], complaints=stderr.strip(), client_cpu_s=client_cpu)


def request_file(path: Path, host: str, body: bytes) -> Path:
    """The whole HTTP/1.1 request h1load sends: chat.lua's method, path, headers and body, with this Host."""
    path.write_bytes(_request_bytes(host, body, {}))
    return path


def _request_bytes(host: str, body: bytes, extra: dict[str, str]) -> bytes:
    headers = {"host": host, **CLIENT_HEADERS, **extra, "content-length": str(len(body))}
    head = f"POST {CHAT_PATH} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


@dataclass
class StreamSample:
    first_byte_ms: float  # request sent -> first response byte
    first_event_ms: float  # request sent -> first SSE event complete
    event_times_ms: list[float]  # arrival of each SSE event, from the request


def stream_samples(url: str, count: int, chunks: int, interval_ms: float, timeout: float = 30.0) -> list[StreamSample]:
    """`count` SSE streams one after another on one keep-alive connection (as an SDK's pool would),
    after one short warm-up stream; times are taken when each event's bytes arrive."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _stream_once(sock, parts.netloc, 2, 1.0)
        return [_stream_once(sock, parts.netloc, chunks, interval_ms) for _ in range(count)]


def _stream_once(sock: socket.socket, host: str, chunks: int, interval_ms: float) -> StreamSample:
    request = _request_bytes(host, chat_body(stream=True), {
        "x-bench-sse": "1", "x-bench-sse-chunks": str(chunks), "x-bench-sse-interval-ms": f"{interval_ms:g}"})
    buffer = b""
    first_byte = None
    events: list[float] = []
    start = time.perf_counter()
    sock.sendall(request)
    while True:
        data = sock.recv(65536)
        now = time.perf_counter()
        if not data:
            raise RuntimeError("the connection closed before the stream ended")
        if first_byte is None:
            first_byte = now
            if not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"stream answered {data[:200]!r}")
        buffer += data
        # Each event ends with a blank line; count the ones completed by this read.
        complete = buffer.count(b"\n\n") - len(events)
        events.extend([(now - start) * 1000] * complete)
        if b"data: [DONE]" in buffer and buffer.endswith(b"\r\n0\r\n\r\n"):  # the last chunk
            break
    events = events[:chunks]  # the [DONE] event is not a chunk
    if len(events) != chunks:
        raise RuntimeError(f"expected {chunks} SSE events, got {len(events)}")
    return StreamSample((first_byte - start) * 1000, events[0], events)


def stream_stats(samples: list[StreamSample], interval_ms: float) -> dict[str, float]:
    gaps = [b - a for s in samples for a, b in zip(s.event_times_ms, s.event_times_ms[1:])]
    deviation = [abs(g - interval_ms) for g in gaps]
    return {
        "streams": len(samples),
        "first_byte_p50_ms": statistics.median(s.first_byte_ms for s in samples),
        "first_event_p50_ms": statistics.median(s.first_event_ms for s in samples),
        "gap_mean_ms": statistics.fmean(gaps),
        "gap_p50_ms": statistics.median(gaps),
        "gap_p99_ms": _percentile(gaps, 99),
        "gap_max_ms": max(gaps),
        "gap_stdev_ms": statistics.pstdev(gaps),
        "gap_abs_dev_mean_ms": statistics.fmean(deviation),
    }


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


@dataclass
class LargeBodyResult:
    body_bytes: int
    requests: int
    ok: int
    statuses: list[int]
    p50_ms: float
    min_ms: float
    max_ms: float


def large_body(url: str, body: bytes, requests: int, timeout: float = 30.0) -> LargeBodyResult:
    """POST the large chat body `requests` times on one keep-alive connection; time each exchange."""
    parts = urlsplit(url)
    request = _request_bytes(parts.netloc, body, {})
    times, statuses = [], []
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        for _ in range(requests):
            start = time.perf_counter()
            sock.sendall(request)
            status_line = reader.readline()
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            reader.read(length)
            times.append((time.perf_counter() - start) * 1000)
            statuses.append(int(status_line.split()[1]))
    return LargeBodyResult(len(body), requests, statuses.count(200), sorted(set(statuses)),
                           statistics.median(times), min(times), max(times))
