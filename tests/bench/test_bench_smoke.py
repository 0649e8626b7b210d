"""A few seconds of `python -m bench`: it runs end to end and reports every column, the forward proxy's
tunnel rows (bench/h1load.c) included; and h1load counts what is not a 2xx answer as an error, not throughput.

Not a performance test: nothing here judges the numbers. Needs wrk, a C compiler and OpenSSL's headers
(bench/setup.sh installs them; CI runs bench/setup.sh before the tests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import load
from extproc.envoy_config.devtls import ensure_dev_certificates

REPO = Path(__file__).resolve().parents[2]
THROUGHPUT_COLUMNS = {"rps", "p50_ms", "p99_ms", "errors", "extproc_cpu_us_per_req", "envoy_cpu_us_per_req",
                      "machine_cpu_us_per_req"}
STREAM_COLUMNS = {"first_byte_p50_ms", "first_event_p50_ms", "gap_mean_ms", "gap_p50_ms", "gap_p99_ms", "gap_max_ms"}
TABLE_HEADINGS = ("req/s", "p50 ms", "p99 ms", "errors", "ratio b/a", "ext_proc CPU us/req", "first byte p50 ms",
                  "gap p99 ms", "added p50 ms", "RSS", "Targets:", "client CPU us/req", "CONNECT tunnel (h1load) x1")
# --forward-proxy's rows (h1load on the gateway with forward_proxy on): how each one's requests got there.
FORWARD_PROXY_ROWS = {"d1": "http", "s1": "https", "c1": "tunnel"}


@pytest.mark.timeout(180)
def test_bench_runs_and_reports_every_column(tmp_path: Path) -> None:
    assert shutil.which("wrk"), "wrk is not installed: run bench/setup.sh (CI's .ci/run does)"
    output = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--duration", "1", "--warmup", "0", "--connections", "1,4",
         "--workers", "1", "--streams", "2", "--sse-chunks", "3", "--sse-interval-ms", "10",
         "--large-body-requests", "2", "--soak", "2", "--grpcio", "--floor", "--forward-proxy", "--json", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for heading in TABLE_HEADINGS:
        assert heading in done.stdout, heading

    results = json.loads(output.read_text())
    rows = {(r["setup"], r["connections"]): r for r in results["throughput"]}
    # g: the grpcio runtime, f: the floor server; each must really serve (health checks included).
    # d1, s1, c1: the forward-proxy gateway over plain HTTP, HTTPS, and HTTPS inside a CONNECT tunnel.
    assert set(rows) == {(setup, conns) for setup in ("a", "b1", "g1", "f1", *FORWARD_PROXY_ROWS) for conns in (1, 4)}
    for (setup, _), row in rows.items():
        assert THROUGHPUT_COLUMNS <= row.keys()
        assert row["requests"] > 0 and row["errors"] == 0
        assert (row["extproc_cpu_us_per_req"] is None) == (setup == "a")
        assert row["client_cpu_us_per_req"] > 0
        if setup in FORWARD_PROXY_ROWS:
            assert (row["load_generator"], row["via"]) == ("h1load", FORWARD_PROXY_ROWS[setup])
            # Every answer a 200 (a row of 403s or failed handshakes has requests == 0 and errors > 0), and each
            # one reached the fake upstream through the gateway.
            assert row["non_2xx"] == 0 and row["statuses"] == {"200": row["requests"]}, row
            assert row["upstream_2xx"] >= row["requests"]
    assert [s["setup"] for s in results["streaming"]] == ["a", "b1", "g1", "f1"]
    assert all(STREAM_COLUMNS <= s.keys() for s in results["streaming"])
    assert [(r["setup"], r["ok"]) for r in results["large_body"]] == [("a", 2), ("b1", 2), ("g1", 2), ("f1", 2)]
    assert results["soak"]["rss_after_bytes"] > 0 and results["soak"]["errors"] == 0
    assert any(t["target"].startswith("1 MiB body through") and t["holds"] for t in results["targets"])
    tunnel_ok = [t for t in results["targets"] if t["target"].startswith("forward proxy x1: requests through the tunnel")]
    assert [t["holds"] for t in tunnel_ok] == [True]
    assert results["parameters"]["forward_proxy"] is True
    assert results["machine"]["cores"] and results["machine"]["envoy"]


class _Refusing(BaseHTTPRequestHandler):
    """403 to every request and every CONNECT; 200 in chunks to a request for Host `chunked`."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["content-length"]))
        if self.headers["host"] == "chunked":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n")
            return
        self.send_response(403)
        self.send_header("content-length", "9")
        self.end_headers()
        self.wfile.write(b"forbidden")

    def do_CONNECT(self) -> None:  # noqa: N802
        self.send_response(403)
        self.send_header("content-length", "0")
        self.send_header("connection", "close")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(60)
def test_h1load_counts_only_2xx_as_throughput(tmp_path: Path, refusing_server: str) -> None:
    binary = load.build_h1load(tmp_path)
    body = load.chat_body()
    refused = load.run_h1load(binary, load.request_file(tmp_path / "r", refusing_server, body), refusing_server, 2, 1)
    assert refused.requests == 0 and refused.rps == 0
    assert refused.non_2xx and refused.statuses == {"403": refused.non_2xx} and refused.errors == refused.non_2xx

    # A refused CONNECT: no request is sent, each attempt is an error.
    ca = ensure_dev_certificates(tmp_path / "tls").ca_cert  # any CA: the TLS never starts
    tunnel = load.run_h1load(binary, load.request_file(tmp_path / "t", "api.openai.com", body), refusing_server, 1, 1,
                             tls_name="api.openai.com", ca_file=ca, tunnel="api.openai.com:443")
    assert tunnel.requests == 0 and tunnel.errors > 0 and tunnel.statuses == {}
    assert "CONNECT api.openai.com:443 answered: HTTP/1.1 403" in tunnel.complaints

    chunked = load.run_h1load(binary, load.request_file(tmp_path / "c", "chunked", body), refusing_server, 2, 1)
    assert chunked.requests > 0 and chunked.errors == 0 and chunked.statuses == {"200": chunked.requests}
