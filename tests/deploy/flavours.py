"""Each way to run the gateway that the project ships (compose, each Kubernetes pod, systemd), read
from its artifact into one shape: the ext_proc's command, environment and files, Envoy's command,
and which container paths the two share. `materialize` lays the container paths out in a temporary
directory, so the project's own renderer and the real Envoy can check them here."""

from __future__ import annotations

import re
import shlex
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from extproc.config import Settings, load_settings
from extproc.envoy_config.devtls import ensure_dev_certificates

from .helpers import (
    FORWARD_PROXY_CA_SCRIPT,
    FORWARD_PROXY_CA_SECRET,
    FORWARD_PROXY_COMPONENT,
    KUSTOMIZATIONS,
    REPO,
    SYSTEMD,
    TEMPLATE,
    compose_resolved,
    container,
    container_env,
    find,
    healthcheck_argv,
    kustomize,
    kustomize_with,
    mounts_of,
    parse_dockerfile,
    pod_specs,
    read_env_file,
    remap,
    remap_tree,
    require_tool,
    service_environment,
    service_mounts,
    volume_sources,
)


@dataclass
class Flavour:
    name: str
    extproc_argv: list[str]  # after `python -m extproc`
    env: dict[str, str]  # the ext_proc's environment (image ENV, then the artifact's)
    envoy_argv: list[str]  # after the envoy binary
    # container path -> volume id, for each of the two processes
    extproc_mounts: dict[str, str]
    envoy_mounts: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)  # container path -> content (config files)
    tls_files: list[tuple[str, str]] = field(default_factory=list)  # (cert, key) to provide
    extproc_probes: list[list[str]] = field(default_factory=list)
    envoy_probes: list[list[str]] = field(default_factory=list)
    read_only_envoy_mounts: set[str] = field(default_factory=set)
    # The operator's forward-proxy CA (Kubernetes: the Secret components/forward-proxy mounts): (cert, key) paths.
    forward_proxy_ca: tuple[str, str] | None = None

    @property
    def rendered_path(self) -> str:
        return self.extproc_argv[self.extproc_argv.index("--write-envoy-config") + 1]

    @property
    def envoy_config_path(self) -> str:
        return self.envoy_argv[self.envoy_argv.index("-c") + 1]

    def container_settings(self) -> Settings:
        """The settings as the ext_proc sees them in its container (container paths)."""
        env = dict(self.env)
        config_path = env.pop("AOAI_GATEWAY_CONFIG", None)
        text = self.files[config_path] if config_path else ""
        document = yaml.safe_load(text) or {}
        for i, entry in enumerate(document.get("clients", {}).get("keys", [])):
            if "key_file" in entry:  # the operator's Secret, not in the container here: a digest stands in
                entry.pop("key_file")
                entry["key_sha256"] = f"{i:064x}"
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(yaml.safe_dump(document))
            return load_settings(config, env=env)


def image_env() -> tuple[dict[str, str], dict[str, Path]]:
    """The Dockerfile's ENV (but PATH), and where its COPY of the template comes from."""
    dockerfile = parse_dockerfile()
    env = {k: v for k, v in dockerfile.env().items() if k != "PATH"}
    copies = {destination: REPO / source for source, destination in dockerfile.copies().items()}
    return env, copies


def compose_flavour(variables: dict[str, str] | None = None, name: str = "compose") -> Flavour:
    services = compose_resolved(variables)["services"]
    extproc, envoy = services["extproc"], services["envoy"]
    env, _ = image_env()
    env.update(service_environment(extproc))
    files = {}
    extproc_mounts, envoy_mounts = {}, {}
    for mount in service_mounts(extproc):
        if mount.named:
            extproc_mounts[mount.target] = mount.source
        else:
            files[mount.target] = (REPO / mount.source).read_text()
    for mount in service_mounts(envoy):
        if mount.named:
            envoy_mounts[mount.target] = mount.source
    assert envoy["entrypoint"] == ["/usr/local/bin/envoy"]
    return Flavour(
        name=name,
        extproc_argv=list(extproc["command"]),
        env=env,
        envoy_argv=list(envoy["command"]),
        extproc_mounts=extproc_mounts,
        envoy_mounts=envoy_mounts,
        files=files,
        extproc_probes=[healthcheck_argv(extproc)],
        envoy_probes=[healthcheck_argv(envoy)],
        read_only_envoy_mounts={m.target for m in service_mounts(envoy) if m.read_only},
    )


