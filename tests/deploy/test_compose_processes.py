"""docker-compose.yml run as compose would run it, with processes instead of containers (no Docker
engine here): the `demo` profile's emulator, the ext_proc and Envoy, each started with its compose
service's command and environment (.env = .env.example, copied unchanged), the image's entrypoint and
ENV, and the container paths of their volumes laid out in a temporary directory. Envoy starts when the
ext_proc's compose healthcheck passes, and runs the config the ext_proc rendered into the shared
volume. Then the example app's settings (OPENAI_API_BASE_URL, OPENAI_API_KEY) send a real request
with the openai SDK through Envoy to the emulator.

What differs from containers, and only this: every server binds 127.0.0.1 on a free port (the
compose config file's ports, and the emulator's, are overridden; compose service names resolve to
127.0.0.1), and `python`/`/usr/local/bin/envoy` are this environment's (the same Envoy version).
The observability profile's Prometheus is not run: its scrape (deploy/observability/prometheus.yml's
target and path) is made here, and must find the request counted."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import yaml
from openai import OpenAI

from extproc.runtime.processes import free_port

from .flavours import compose_flavour, materialize, uncomment_section, with_forward_proxy
from .observability import prometheus_config, scrape_targets
from .helpers import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    compose_resolved,
    flag_value,
    healthcheck_argv,
    interpolate_tree,
    parse_dockerfile,
    read_env_file,
    remap,
    require_tool,
    service_environment,
    venv_bin,
)

START_TIMEOUT_S = 30.0
ADMIN_PORT = 9901  # deploy/compose/config.yaml's envoy.admin_port, asserted below


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        self.running.append((name, process))
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def wait_for(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, process in self.running:
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode} waiting for {what}:\n{self.log(name)}")
            if check():
                return
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}:\n" + "\n".join(f"--- {n}\n{self.log(n)}" for n, _ in self.running))

    def stop(self) -> None:
        for name, process in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes() -> Iterator[Processes]:
    with tempfile.TemporaryDirectory(prefix="aoai-logs-") as logs:
        running = Processes(Path(logs))
        try:
            yield running
        finally:
            running.stop()


def _exits_zero(argv: list[str], env: dict[str, str]) -> Callable[[], bool]:
    def check() -> bool:
        return subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode == 0

    return check


def _replace_words(argv: list[str], replacements: dict[str, str]) -> list[str]:
    return [replacements.get(word, word) for word in argv]


@pytest.mark.parametrize("forward_proxy", [False, True], ids=["default", "forward-proxy"])
def test_demo_profile_serves_a_request_through_envoy(processes: Processes, forward_proxy: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """forward-proxy: deploy/compose/config.yaml's forward_proxy section turned on, and docker-compose.yml's commented
    `my-app` example's settings sending the SDK's default https://api.openai.com through Envoy."""
    bash = require_tool("bash", "bash")
    variables = read_env_file(ENV_EXAMPLE)  # `cp .env.example .env`, nothing filled in
    services = compose_resolved(variables)["services"]
    dockerfile = parse_dockerfile()
    entrypoint = dockerfile.exec_form("ENTRYPOINT")
    binaries = {"python": sys.executable, "/usr/local/bin/envoy": venv_bin("envoy"), "bash": bash}
    base_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "LANG": "C.UTF-8"}

    # Compose's network: service name -> {container port: the port its stand-in listens on}.
    envoy_ports = {int(p.rpartition(":")[2]): free_port() for p in services["envoy"]["ports"]}
    emulator_port = int(flag_value(services["emulator"]["command"], "--port"))
    scrape, (target,) = scrape_targets(prometheus_config())
    target_host, _, target_port = target.rpartition(":")
    network = {"envoy": {**envoy_ports, ADMIN_PORT: free_port()}, "emulator": {emulator_port: free_port()},
               target_host: {int(target_port): free_port()}}

    def resolve(url: str) -> str:
        parts = urlsplit(url)
        if parts.hostname in network:
            port = network[parts.hostname][parts.port or 80]
            return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))
        return url

    with tempfile.TemporaryDirectory(prefix="aoai-") as tmp:  # short: Unix socket paths
        root = Path(tmp)
        flavour = compose_flavour(variables)
        if forward_proxy:
            flavour = with_forward_proxy(flavour, "compose+forward-proxy")
        assert flavour.extproc_argv == services["extproc"]["command"]
        config = flavour.container_settings()
        assert config.envoy.admin_port == ADMIN_PORT
        assert {config.listen.http_port, config.listen.https_port} == set(envoy_ports)
        assert target_host == "extproc" and config.metrics.enabled and config.metrics.port == int(target_port)
        layout = materialize(flavour, root, overrides={
            "listen": {"address": "127.0.0.1", "http_port": network["envoy"][config.listen.http_port],
                       "https_port": network["envoy"][config.listen.https_port]},
            "envoy": {"admin_port": network["envoy"][ADMIN_PORT]},
            "metrics": {"address": "127.0.0.1", "port": network["extproc"][config.metrics.port]},
        })
        image_env = {key: remap(value, layout.paths) for key, value in dockerfile.env().items() if key != "PATH"}

        # The emulator (profile demo): its compose command, on loopback.
        emulator = services["emulator"]
        assert emulator["profiles"] == ["demo"]
        emulator_argv = _replace_words(entrypoint + emulator["command"], binaries)
        emulator_argv[emulator_argv.index("--host") + 1] = "127.0.0.1"
        emulator_argv[emulator_argv.index("--port") + 1] = str(network["emulator"][emulator_port])
        emulator_env = {**base_env, **image_env, **service_environment(emulator)}
        processes.start("emulator", emulator_argv, emulator_env, root)
        emulator_health = [word.replace(str(emulator_port), str(network["emulator"][emulator_port]))
                           for word in _replace_words(healthcheck_argv(emulator), binaries)]
        processes.wait_for("the emulator's healthcheck", _exits_zero(emulator_health, emulator_env))

        # The ext_proc: image entrypoint + compose command, image ENV + compose environment.
        extproc_env = {**base_env, **{k: resolve(v) for k, v in layout.env.items()}}
        assert extproc_env["AZURE_OPENAI_ENDPOINT"] == f"http://127.0.0.1:{network['emulator'][emulator_port]}"
        extproc_argv = _replace_words(entrypoint + [remap(a, layout.paths) for a in flavour.extproc_argv], binaries)
        processes.start("extproc", extproc_argv, extproc_env, root)
        extproc_health = _replace_words(healthcheck_argv(services["extproc"]), binaries)
        processes.wait_for("the ext_proc's healthcheck (depends_on: service_healthy)",
                           _exits_zero(extproc_health, extproc_env))

        # Envoy: the compose entrypoint + command, reading the rendered config from the shared volume.
        envoy = services["envoy"]
        rendered = layout.host(flavour.rendered_path)
        assert rendered.is_file()
        envoy_argv = _replace_words(envoy["entrypoint"] + [remap(a, layout.paths) for a in envoy["command"]], binaries)
        assert flag_value(envoy_argv, "-c") == str(rendered)
        processes.start("envoy", envoy_argv, {**base_env, **service_environment(envoy)}, root)
        envoy_health = [word.replace(f"/{ADMIN_PORT}", f"/{network['envoy'][ADMIN_PORT]}")
                        for word in _replace_words(healthcheck_argv(envoy), binaries)]
        processes.wait_for("Envoy's healthcheck (/ready)", _exits_zero(envoy_health, base_env))

        # The example app's settings, unchanged, with the openai SDK.
        app = service_environment(services["open-webui"])
        client = OpenAI(base_url=resolve(app["OPENAI_API_BASE_URL"]), api_key=app["OPENAI_API_KEY"], max_retries=0)
        model_ids = {model.id for model in client.models.list()}
        assert {"gpt-4o", "gpt-4o-mini"} <= model_ids, "the demo's model map, listed for the app"
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello from docker-compose.yml"}]
        )
        assert completion.choices[0].message.content

        journal_url = f"http://127.0.0.1:{network['emulator'][emulator_port]}/_emulator/requests"
        with urllib.request.urlopen(journal_url, timeout=5) as response:  # noqa: S310 - loopback
            journal = json.loads(response.read())
        chats = [r for r in journal if r["path"] == "/openai/deployments/gpt-4o-mini/chat/completions"]
        assert len(chats) == 1, [r["path"] for r in journal]
        assert chats[0]["headers"]["api-key"] == app["OPENAI_API_KEY"], "the app's key, forwarded as api-key"
        assert "authorization" not in chats[0]["headers"]
        assert chats[0]["json"]["messages"][0]["content"] == "Hello from docker-compose.yml"

        # Prometheus's scrape (observability profile): the request is counted, for its model, with a 2xx.
        metrics_url = resolve(f"{scrape.get('scheme', 'http')}://{target}{scrape.get('metrics_path', '/metrics')}")
        counted = re.compile(r'^aoai_gateway_requests_total\{[^}]*gen_ai_request_model="gpt-4o-mini"[^}]*'
                             r'status_class="2xx"[^}]*\} ([0-9.e+]+)$', re.M)

        def scraped() -> bool:
            try:
                reply = httpx.get(metrics_url, timeout=5)
            except httpx.HTTPError:
                return False
            found = counted.search(reply.text) if reply.status_code == 200 else None
            return found is not None and float(found.group(1)) >= 1

        processes.wait_for(f"the chat completion counted on {metrics_url}", scraped)

        # HTTPS on the published 8443 with the development CA the ext_proc made in the shared volume.
        ca = layout.host(str(config.state_path / "tls" / "ca.crt"))
        https = network["envoy"][config.listen.https_port]
        reply = httpx.get(f"https://localhost:{https}/v1/models", verify=ssl.create_default_context(cafile=ca), timeout=10)
        assert reply.status_code == 200 and reply.json()["object"] == "list"
        assert oct(os.stat(layout.host(str(config.state_path / "tls" / "server.key"))).st_mode & 0o777) == "0o600"

        if not forward_proxy:
            return
        # docker-compose.yml's `my-app`: the bundle copied out of the volume `run` (`docker compose cp`), its
        # environment with `envoy` resolved to Envoy's stand-in; the SDK keeps its default base URL.
        my_app = interpolate_tree(yaml.safe_load(uncomment_section(COMPOSE_FILE.read_text(), "my-app", indent="  ")),
                                  variables)["services"]["my-app"]
        app = service_environment(my_app)
        ((source, copied),) = re.findall(r"docker compose cp extproc:(\S+) (\S+)", COMPOSE_FILE.read_text())
        bundle = root / copied
        bundle.write_bytes(layout.host(source).read_bytes())
        for name in ("OPENAI_BASE_URL", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy",
                     "https_proxy", "REQUESTS_CA_BUNDLE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", resolve(app["HTTPS_PROXY"]))
        monkeypatch.setenv("NO_PROXY", app["NO_PROXY"])
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        with OpenAI(api_key=app["OPENAI_API_KEY"], max_retries=0) as proxied:
            assert str(proxied.base_url).startswith("https://api.openai.com/")
            completion = proxied.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello through the tunnel"}])
        assert completion.choices[0].message.content == "Echo: Hello through the tunnel"
        with urllib.request.urlopen(journal_url, timeout=5) as response:  # noqa: S310 - loopback
            journal = json.loads(response.read())
        assert journal[-1]["path"] == "/openai/deployments/gpt-4o-mini/chat/completions"
        assert journal[-1]["json"]["messages"][0]["content"] == "Hello through the tunnel"

