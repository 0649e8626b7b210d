"""`python -m bench`: the Python hop's cost, measured beside Envoy alone, in one run on one machine.

Starts a fake Azure upstream (Envoy direct_response, plus an SSE server behind it), Envoy alone (a)
and the project's stack (b) with 1 and N ext_proc processes, then drives them back to back with the
same wrk parameters and the same chat body, and prints (and saves as JSON):
  - requests/s, p50, p99, errors, the ratio (b)/(a), ext_proc and Envoy CPU time per request;
  - SSE streaming through (a) and (b): time to first byte, gaps between chunks;
  - a ~1 MiB chat body through (a) and (b): success and added latency;
  - the ext_proc's RSS before/after a soak (default 60 s) under load;
  - whether each target of the design holds.
With `--forward-proxy`, also requests through the forward-proxy mode's CONNECT tunnel, kept alive, beside the
same request sent directly over HTTP and HTTPS to the same gateway, all three by bench/h1load.c (wrk cannot
send a CONNECT; one client for the three keeps them comparable), as extra rows of the throughput table.
With `--peers`, also the alternatives users would otherwise run (bench/peers.py: the LiteLLM proxy,
Portkey's gateway, a minimal FastAPI + httpx proxy), one worker each, against the same upstream with
the same wrk parameters and body, as extra rows of the throughput table.
Needs wrk (bench/setup.sh installs it; `--forward-proxy` also a C compiler and OpenSSL's headers, which it
installs too); `--profile` also needs py-spy (bench/setup.sh --profile);
`--peers` needs the peers (bench/peers_setup.sh).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from extproc import envoy_config

from . import load
from .procs import Processes, cpu_seconds, machine_busy_seconds, rss_bytes
from .peers import start_peers
from .stacks import FORWARD_PROXY_HOST, Target, Upstream, forward_proxy_targets, start_gateway, start_plain, start_upstream

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "latest.json"

# The targets of the design (issue 3), checked on every run.
MIN_THROUGHPUT_RATIO = 0.7  # (b)/(a) at 16 connections
MIN_POOL_THROUGHPUT_SHARE = 0.95  # a healthy two-member pool against one backend
MAX_ADDED_P50_MS = 0.5  # (b)-(a) at 1 connection
MAX_FIRST_BYTE_ADDED_MS = 1.0
MAX_LARGE_BODY_ADDED_MS = 10.0
# "Within noise": the streams never enter Python, so the gaps through (b) must match (a)'s to a
# fraction of a millisecond on average and within a millisecond at p99.
MAX_GAP_MEAN_DIFF_MS = 0.25
MAX_GAP_P99_DIFF_MS = 1.0
# "Flat": the ext_proc's RSS may grow by at most this much over the soak, after warm-up.
MAX_RSS_GROWTH_BYTES = 2 * 1024 * 1024


def _parser() -> argparse.ArgumentParser:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per point (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each point, not measured")
    p.add_argument("--connections", default="1,16,64", help="wrk connection counts (default 1,16,64)")
    p.add_argument("--workers", default=",".join(sorted({"1", str(cores)}, key=int)),
                   help=f"ext_proc process counts for (b), one stack each (default 1,{cores})")
    p.add_argument("--envoy-concurrency", type=int, default=cores,
                   help=f"Envoy worker threads of (a) and (b) alike (default {cores}, the project's default)")
    p.add_argument("--upstream-concurrency", type=int, default=1, help="worker threads of the fake upstream Envoy")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1; capped at connections)")
    p.add_argument("--streams", type=int, default=10, help="SSE streams per setup (default 10)")
    p.add_argument("--sse-chunks", type=int, default=20)
    p.add_argument("--sse-interval-ms", type=float, default=20.0)
    p.add_argument("--large-body-bytes", type=int, default=1024 * 1024)
    p.add_argument("--large-body-requests", type=int, default=20)
    p.add_argument("--soak", type=float, default=60.0, help="seconds of the memory soak at 16 connections (0: skip)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="also record the ext_proc with py-spy at 16 connections; write the profiles to DIR")
    p.add_argument("--grpcio", action="store_true",
                   help="also measure the ext_proc on grpcio's asyncio server (AOAI_GATEWAY_EXTPROC_RUNTIME=grpcio)")
    p.add_argument("--pool", action="store_true",
                   help="also measure the model served by a pool of two healthy members, and by a pool whose "
                        "first member always answers 429 (each request fails over once)")
    p.add_argument("--client-keys", action="store_true",
                   help="also measure the gateway with client keys configured (every request's key is checked)")
    p.add_argument("--floor", action="store_true",
                   help="also measure bench/floor_extproc.py (constant answers, no decoding) in place of the "
                        "ext_proc: Envoy's own share of (b)")
    p.add_argument("--forward-proxy", action="store_true",
                   help="also measure the gateway with the forward-proxy mode: requests inside a CONNECT tunnel to "
                        f"{FORWARD_PROXY_HOST}:443 on kept-alive connections, beside the same request over plain HTTP "
                        "and HTTPS, all three with bench/h1load.c (needs a C compiler and OpenSSL's headers: "
                        "bench/setup.sh)")
    p.add_argument("--peers", action="store_true",
                   help="also measure the LiteLLM proxy, Portkey's gateway and a minimal FastAPI + httpx proxy "
                        "(one worker each; throughput only; install them first with bench/peers_setup.sh)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to save the results (default {DEFAULT_JSON})")
    p.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs)")
    return p


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    envoy = subprocess.run([envoy_config.envoy_binary(), "--version"], capture_output=True, text=True).stdout
    wrk = subprocess.run([load.wrk_binary(), "-v"], capture_output=True, text=True).stdout.splitlines()
    mem_kib = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                    if l.startswith("MemTotal:")), 0)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": envoy.strip().split("version: ")[-1],
        "wrk": wrk[0].split(" Copyright")[0] if wrk else "?",
    }


class Bench:
    def __init__(self, args: argparse.Namespace, processes: Processes) -> None:
        self.args = args
        self.processes = processes
        self.body_file = processes.directory / "chat.json"
        self.body_file.write_bytes(load.chat_body())
        self.upstream: Upstream | None = None  # set once started: counts what reached it
        self.h1load: Path | None = None  # built with --forward-proxy
        self.request_files: dict[str, Path] = {}  # h1load's whole request, per target (the Host differs)

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def drive(self, target: Target, connections: int, seconds: float) -> load.WrkResult:
        """wrk, or for the forward-proxy rows bench/h1load.c, on `target` for `seconds`."""
        a = self.args
        if not target.via:
            return load.run_wrk(target.url, self.body_file, connections, a.wrk_threads, seconds, target.headers)
        assert self.h1load is not None
        if target.label not in self.request_files:
            path = self.processes.directory / f"request-{target.label}.http"
            self.request_files[target.label] = load.request_file(path, target.host_header, self.body_file.read_bytes())
        return load.run_h1load(self.h1load, self.request_files[target.label], target.address, connections, seconds,
                               tls_name=target.tls_name, ca_file=target.ca_file,
                               tunnel=f"{FORWARD_PROXY_HOST}:443" if target.via == "tunnel" else "")

    def point(self, target: Target, connections: int) -> dict[str, Any]:
        """Warm up, then one measured wrk (or h1load) run; CPU from /proc before and after."""
        a = self.args
        if a.warmup > 0:
            self.drive(target, connections, a.warmup)
        self.processes.check_alive()
        ext_pids = target.extproc.tree() if target.extproc else []
        envoy_pids = [target.envoy.pid] if target.envoy else []
        peer_pids = target.peer.tree() if target.peer else []
        ext_before, envoy_before = cpu_seconds(ext_pids), cpu_seconds(envoy_pids)
        peer_before = cpu_seconds(peer_pids)
        upstream_before = self.upstream.ok_responses() if self.upstream else 0
        busy_before = machine_busy_seconds()
        result = self.drive(target, connections, a.duration)
        ext_cpu, envoy_cpu = cpu_seconds(ext_pids) - ext_before, cpu_seconds(envoy_pids) - envoy_before
        peer_cpu = cpu_seconds(peer_pids) - peer_before
        busy = machine_busy_seconds() - busy_before
        upstream_ok = self.upstream.ok_responses() - upstream_before if self.upstream else None
        self.processes.check_alive()
        n = max(result.requests, 1)
        row = {
            "setup": target.label,
            "peer": target.name or None,
            "load_generator": "h1load" if target.via else "wrk",
            # h1load's rows: how the requests reached the gateway ("http", "https", "tunnel": CONNECT, then TLS).
            "via": target.via or None,
            "extproc_workers": target.workers,
            "connections": connections,
            "requests": result.requests,
            "seconds": round(result.seconds, 3),
            "rps": round(result.rps, 1),
            "p50_ms": result.p50_ms,
            "p90_ms": result.p90_ms,
            "p99_ms": result.p99_ms,
            "max_ms": result.max_ms,
            "errors": result.errors,
            "extproc_cpu_us_per_req": round(ext_cpu / n * 1e6, 1) if target.extproc else None,
            "envoy_cpu_us_per_req": round(envoy_cpu / n * 1e6, 1) if target.envoy else None,
            # A peer's own process and its children: all it spends (it has no Envoy or ext_proc).
            "peer_cpu_us_per_req": round(peer_cpu / n * 1e6, 1) if target.peer else None,
            # 2xx answers of the fake upstream while wrk measured (a few more than `requests`: the
            # requests still in flight when wrk stopped): proof that the requests got there.
            "upstream_2xx": upstream_ok,
            # The load generator's own CPU (wrk's or h1load's): what the client takes from the two cores.
            "client_cpu_us_per_req": round(result.client_cpu_s / n * 1e6, 1),
            # Everything on the machine: wrk, the upstream, Envoy, the ext_proc (or the peer).
            "machine_cpu_us_per_req": round(busy / n * 1e6, 1),
        }
        if target.via:
            # `requests` and req/s count 2xx answers only; these say what else came back.
            row.update(non_2xx=result.non_2xx, statuses=result.statuses, reconnects=result.reconnects)
        self.log(f"  {target.label:>3} c={connections:<3} {row['rps']:>9.1f} req/s  p50 {row['p50_ms']:.3f} ms  "
                 f"p99 {row['p99_ms']:.3f} ms  errors {row['errors']}"
                 + (f"  ext_proc {row['extproc_cpu_us_per_req']} us/req" if target.extproc else "")
                 + f"  client {row['client_cpu_us_per_req']} us/req"
                 + (f"  statuses {result.statuses} (via {target.via})" if target.via else "")
                 + (f"  {target.name} {row['peer_cpu_us_per_req']} us/req, upstream 2xx {upstream_ok}"
                    if target.peer else ""))
        if result.complaints:
            self.log("    h1load: " + result.complaints.replace("\n", "\n    h1load: "))
        return row

    def streaming(self, target: Target) -> dict[str, Any]:
        a = self.args
        envoy_pids = [target.envoy.pid] if target.envoy else []
        envoy_before = cpu_seconds(envoy_pids)
        samples = load.stream_samples(target.url, a.streams, a.sse_chunks, a.sse_interval_ms)
        envoy_cpu = cpu_seconds(envoy_pids) - envoy_before
        stats = load.stream_stats(samples, a.sse_interval_ms)
        # Envoy's CPU over the streams (the warm-up's too) per chunk relayed: what reading each chunk costs
        # (the gateway's usage Lua filter) shows as the difference from (a); each stream's request is in it too.
        chunks = (a.streams * a.sse_chunks + 2) or 1
        stats["envoy_cpu_us_per_chunk"] = round(envoy_cpu / chunks * 1e6, 2) if target.envoy else None
        self.log(f"  {target.label:>3} stream: first byte {stats['first_byte_p50_ms']:.3f} ms, gaps mean "
                 f"{stats['gap_mean_ms']:.3f} p99 {stats['gap_p99_ms']:.3f} ms, Envoy CPU "
                 f"{stats['envoy_cpu_us_per_chunk']} us/chunk")
        return {"setup": target.label, "extproc_workers": target.workers, **stats}

    def large_body(self, target: Target) -> dict[str, Any]:
        body = load.chat_body(self.args.large_body_bytes)
        load.large_body(target.url, body, 2)  # warm-up
        result = load.large_body(target.url, body, self.args.large_body_requests)
        self.log(f"  {target.label:>3} {result.body_bytes} B body: {result.ok}/{result.requests} ok, "
                 f"p50 {result.p50_ms:.3f} ms")
        return {"setup": target.label, "extproc_workers": target.workers, **asdict(result)}

    def soak(self, target: Target, seconds: float, connections: int = 16) -> dict[str, Any]:
        """RSS of all ext_proc processes every few seconds while wrk runs, after a warm-up."""
        assert target.extproc is not None
        a = self.args
        load.run_wrk(target.url, self.body_file, connections, a.wrk_threads, max(a.warmup, 2.0))
        pids = target.extproc.tree()
        samples: list[tuple[float, int]] = []
        outcome: dict[str, Any] = {}

        def drive() -> None:
            try:
                outcome["wrk"] = load.run_wrk(target.url, self.body_file, connections, a.wrk_threads, seconds)
            except Exception as exc:  # noqa: BLE001 - reported below
                outcome["error"] = exc

        thread = threading.Thread(target=drive)
        start = time.monotonic()
        thread.start()
        step = max(1.0, seconds / 12)
        while thread.is_alive():
            samples.append((round(time.monotonic() - start, 1), rss_bytes(pids)))
            thread.join(step)
        samples.append((round(time.monotonic() - start, 1), rss_bytes(pids)))
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["wrk"]
        before, after = samples[0][1], samples[-1][1]
        self.log(f"  {target.label:>3} soak {seconds:g} s: RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB "
                 f"over {result.requests} requests")
        return {
            "setup": target.label, "extproc_workers": target.workers, "connections": connections,
            "seconds": seconds, "requests": result.requests, "errors": result.errors,
            "rss_before_bytes": before, "rss_after_bytes": after, "rss_growth_bytes": after - before,
            "rss_samples": [{"t_s": t, "rss_bytes": r} for t, r in samples],
        }

    def profile(self, target: Target, directory: Path, connections: int = 16) -> dict[str, Any]:
        """py-spy on every ext_proc process while wrk runs; collapsed stacks + a self-time summary."""
        from .profile import record

        return record(target, directory, lambda seconds: load.run_wrk(
            target.url, self.body_file, connections, self.args.wrk_threads, seconds), self.args.duration)


def _ratio(b: float | None, a: float | None) -> float | None:
    return round(b / a, 3) if a and b is not None else None


def evaluate(results: dict[str, Any], workers: list[int]) -> list[dict[str, Any]]:
    """Each target of the design, for (b) with each process count: the measured value, whether it holds."""
    rows = {(r["setup"], r["connections"]): r for r in results["throughput"]}
    streams = {r["setup"]: r for r in results.get("streaming", [])}
    large = {r["setup"]: r for r in results.get("large_body", [])}
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: str, ok: bool | None) -> None:
        checks.append({"target": name, "value": value, "limit": limit, "holds": ok})

    for n in workers:
        b, pool, failover = f"b{n}", f"p{n}", f"t{n}"
        if (pool, 16) in rows and (b, 16) in rows:
            # A healthy pool costs nothing beyond its per-try filters (issue 13: within 5%).
            share = _ratio(rows[(pool, 16)]["rps"], rows[(b, 16)]["rps"])
            check(f"healthy pool of 2 x{n}: throughput / (b x{n}), 16 connections", share,
                  f">= {MIN_POOL_THROUGHPUT_SHARE}", share is not None and share >= MIN_POOL_THROUGHPUT_SHARE)
        keys = f"k{n}"
        if (keys, 16) in rows and (b, 16) in rows:
            share = _ratio(rows[(keys, 16)]["rps"], rows[(b, 16)]["rps"])
            check(f"client keys x{n}: throughput / (b x{n}), 16 connections", share, "report (within noise)", None)
        if (failover, 1) in rows and (b, 1) in rows:
            added = round(rows[(failover, 1)]["p50_ms"] - rows[(b, 1)]["p50_ms"], 3)
            check(f"a failover (1st member 429) x{n}: p50 added to (b x{n}), 1 connection, ms", added, "report", None)
        # --forward-proxy: the tunnel against the same request sent directly, both by h1load on the same gateway.
        direct, https, tunnel = f"d{n}", f"s{n}", f"c{n}"
        tunnel_rows = [r for r in results["throughput"] if r["setup"] == tunnel]
        if tunnel_rows:
            bad = sum(r["errors"] for r in tunnel_rows)  # h1load's errors include every answer that was not 2xx
            check(f"forward proxy x{n}: requests through the tunnel not answered 2xx, or failed", bad, "== 0", bad == 0)
            shared = sorted(c for (setup, c) in rows if setup == tunnel and (direct, c) in rows)
            busy = 16 if 16 in shared else shared[-1] if shared else None
            if busy is not None:
                for other, what in ((tunnel, "tunnel"), (https, "HTTPS")):
                    if (other, busy) in rows:
                        share = _ratio(rows[(other, busy)]["rps"], rows[(direct, busy)]["rps"])
                        check(f"forward proxy x{n}: {what} / direct HTTP (same client), {busy} connections, req/s",
                              share, "report", None)
                # Beside plain HTTP: TLS and the tunnel; beside HTTPS: the tunnel's own hop (CONNECT, internal listener).
                for other, what in ((direct, "direct HTTP"), (https, "HTTPS")):
                    if (other, busy) in rows:
                        added = round(rows[(tunnel, busy)]["envoy_cpu_us_per_req"]
                                      - rows[(other, busy)]["envoy_cpu_us_per_req"], 1)
                        check(f"forward proxy x{n}: Envoy CPU, tunnel - {what}, {busy} connections, us/req",
                              added, "report", None)
            if 1 in shared:
                added = round(rows[(tunnel, 1)]["p50_ms"] - rows[(direct, 1)]["p50_ms"], 3)
                check(f"forward proxy x{n}: p50 added by the tunnel, 1 connection, ms", added, "report", None)
    for n in workers:
        b, x = f"b{n}", f"(b x{n})"
        if ("a", 16) in rows and (b, 16) in rows:
            a16, b16 = rows[("a", 16)], rows[(b, 16)]
            ratio = _ratio(b16["rps"], a16["rps"])
            check(f"throughput {x}/(a), 16 connections", ratio, f">= {MIN_THROUGHPUT_RATIO}",
                  ratio is not None and ratio >= MIN_THROUGHPUT_RATIO)
            # The same ratio if the ext_proc took no CPU at all (the machine is CPU-bound): what is
            # left of (b)'s cost beyond (a)'s is Envoy's own work for the ext_proc hop.
            left = b16["machine_cpu_us_per_req"] - (b16["extproc_cpu_us_per_req"] or 0)
            ceiling = round(a16["machine_cpu_us_per_req"] / left, 3) if left > 0 else None
            check(f"  (bound) the same with a zero-CPU ext_proc: all CPU/req (a) / {x} less ext_proc's", ceiling,
                  f">= {MIN_THROUGHPUT_RATIO}", ceiling is not None and ceiling >= MIN_THROUGHPUT_RATIO)
        if ("a", 1) in rows and (b, 1) in rows:
            added = round(rows[(b, 1)]["p50_ms"] - rows[("a", 1)]["p50_ms"], 3)
            check(f"p50 {x}-(a), 1 connection, ms", added, f"<= {MAX_ADDED_P50_MS}", added <= MAX_ADDED_P50_MS)
        if "a" in streams and b in streams:
            sa, sb = streams["a"], streams[b]
            first = round(sb["first_byte_p50_ms"] - sa["first_byte_p50_ms"], 3)
            check(f"streaming: first byte {x}-(a), ms", first, f"<= {MAX_FIRST_BYTE_ADDED_MS}",
                  first <= MAX_FIRST_BYTE_ADDED_MS)
            mean_diff = round(sb["gap_mean_ms"] - sa["gap_mean_ms"], 3)
            p99_diff = round(sb["gap_p99_ms"] - sa["gap_p99_ms"], 3)
            check(f"streaming: mean gap {x}-(a), ms", mean_diff, f"|x| <= {MAX_GAP_MEAN_DIFF_MS}",
                  abs(mean_diff) <= MAX_GAP_MEAN_DIFF_MS)
            check(f"streaming: p99 gap {x}-(a), ms", p99_diff, f"|x| <= {MAX_GAP_P99_DIFF_MS}",
                  abs(p99_diff) <= MAX_GAP_P99_DIFF_MS)
        if b in large:
            check(f"1 MiB body through {x}: all succeed", large[b]["ok"], f"== {large[b]['requests']}",
                  large[b]["ok"] == large[b]["requests"])
            if "a" in large:
                added = round(large[b]["p50_ms"] - large["a"]["p50_ms"], 3)
                check(f"1 MiB body: p50 {x}-(a), ms", added, f"<= {MAX_LARGE_BODY_ADDED_MS}",
                      added <= MAX_LARGE_BODY_ADDED_MS)
    if results.get("soak"):
        soak = results["soak"]
        growth = soak["rss_growth_bytes"]
        check(f"ext_proc RSS growth over {soak['seconds']:g} s under load (b x{soak['extproc_workers']}), bytes",
              growth, f"<= {MAX_RSS_GROWTH_BYTES}", growth <= MAX_RSS_GROWTH_BYTES)
    return checks


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


# Each setup's label starts with its letter; "a" is Envoy alone, any other letter the gateway ("b").
SETUP_NAMES = {
    "g": "b on grpcio", "f": "floor: constant server", "p": "b: pool of 2", "t": "b: pool, 1st member 429",
    "k": "b: client keys", "d": "b+fwd proxy: direct HTTP (h1load)", "s": "b+fwd proxy: HTTPS (h1load)",
    "c": "b+fwd proxy: CONNECT tunnel (h1load)",
}


def _setup_name(label: str, workers: int) -> str:
    if label == "a":
        return "a: Envoy alone"
    return f"{SETUP_NAMES.get(label[:1], 'b: + ext_proc')} x{workers}"


def _peers_note(peers: list[dict[str, Any]]) -> str:
    """What the peer rows are: versions, how they ran, and the peers that were skipped."""
    ran = [f"{x['name']} ({', '.join(f'{k} {v}' for k, v in x['versions'].items())})"
           for x in peers if not x["skipped"]]
    skipped = [f"{x['setup']}: skipped: {x['skipped']}" for x in peers if x["skipped"]]
    return "\n".join([
        "Peers (--peers), one worker each, against the same upstream: " + ("; ".join(ran) or "none ran") + ".",
        "Their ratio and p50 +ms are against (a) too; peer CPU is the peer's whole process tree (it has no "
        "Envoy or ext_proc).",
        *skipped,
    ])


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    p = results["parameters"]
    out = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"Envoy {m['envoy']}, {m['wrk']}",
        f"Envoy --concurrency {p['envoy_concurrency']} (a and b), upstream Envoy --concurrency "
        f"{p['upstream_concurrency']}, wrk -t{p['wrk_threads']}, {p['duration_s']:g} s per point after "
        f"{p['warmup_s']:g} s warm-up, chat body {p['body_bytes']} B; nothing pinned to cores.",
        "",
        "Throughput and latency (POST /v1/chat/completions, non-streaming):",
    ]
    a_rows = {r["connections"]: r for r in results["throughput"] if r["setup"] == "a"}
    # The peers' column only when they ran: without --peers the table stays as it was.
    with_peers = any(r.get("peer") for r in results["throughput"])
    # The load generator's own CPU where two of them are in the table (--forward-proxy's h1load beside wrk).
    with_client = any(r.get("via") for r in results["throughput"])
    rows = []
    for r in results["throughput"]:
        # h1load's rows are compared with each other (in the targets), not with wrk's (a): another client.
        base = a_rows.get(r["connections"]) if r.get("load_generator", "wrk") == "wrk" else None
        ratio = _ratio(r["rps"], base["rps"]) if base and r["setup"] != "a" else None
        added = r["p50_ms"] - base["p50_ms"] if base and r["setup"] != "a" else None
        rows.append([str(r["connections"]), r.get("peer") or _setup_name(r["setup"], r["extproc_workers"]),
                     _fmt(r["rps"], 0), _fmt(r["p50_ms"], 3), _fmt(r["p99_ms"], 3), str(r["errors"]), _fmt(ratio),
                     _fmt(added, 3), _fmt(r["extproc_cpu_us_per_req"], 0), _fmt(r["envoy_cpu_us_per_req"], 0),
                     *([_fmt(r.get("peer_cpu_us_per_req"), 0)] if with_peers else []),
                     *([_fmt(r.get("client_cpu_us_per_req"), 0)] if with_client else []),
                     _fmt(r["machine_cpu_us_per_req"], 0)])
    out.append(_table(["conns", "setup", "req/s", "p50 ms", "p99 ms", "errors", "ratio b/a", "p50 +ms",
                       "ext_proc CPU us/req", "Envoy CPU us/req", *(["peer CPU us/req"] if with_peers else []),
                       *(["client CPU us/req"] if with_client else []), "all CPU us/req"], rows))
    if any(r.get("via") for r in results["throughput"]):
        out.append(f"b+fwd proxy (--forward-proxy): the gateway with forward_proxy on, loaded by bench/h1load.c (wrk "
                   f"cannot CONNECT) on kept-alive connections: plain HTTP; HTTPS to its HTTPS listener; and "
                   f"CONNECT {FORWARD_PROXY_HOST}:443 to its HTTP listener, then TLS inside. req/s counts 2xx "
                   f"answers only; errors include every other answer. Compare these rows with each other, not with "
                   f"wrk's (the targets give their ratios).")
    if results.get("peers"):
        out.append(_peers_note(results["peers"]))
    if results.get("streaming"):
        out += ["", f"SSE streaming ({p['sse_chunks']} chunks every {p['sse_interval_ms']:g} ms, "
                    f"{p['streams']} streams each, one at a time on a keep-alive connection):"]
        rows = [[_setup_name(s["setup"], s["extproc_workers"]), _fmt(s["first_byte_p50_ms"], 3),
                 _fmt(s["first_event_p50_ms"], 3), _fmt(s["gap_mean_ms"], 3), _fmt(s["gap_p50_ms"], 3),
                 _fmt(s["gap_p99_ms"], 3), _fmt(s["gap_max_ms"], 3), _fmt(s["gap_stdev_ms"], 3),
                 _fmt(s.get("envoy_cpu_us_per_chunk"), 2)]
                for s in results["streaming"]]
        out.append(_table(["setup", "first byte p50 ms", "first event p50 ms", "gap mean ms", "gap p50 ms",
                           "gap p99 ms", "gap max ms", "gap stdev ms", "Envoy CPU us/chunk"], rows))
    if results.get("large_body"):
        base = next((r for r in results["large_body"] if r["setup"] == "a"), None)
        out += ["", f"Large chat body ({p['large_body_bytes']} B, {p['large_body_requests']} requests, one at a time):"]
        rows = [[_setup_name(r["setup"], r["extproc_workers"]), f"{r['ok']}/{r['requests']}",
                 ",".join(map(str, r["statuses"])), _fmt(r["p50_ms"], 3), _fmt(r["max_ms"], 3),
                 _fmt(r["p50_ms"] - base["p50_ms"], 3) if base and r["setup"] != "a" else "-"]
                for r in results["large_body"]]
        out.append(_table(["setup", "ok", "statuses", "p50 ms", "max ms", "added p50 ms"], rows))
    if results.get("soak"):
        s = results["soak"]
        out += ["", f"ext_proc memory under load ({_setup_name(s['setup'], s['extproc_workers'])}, "
                    f"{s['connections']} connections, {s['seconds']:g} s, {s['requests']} requests): RSS "
                    f"{s['rss_before_bytes'] / 2**20:.1f} MiB -> {s['rss_after_bytes'] / 2**20:.1f} MiB "
                    f"({s['rss_growth_bytes'] / 2**10:+.0f} KiB); samples: "
                    + " ".join(f"{x['rss_bytes'] / 2**20:.1f}" for x in s["rss_samples"])]
    if results.get("targets"):
        out += ["", "Targets:"]
        rows = [[t["target"], _fmt(t["value"], 3), t["limit"],
                 "-" if t["holds"] is None else "yes" if t["holds"] else "NO"] for t in results["targets"]]
        out.append(_table(["target", "measured", "limit", "holds"], rows))
    return "\n".join(out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    connections = _ints(args.connections)
    workers = _ints(args.workers)
    main_workers = max(workers)
    directory = Path(tempfile.mkdtemp(prefix="aoai-bench-"))
    processes = Processes(directory)
    results: dict[str, Any] = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "parameters": {
            "duration_s": args.duration, "warmup_s": args.warmup, "connections": connections,
            "extproc_workers": workers, "envoy_concurrency": args.envoy_concurrency,
            "upstream_concurrency": args.upstream_concurrency, "wrk_threads": args.wrk_threads,
            "body_bytes": len(load.chat_body()), "streams": args.streams, "sse_chunks": args.sse_chunks,
            "sse_interval_ms": args.sse_interval_ms, "large_body_bytes": len(load.chat_body(args.large_body_bytes)),
            "large_body_requests": args.large_body_requests, "soak_s": args.soak, "peers": args.peers,
            "forward_proxy": args.forward_proxy,
        },
        "throughput": [], "streaming": [], "large_body": [], "soak": None, "profile": None, "peers": [],
    }
    try:
        bench = Bench(args, processes)
        bench.log(f"run directory: {directory}")
        if args.forward_proxy:
            bench.h1load = load.build_h1load(directory)
        upstream = start_upstream(processes, args.upstream_concurrency, args.sse_chunks, args.sse_interval_ms)
        bench.upstream = upstream
        targets = [start_plain(processes, upstream.url, args.envoy_concurrency)]
        targets += [start_gateway(processes, upstream.url, n, args.envoy_concurrency) for n in workers]
        for flag, variant in ((args.grpcio, "g"), (args.floor, "f"), (args.pool, "p"), (args.pool, "t"),
                              (args.client_keys, "k")):
            if flag:
                targets += [start_gateway(processes, upstream.url, n, args.envoy_concurrency, variant)
                            for n in workers]
        tunnelled: list[Target] = []  # --forward-proxy: h1load's rows, throughput only
        if args.forward_proxy:
            for n in workers:
                tunnelled += forward_proxy_targets(
                    start_gateway(processes, upstream.url, n, args.envoy_concurrency, "x"))
        peers: list[Target] = []
        if args.peers:
            bench.log("peers:")
            peers, results["peers"] = start_peers(processes, upstream, bench.body_file.read_bytes(), bench.log)
        bench.log("throughput (a, then b with each process count" + (", then the forward proxy's" if tunnelled else "")
                  + (", then the peers" if peers else "") + ", per connection count):")
        for c in connections:
            # The forward proxy's and the peers only here: streaming, the large body and the soak are about (a) and (b).
            for target in targets + tunnelled + peers:
                results["throughput"].append(bench.point(target, c))
        if args.streams > 0:
            bench.log("streaming:")
            results["streaming"] = [bench.streaming(t) for t in targets]
        if args.large_body_requests > 0:
            bench.log("large body:")
            results["large_body"] = [bench.large_body(t) for t in targets]
        main = next(t for t in targets if t.workers == main_workers)
        if args.soak > 0:
            bench.log("memory soak:")
            results["soak"] = bench.soak(main, args.soak)
        if args.profile:
            bench.log("profile:")
            results["profile"] = bench.profile(main, args.profile)
        results["targets"] = evaluate(results, workers)
    finally:
        processes.stop_all()
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        load.wrk_binary()
        results = run(args)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = report(results)
    print(text)
    results["table"] = text
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nsaved {args.json}", file=sys.stderr)
    return 0