def _probe_commands(pod_container: dict[str, Any]) -> list[list[str]]:
    return [pod_container[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe", "livenessProbe")
            if p in pod_container and "exec" in pod_container[p]]


def _pod_flavours(docs: list[dict[str, Any]], label: str) -> list[Flavour]:
    flavours = []
    for owner, pod in pod_specs(docs):
        extproc = container(pod, "extproc")
        envoy = container(pod, "envoy")
        if extproc is None:
            continue
        assert envoy is not None
        env, _ = image_env()
        env.update(container_env(docs, extproc))
        volumes = volume_sources(pod)
        files: dict[str, str] = {}
        tls_files: list[tuple[str, str]] = []
        forward_proxy_ca = None
        for path, mount in mounts_of(extproc).items():
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                config_map = find(docs, "ConfigMap", volume["configMap"]["name"])
                assert config_map is not None
                for key, content in config_map["data"].items():
                    files[f"{path}/{key}"] = content
            if "secret" in volume and "client-keys" in volume["secret"]["secretName"]:
                continue  # its files are the config's clients.keys[].key_file (materialize writes them)
            if "secret" in volume and volume["secret"]["secretName"] == FORWARD_PROXY_CA_SECRET:
                forward_proxy_ca = (f"{path}/tls.crt", f"{path}/tls.key")  # a CA, made by materialize
            elif "secret" in volume:
                tls_files.append((f"{path}/tls.crt", f"{path}/tls.key"))
        assert envoy["command"] == ["/usr/local/bin/envoy"]
        flavours.append(Flavour(
            name=f"kubernetes:{label}:{owner['metadata']['name']}",
            extproc_argv=list(extproc["args"]),
            env=env,
            envoy_argv=list(envoy["args"]),
            extproc_mounts={p: m["name"] for p, m in mounts_of(extproc).items()},
            envoy_mounts={p: m["name"] for p, m in mounts_of(envoy).items()},
            files=files,
            tls_files=tls_files,
            extproc_probes=_probe_commands(extproc),
            envoy_probes=_probe_commands(envoy),
            read_only_envoy_mounts={p for p, m in mounts_of(envoy).items() if m.get("readOnly")},
            forward_proxy_ca=forward_proxy_ca,
        ))
    return flavours


def kubernetes_flavours() -> list[Flavour]:
    if shutil.which("kubectl") is None:  # test_kubernetes.py fails for it
        return []
    return [flavour for kustomization in KUSTOMIZATIONS for flavour in _pod_flavours(kustomize(kustomization), kustomization)]


def parse_unit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    entries = []
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path, key: str) -> list[str]:
    return [value for _, k, value in parse_unit(path) if k == key]


def unit_environment(path: Path) -> dict[str, str]:
    env = {}
    for value in unit_values(path, "Environment"):
        for assignment in shlex.split(value):
            name, _, setting = assignment.partition("=")
            env[name] = setting
    return env


def _expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """systemd's ${VAR} in ExecStart (whole words only here)."""
    out = []
    for word in argv:
        if word.startswith("${") and word.endswith("}"):
            out.append(env[word[2:-1]])
        else:
            out.append(word.replace("$$", "$"))
    return out


SYSTEMD_EXTPROC = SYSTEMD / "aoai-gateway-extproc.service"
SYSTEMD_ENVOY = SYSTEMD / "aoai-gateway-envoy.service"
SYSTEMD_ENV_EXAMPLE = SYSTEMD / "aoai-gateway.env.example"
SYSTEMD_CONFIG = SYSTEMD / "config.yaml"
VENV = "/opt/aoai-gateway/venv/bin/"


