"""The three things the benchmark starts: the fake Azure upstream, Envoy alone (a), and the
project's stack (b: Envoy + the ext_proc workers), all on free loopback ports (the peers of
`--peers` are in bench/peers.py).

(a) is the project's own rendered Envoy config with the ext_proc filter removed and one route to
the upstream: the same listener, access log, buffer limit and connection settings, so the
difference between (a) and (b) is the Python hop and nothing else.

With `--forward-proxy`, (b) once more with the forward-proxy mode on and an HTTPS listener, loaded by
bench/h1load.c three ways (`forward_proxy_targets`): plain HTTP, HTTPS, and HTTPS inside a CONNECT tunnel.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extproc import envoy_config
from extproc.envoy_config.rendering import USAGE_LOG_CLUSTER
from extproc.config import DEFAULT_API_VERSION, load_settings
from extproc.runtime.processes import free_port, http_ok

from .procs import Proc, Processes, wait_until

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER_API_KEY = "bench-azure-key"
BENCH_CLIENT_KEY = "sk-bench-client-key"  # what bench/chat.lua sends as its Bearer token
MODEL_MAP = {"gpt-4o": "prod-chat"}
FORWARD_PROXY_HOST = "api.openai.com"  # the host the tunnel rows CONNECT to (`--forward-proxy`)
API_VERSION = DEFAULT_API_VERSION  # what the gateway sends upstream (_gateway_config sets none)


@dataclass
class Target:
    """Something wrk can load: a URL and the processes whose CPU and memory are reported."""

    label: str
    url: str
    envoy: Proc | None  # None for a peer: it has no Envoy
    extproc: Proc | None = None
    workers: int = 0
    peer: Proc | None = None  # a peer's own process (bench/peers.py), with its workers
    name: str = ""  # a peer's name and version, for the report
    headers: dict[str, str] = field(default_factory=dict)  # sent by wrk beside chat.lua's
    # Loaded by bench/h1load.c instead of wrk (`--forward-proxy`): "http", "https" or "tunnel" (CONNECT, then TLS).
    via: str = ""
    address: str = ""  # h1load: the host:port it connects to (the gateway's listener)
    tls_name: str = ""  # h1load: the SNI and the name the certificate must carry
    ca_file: Path | None = None  # h1load: the CA that signed that certificate
    host_header: str = ""  # h1load: the request's Host
    # A gateway with the forward-proxy mode: its HTTPS port and state directory (the CAs are in it).
    https_port: int | None = None
    state_dir: Path | None = None


@dataclass
class Upstream:
    url: str
    admin: str

    def ok_responses(self) -> int:
        """The 2xx responses the fake upstream has sent so far: proof that a target's requests got there."""
        url = f"{self.admin}/stats?filter=downstream_rq_2xx"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own loopback URL
            text = response.read().decode()
        found = re.search(r"^http\.upstream\.downstream_rq_2xx: (\d+)$", text, re.MULTILINE)
        return int(found.group(1)) if found else 0


def _envoy_argv(config: Path, concurrency: int) -> list[str]:
    return [envoy_config.envoy_binary(), "-c", str(config), "--concurrency", str(concurrency),
            "--disable-hot-restart", "--log-level", "warn"]


def _dump(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.dump(config, Dumper=envoy_config.NoAliasDumper, sort_keys=False))
    return path


