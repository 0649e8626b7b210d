"""The peers of `python -m bench --peers`: what users would otherwise put between an OpenAI client
and Azure OpenAI, each with one worker, against the bench's fake upstream:
  litellm  the LiteLLM proxy, its Azure provider (a model_list entry azure/<deployment>);
  portkey  Portkey's open-source gateway (Node), headless, its azure-openai provider;
  fastapi  bench/fastapi_proxy.py: a minimal FastAPI + httpx proxy on uvicorn.
Each sends what the gateway sends: POST /openai/deployments/<deployment>/chat/completions
?api-version=<the gateway's> with the server's api-key. bench/peers_setup.sh installs them under
bench/.peers/; this module installs nothing, and skips a peer that is not there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from extproc.runtime.processes import free_port

from .load import CHAT_PATH, CLIENT_HEADERS
from .procs import Processes, wait_until
from .stacks import API_VERSION, HERE, MODEL_MAP, SERVER_API_KEY, Target, Upstream

PEERS_DIR = HERE / ".peers"
SETUP_HINT = "install it with bench/peers_setup.sh"
# LiteLLM alone imports for several seconds, more while another benchmark loads the machine.
START_TIMEOUT_S = 120.0
NODE_MIN_MAJOR = 18
MODEL = "gpt-4o"
CLIENT_KEY = CLIENT_HEADERS["authorization"].removeprefix("Bearer ")
DEPLOYMENT = MODEL_MAP[MODEL]


class Skipped(Exception):
    """Why a peer is not measured in this run."""


@dataclass
class PeerInfo:
    """What the report says about a peer: its versions, or why it was skipped."""

    setup: str
    name: str
    versions: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None


def _dist_version(venv: Path, dist: str) -> str:
    """A package's version from its .dist-info folder (no need to start the venv's Python)."""
    found = sorted(venv.glob(f"lib/python*/site-packages/{dist}-*.dist-info"))
    if not found:
        raise Skipped(f"{dist} is not installed in {venv}: {SETUP_HINT}")
    return found[-1].name.removesuffix(".dist-info").split("-", 1)[1]


def _peer_env(extra: dict[str, str]) -> dict[str, str]:
    """The run's environment without the operator's Azure/OpenAI/LiteLLM settings or database, plus `extra`."""
    prefixes = ("AZURE_", "AOAI_GATEWAY_", "OPENAI_", "LITELLM_", "PORTKEY_", "DATABASE_URL", "PYTHONPATH")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(prefixes)}, **extra}


def _answers(url: str, body: bytes, headers: dict[str, str]) -> bool:
    """True once the peer answers a chat request with 200; False while it is not listening yet.

    Any other status stops the wait: a peer that answers wrongly does not get better with time.
    """
    request = urllib.request.Request(url + CHAT_PATH, data=body, method="POST",
                                     headers={**CLIENT_HEADERS, **{k.lower(): v for k, v in headers.items()}})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own loopback URL
            return response.status == 200
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"answered {exc.code}: {exc.read()[:500]!r}") from exc
    except (urllib.error.URLError, OSError):
        return False


Started = tuple[Target, PeerInfo]


def _start(processes: Processes, info: PeerInfo, argv: list[str], env: dict[str, str], port: int,
           body: bytes, headers: dict[str, str] | None = None) -> Started:
    """Start a peer, wait until a real chat request gets 200 through it, and make it a wrk target."""
    url = f"http://127.0.0.1:{port}"
    proc = processes.start(f"peer-{info.setup}", argv, env=env)
    try:
        wait_until(lambda: _answers(url, body, headers or {}), processes, info.name, START_TIMEOUT_S)
    except RuntimeError:
        processes.stop(proc)
        raise
    return Target(info.setup, url, None, peer=proc, name=info.name, headers=headers or {}), info


def start_litellm(processes: Processes, upstream: Upstream, body: bytes) -> Started:
    """The LiteLLM proxy as its docs configure Azure: one model_list entry, a master key, no database,
    one worker."""
    venv = PEERS_DIR / "litellm"
    version = _dist_version(venv, "litellm")
    info = PeerInfo("litellm", f"litellm {version}", {"litellm": version, "uvicorn": _dist_version(venv, "uvicorn")})
    directory = processes.directory / "litellm"
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": MODEL, "litellm_params": {
            "model": f"azure/{DEPLOYMENT}", "api_base": upstream.url, "api_key": SERVER_API_KEY,
            "api_version": API_VERSION},
            # What Azure runs behind the deployment; without it LiteLLM logs an error per request.
            "model_info": {"base_model": f"azure/{MODEL}"}}],
        "litellm_settings": {"set_verbose": False, "telemetry": False},
        # It refuses to start without one (no auth otherwise). The key the bench's client sends, so
        # wrk's request is chat.lua's unchanged; with no database, LiteLLM checks it in memory.
        "general_settings": {"master_key": CLIENT_KEY},
    }, sort_keys=False))
    port = free_port()
    env = _peer_env({
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the cost map ships with it: no fetch at start
        "LITELLM_MODE": "PRODUCTION",  # in DEV mode it loads a .env from the working directory (ours)
        "LITELLM_LOG": "ERROR",
    })
    argv = [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]
    return _start(processes, info, argv, env, port, body)


def start_portkey(processes: Processes, upstream: Upstream, body: bytes) -> Started:
    """Portkey's gateway, headless, on Node. Its Azure provider builds https://{resource}.openai.azure.com
    from headers; x-portkey-custom-host replaces that base (loopback hosts are trusted by default)."""
    package = PEERS_DIR / "portkey" / "node_modules" / "@portkey-ai" / "gateway"
    node = shutil.which("node")
    if node is None:
        raise Skipped("node is not installed (apt-get install nodejs npm; then bench/peers_setup.sh)")
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if int(node_version.lstrip("v").split(".")[0]) < NODE_MIN_MAJOR:
        raise Skipped(f"node {node_version} is older than {NODE_MIN_MAJOR}, which the gateway needs")
    if not (package / "package.json").is_file():
        raise Skipped(f"@portkey-ai/gateway is not installed in {PEERS_DIR / 'portkey'}: {SETUP_HINT}")
    version = json.loads((package / "package.json").read_text())["version"]
    info = PeerInfo("portkey", f"portkey {version}", {"@portkey-ai/gateway": version, "node": node_version})
    port = free_port()
    headers = {
        # Portkey forwards the client's bearer token as the provider's key (api-key for Azure).
        "Authorization": f"Bearer {SERVER_API_KEY}",
        "x-portkey-provider": "azure-openai",
        "x-portkey-azure-resource-name": "bench",
        "x-portkey-azure-deployment-id": DEPLOYMENT,
        "x-portkey-azure-api-version": API_VERSION,
        "x-portkey-custom-host": f"{upstream.url}/openai",  # it appends /deployments/<id>/chat/completions
    }
    # Note: start-server.js 1.15.2 has no host option (hono's serve({fetch, port})): while the bench
    # runs, Portkey listens on every interface, unlike every other process here (loopback only).
    argv = [node, str(package / "build" / "start-server.js"), "--headless", f"--port={port}"]
    return _start(processes, info, argv, _peer_env({"NODE_ENV": "production"}), port, body, headers)


def start_fastapi(processes: Processes, upstream: Upstream, body: bytes) -> Started:
    """bench/fastapi_proxy.py on uvicorn, one worker, no access log."""
    venv = PEERS_DIR / "fastapi"
    versions = {dist: _dist_version(venv, dist) for dist in ("fastapi", "uvicorn", "httpx")}
    info = PeerInfo("fastapi", "fastapi+httpx", versions)
    port = free_port()
    env = _peer_env({"AZURE_OPENAI_ENDPOINT": upstream.url, "AZURE_OPENAI_API_KEY": SERVER_API_KEY,
                     "AZURE_OPENAI_API_VERSION": API_VERSION, "MODEL_MAP": json.dumps(MODEL_MAP)})
    argv = [str(venv / "bin" / "uvicorn"), "fastapi_proxy:app", "--app-dir", str(HERE), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--log-level", "warning", "--no-access-log"]
    return _start(processes, info, argv, env, port, body)


STARTERS: dict[str, Callable[[Processes, Upstream, bytes], Started]] = {
    "litellm": start_litellm, "portkey": start_portkey, "fastapi": start_fastapi,
}


def start_peers(processes: Processes, upstream: Upstream, body: bytes,
                log: Callable[[str], None]) -> tuple[list[Target], list[dict[str, object]]]:
    """Every peer that is installed and starts, and what the report says about each. A peer that is
    missing or fails to start is skipped with the reason, not fatal: the run is about the gateway."""
    targets: list[Target] = []
    infos: list[dict[str, object]] = []
    for setup, start in STARTERS.items():
        try:
            target, info = start(processes, upstream, body)
        except (Skipped, RuntimeError) as why:
            reason = str(why) if isinstance(why, Skipped) else f"it did not start: {why}"
            infos.append(asdict(PeerInfo(setup, setup, skipped=reason)))
            log(f"  {setup}: skipped: {reason}")
            continue
        targets.append(target)
        infos.append(asdict(info))
        log(f"  {setup}: {info.name} ({', '.join(f'{k} {v}' for k, v in info.versions.items())}) at {target.url}")
    return targets, infos