def systemd_flavour() -> Flavour:
    env = unit_environment(SYSTEMD_EXTPROC)
    (env_file,) = unit_values(SYSTEMD_EXTPROC, "EnvironmentFile")
    env.update({k: v for k, v in read_env_file(SYSTEMD_ENV_EXAMPLE).items()})
    env["AZURE_OPENAI_API_KEY"] = env.get("AZURE_OPENAI_API_KEY") or "sample-key"
    (extproc_start,) = unit_values(SYSTEMD_EXTPROC, "ExecStart")
    extproc_argv = shlex.split(extproc_start)
    assert extproc_argv[:3] == [VENV + "python", "-m", "extproc"], extproc_argv
    (envoy_start,) = unit_values(SYSTEMD_ENVOY, "ExecStart")
    envoy_argv = _expand(shlex.split(envoy_start), unit_environment(SYSTEMD_ENVOY))
    assert envoy_argv[0] == VENV + "envoy", envoy_argv
    (runtime,) = unit_values(SYSTEMD_EXTPROC, "RuntimeDirectory")
    (state,) = unit_values(SYSTEMD_EXTPROC, "StateDirectory")
    shared = {f"/run/{runtime}": "runtime", f"/var/lib/{state}": "state"}
    post = [shlex.split(v) for v in unit_values(SYSTEMD_EXTPROC, "ExecStartPost")]
    return Flavour(
        name="systemd",
        extproc_argv=extproc_argv[3:],
        env=env,
        envoy_argv=envoy_argv[1:],
        extproc_mounts=shared,
        envoy_mounts=dict(shared),
        files={env["AOAI_GATEWAY_CONFIG"]: SYSTEMD_CONFIG.read_text(), env_file: SYSTEMD_ENV_EXAMPLE.read_text()},
        extproc_probes=post,
    )


def all_flavours() -> list[Flavour]:
    return [compose_flavour(), compose_flavour({}, "compose (no .env)"), *kubernetes_flavours(), systemd_flavour()]


# --- forward-proxy mode: each artifact's commented `forward_proxy:` section turned on --------------------------

FORWARD_PROXY = "forward_proxy"
FORWARD_PROXY_SUFFIX = "+forward-proxy"


def uncomment_section(text: str, section: str, indent: str = "") -> str:
    """The YAML with its commented-out example of `section` (`# section:` and its `#   key: value` lines, as
    observability.commented_section reads them; each after `indent`) turned on, the rest unchanged."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith(indent) and re.match(rf"#\s?{re.escape(section)}:(\s|$)", line[len(indent):]):
            end = index + 1
            while end < len(lines) and lines[end].startswith(indent) and re.match(r"#\s{2,}\S", lines[end][len(indent):]):
                end += 1
            # As a reader uncomments: "# " off each line.
            block = [indent + re.sub(r"^# ?", "", commented[len(indent):]) for commented in lines[index:end]]
            return "\n".join(lines[:index] + block + lines[end:]) + "\n"
    raise AssertionError(f"no commented-out {section}: section to turn on")


def with_forward_proxy(flavour: Flavour, name: str) -> Flavour:
    """The flavour with its config file's commented forward_proxy section turned on, as its comments tell."""
    config_path = flavour.env["AOAI_GATEWAY_CONFIG"]
    files = {**flavour.files, config_path: uncomment_section(flavour.files[config_path], FORWARD_PROXY)}
    return replace(flavour, name=name, files=files)


def forward_proxy_flavours() -> list[Flavour]:
    """compose and systemd with the CA the gateway makes in its state dir; the Kubernetes shared gateway (base and
    production) with components/forward-proxy, its CA from the operator's Secret."""
    flavours = [with_forward_proxy(compose_flavour(), "compose" + FORWARD_PROXY_SUFFIX)]
    if shutil.which("kubectl") is not None:  # test_kubernetes.py fails for it
        for base in ("base/gateway", "overlays/production"):
            docs = kustomize_with([base], [FORWARD_PROXY_COMPONENT])
            (gateway,) = [f for f in _pod_flavours(docs, f"{base}+{FORWARD_PROXY_COMPONENT}") if f.name.endswith(":aoai-gateway")]
            flavours.append(with_forward_proxy(gateway, gateway.name))
    flavours.append(with_forward_proxy(systemd_flavour(), "systemd" + FORWARD_PROXY_SUFFIX))
    return flavours