def start_upstream(processes: Processes, concurrency: int, sse_chunks: int, sse_interval_ms: float) -> Upstream:
    """The fake Azure resource: Envoy's direct_response (200 on any path), and the SSE server behind it."""
    sse_port, port, admin = free_port(), free_port(), free_port()
    processes.start("sse-server", [sys.executable, "-m", "bench.sse_server", "--port", str(sse_port),
                                   "--chunks", str(sse_chunks), "--interval-ms", str(sse_interval_ms)],
                    env={**os.environ, "PYTHONPATH": str(REPO)})
    config = yaml.safe_load((HERE / "upstream.yaml").read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    resources = config["static_resources"]
    resources["listeners"][0]["address"]["socket_address"]["port_value"] = port
    sse = resources["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    sse["address"]["socket_address"]["port_value"] = sse_port
    path = _dump(config, processes.directory / "upstream-envoy.yaml")
    processes.start("upstream-envoy", _envoy_argv(path, concurrency), stdout=Path(os.devnull))
    wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), processes, "the upstream Envoy")
    return Upstream(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")


def _gateway_config(directory: Path, upstream_url: str, workers: int, concurrency: int,
                    pool: str | None = None, forward_proxy: bool = False) -> tuple[Path, dict[str, Any]]:
    models: dict[str, Any] = dict(MODEL_MAP)
    backends = {}
    if pool in ("p", "t"):
        backends = {name: {"endpoint": upstream_url, "api_key": SERVER_API_KEY} for name in ("one", "two")}
        first = "throttled" if pool == "t" else MODEL_MAP["gpt-4o"]
        models["gpt-4o"] = [{"backend": "one", "deployment": first, "priority": 1},
                            {"backend": "two", "deployment": MODEL_MAP["gpt-4o"], "priority": 1 if pool == "p" else 2}]
    raw = {
        "azure": {"endpoint": upstream_url, "api_key": SERVER_API_KEY},
        **({"backends": backends} if backends else {}),
        "models": models,
        # "k": the wrk script's Bearer token is a client key, checked on every request, with a rate too high
        # to reach (Envoy's rate limit filter runs, never refuses).
        **({"clients": {"keys": [{"name": "bench", "key_sha256": hashlib.sha256(BENCH_CLIENT_KEY.encode()).hexdigest(),
                                  "requests_per_minute": 6_000_000}]}} if pool == "k" else {}),
        # "t" measures a failover on every request: the breaker must not take the 429ing member out.
        **({"circuit_breaker": {"failures": 1000, "interval_seconds": 0.001}} if pool == "t" else {}),
        "listen": {"address": "127.0.0.1", "http_port": free_port(), "https_port": free_port() if forward_proxy else None},
        # "x": the forward-proxy mode (CONNECT api.openai.com:443 on the HTTP listener), beside direct HTTPS
        # (the development CA's certificate) for the same requests with the same TLS and no tunnel.
        **({"forward_proxy": {"enabled": True, "hosts": [FORWARD_PROXY_HOST]}} if forward_proxy else {}),
        "envoy": {"admin_port": free_port(), "concurrency": concurrency},
        "metrics": {"port": free_port()},
        "extproc": {"workers": workers, "socket_dir": str(directory / "run")},
        "state_dir": str(directory),
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, raw


def _clean_env() -> dict[str, str]:
    """The run's environment without the operator's own gateway or Azure settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "AOAI_GATEWAY_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def start_plain(processes: Processes, upstream_url: str, concurrency: int) -> Target:
    """(a) Envoy alone: the project's config minus the ext_proc, one route to the upstream."""
    directory = processes.directory / "plain"
    path, raw = _gateway_config(directory, upstream_url, 1, concurrency)
    settings = load_settings(path, env={})
    config = envoy_config.render(settings, None)
    resources = config["static_resources"]
    # Nor the usage process's access log: (a) runs no usage process to send it to.
    resources["clusters"] = [c for c in resources["clusters"] if c["name"] not in ("extproc", USAGE_LOG_CLUSTER)]
    for listener in resources["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                hcm = network_filter["typed_config"]
                hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
                hcm["access_log"] = [log for log in hcm.get("access_log", []) if USAGE_LOG_CLUSTER not in str(log)]
                hcm["route_config"]["virtual_hosts"][0]["routes"] = [
                    {"match": {"prefix": "/v1/"}, "route": {"cluster": "azure", "timeout": "0s", "auto_host_rewrite": True}}
                ]
    rendered = envoy_config.write(config, directory / "envoy.yaml")
    envoy = processes.start("plain-envoy", _envoy_argv(rendered, concurrency), stdout=Path(os.devnull))
    admin = raw["envoy"]["admin_port"]
    wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), processes, "Envoy alone")
    return Target("a", f"http://127.0.0.1:{raw['listen']['http_port']}", envoy)


# (b) variants: the project's ext_proc as configured; the same on grpcio's asyncio server; and the
# floor, bench/floor_extproc.py (constant answers), which shows Envoy's own share of (b)'s cost.
# With --pool: "p", the model served by a pool of two healthy members (both the fake upstream), and
# "t", a pool whose first-priority member always answers 429 (every request fails over once: the
# breaker is set never to trip, else after three 429s no request would try that member).
# With --forward-proxy: "x", the forward-proxy mode and an HTTPS listener (forward_proxy_targets).
VARIANTS = {"b": "ext_proc", "g": "ext_proc on grpcio", "f": "floor server", "p": "pool of 2",
            "t": "pool, first member 429", "k": "client keys", "x": "forward proxy"}


def start_gateway(processes: Processes, upstream_url: str, workers: int, concurrency: int,
                  variant: str = "b") -> Target:
    """(b) the project's stack, started as `python -m extproc up` starts it."""
    name = f"{variant}{workers}"
    directory = processes.directory / f"gateway-{name}"
    path, raw = _gateway_config(directory, upstream_url, workers, concurrency, pool=variant if variant in "ptk" else None,
                                forward_proxy=variant == "x")
    settings = load_settings(path, env={})
    env = _clean_env()
    sockets = settings.socket_paths()
    if settings.pools:  # the breaker answers Envoy's health checks of the members
        sockets += [settings.breaker_paths.http, settings.breaker_paths.access_log]
    if variant == "f":
        argv = [sys.executable, "-m", "bench.floor_extproc", *(f"--socket={p}" for p in sockets)]
    else:
        argv = [sys.executable, "-m", "extproc", "--config", str(path), "--log-level", "WARNING", "serve"]
        if variant == "g":
            env["AOAI_GATEWAY_EXTPROC_RUNTIME"] = "grpcio"
    extproc = processes.start(f"extproc-{name}", argv, env=env)
    wait_until(lambda: all(p.is_socket() for p in sockets), processes, "the ext_proc sockets")
    rendered = envoy_config.prepare(settings, directory / "envoy.yaml")
    envoy = processes.start(f"envoy-{name}", _envoy_argv(rendered, concurrency), env=env, stdout=Path(os.devnull))
    admin = raw["envoy"]["admin_port"]
    wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), processes, "the gateway's Envoy")
    return Target(name, f"http://127.0.0.1:{raw['listen']['http_port']}", envoy, extproc, workers,
                  https_port=raw["listen"]["https_port"], state_dir=settings.state_path)