def make_forward_proxy_ca(directory: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """deploy/forward-proxy-ca's CA for `hosts`: (ca.crt, ca.key, bundle.pem)."""
    require_tool("openssl", "the Debian package openssl")
    result = subprocess.run([str(FORWARD_PROXY_CA_SCRIPT), "-o", str(directory), *hosts],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return directory / "ca.crt", directory / "ca.key", directory / "bundle.pem"


@dataclass
class Materialized:
    paths: dict[str, Path]  # container path prefix -> host path
    env: dict[str, str]

    def host(self, container_path: str) -> Path:
        return Path(remap(container_path, self.paths))


def materialize(flavour: Flavour, root: Path, overrides: dict[str, Any] | None = None) -> Materialized:
    """Lay out the flavour's volumes and files under `root`; the returned env and paths are the host's.
    `overrides` are merged into the ext_proc's config file (ports for tests)."""
    paths: dict[str, Path] = {}
    for container_path, volume in {**flavour.extproc_mounts, **flavour.envoy_mounts}.items():
        host = root / "volumes" / volume.replace("/", "_")
        host.mkdir(parents=True, exist_ok=True)
        paths[container_path] = host
    _, copies = image_env()
    paths.update({destination: source for destination, source in copies.items()})
    for container_path in flavour.files:
        if remap(container_path, paths) == container_path:
            paths[container_path] = root / "files" / container_path.strip("/").replace("/", "_")
    for cert, key in [*flavour.tls_files, *([flavour.forward_proxy_ca] if flavour.forward_proxy_ca else [])]:
        for container_path in (cert, key):
            if remap(container_path, paths) == container_path:
                paths[container_path] = root / "files" / container_path.strip("/").replace("/", "_")
    env = {key: remap(value, paths) for key, value in flavour.env.items()}
    config_path = flavour.env.get("AOAI_GATEWAY_CONFIG")
    for container_path, content in flavour.files.items():
        host = Path(remap(container_path, paths))
        host.parent.mkdir(parents=True, exist_ok=True)
        if container_path == config_path:
            config = remap_tree(yaml.safe_load(content) or {}, paths)
            for section, values in (overrides or {}).items():
                if isinstance(values, dict):
                    config[section] = {**(config.get(section) or {}), **values}
                else:
                    config[section] = values
            content = yaml.safe_dump(config)
        host.write_text(content)
    # Client keys read from files (a Secret's): a key each, as the operator's Secret would hold.
    if config_path is not None and config_path in flavour.files:
        for entry in (yaml.safe_load(flavour.files[config_path]) or {}).get("clients", {}).get("keys", []):
            if "key_file" in entry:
                host = Path(remap(entry["key_file"], paths))
                host.parent.mkdir(parents=True, exist_ok=True)
                host.write_text("sk-aoai-" + secrets.token_hex(16) + "\n")
    for cert, key in flavour.tls_files:
        dev = ensure_dev_certificates(root / "tls-source")
        Path(remap(cert, paths)).write_bytes(dev.server_cert.read_bytes())
        Path(remap(key, paths)).write_bytes(dev.server_key.read_bytes())
    if flavour.forward_proxy_ca is not None:  # the operator's Secret, made as the component's comments say
        hosts = flavour.container_settings().forward_proxy.hosts
        ca_cert, ca_key, _ = make_forward_proxy_ca(root / "forward-proxy-ca", hosts)
        cert, key = flavour.forward_proxy_ca
        Path(remap(cert, paths)).write_bytes(ca_cert.read_bytes())
        Path(remap(key, paths)).write_bytes(ca_key.read_bytes())
    assert TEMPLATE.is_file()
    return Materialized(paths, env)