def forward_proxy_targets(gateway: Target) -> list[Target]:
    """What h1load measures on a forward-proxy gateway ("x"), the same request each way: "d", plain HTTP to its
    listener (the direct row, from the same client); "s", HTTPS to its HTTPS listener (TLS without a tunnel);
    "c", `CONNECT api.openai.com:443` to the HTTP listener, then TLS inside with the forward-proxy CA's leaf."""
    assert gateway.https_port is not None and gateway.state_dir is not None
    http = gateway.url.removeprefix("http://")
    common = {"envoy": gateway.envoy, "extproc": gateway.extproc, "workers": gateway.workers}
    n = gateway.workers
    return [
        Target(f"d{n}", gateway.url, via="http", address=http, host_header=http, **common),
        Target(f"s{n}", f"https://127.0.0.1:{gateway.https_port}", via="https",
               address=f"127.0.0.1:{gateway.https_port}", tls_name="localhost",
               ca_file=gateway.state_dir / "tls" / "ca.crt", host_header=f"localhost:{gateway.https_port}", **common),
        Target(f"c{n}", f"https://{FORWARD_PROXY_HOST}", via="tunnel", address=http, tls_name=FORWARD_PROXY_HOST,
               ca_file=gateway.state_dir / "forward-proxy" / "ca.crt", host_header=FORWARD_PROXY_HOST, **common),
    ]
