"""docker-compose.yml against the Compose Specification's JSON schema, and what it promises."""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from importlib.resources import files
from typing import Any

import jsonschema
import pytest
import yaml

from .flavours import compose_flavour, uncomment_section, with_forward_proxy
from .helpers import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO,
    compose_raw,
    compose_resolved,
    healthcheck_argv,
    interpolate,
    interpolate_tree,
    read_env_file,
    service_environment,
    service_mounts,
    variables_used,
)
from .observability import (
    COMPOSE_CONFIG,
    OBSERVABILITY_PROFILE,
    OBSERVABILITY_SERVICES,
    metrics_section,
)

SHARED_DIR = "/run/aoai-gateway"


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    # The compose-spec schema vendored by check-jsonschema (`--builtin-schema vendor.compose-spec`).
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _errors(document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(document)]


@pytest.mark.parametrize("variables", ["env.example", "no .env", "azure"])
def test_compose_file_matches_the_compose_specification(variables: str) -> None:
    env = {
        "env.example": read_env_file(ENV_EXAMPLE),
        "no .env": {},
        "azure": {"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AZURE_OPENAI_API_KEY": "k",
                  "AOAI_GATEWAY_BIND": "0.0.0.0"},
    }[variables]
    assert _errors(compose_raw()) == []
    assert _errors(compose_resolved(env)) == []


def test_the_schema_is_strict_enough_to_catch_mistakes() -> None:
    """The vendored schema really checks the parts this file relies on."""
    document = compose_raw()
    # (service, path to the key, a wrong value): each alone must be an error.
    mistakes = [
        ("envoy", ["depends_on", "extproc", "condition"], "service_up"),
        ("emulator", ["profiles"], "demo"),
        ("extproc", ["healthcheck", "retry"], 3),
        ("envoy", ["readonly"], True),
        ("grafana", ["depends_on", "prometheus", "condition"], "started"),
        ("prometheus", ["security_opt"], "no-new-privileges:true"),
    ]
    for service, keys, value in mistakes:
        broken = copy.deepcopy(document)
        target = broken["services"][service]
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        assert _errors(broken), (service, keys, value)


def test_every_variable_is_documented_in_env_example() -> None:
    documented = set(read_env_file(ENV_EXAMPLE))
    assert variables_used(compose_raw()) <= documented
    # .env.example as shipped holds no secret: every value is empty.
    assert all(value == "" for value in read_env_file(ENV_EXAMPLE).values())


def test_demo_profile_needs_no_azure_account() -> None:
    """With no .env (or .env.example copied unchanged) the ext_proc calls the demo's emulator."""
    for env in ({}, read_env_file(ENV_EXAMPLE)):
        model = compose_resolved(env)
        services = model["services"]
        endpoint = service_environment(services["extproc"])["AZURE_OPENAI_ENDPOINT"]
        emulator = services["emulator"]
        port = emulator["command"][emulator["command"].index("--port") + 1]
        assert endpoint == f"http://emulator:{port}"
        assert emulator["profiles"] == ["demo"]
        assert "demo" in services["open-webui"]["profiles"]
        # The emulator accepts the key the example app sends (the ext_proc forwards it: no server key).
        assert service_environment(services["extproc"])["AZURE_OPENAI_API_KEY"] == ""
        api_key = emulator["command"][emulator["command"].index("--api-key") + 1]
        assert service_environment(services["open-webui"])["OPENAI_API_KEY"] == api_key
        # Every service a default profile starts runs without the demo.
        assert "profiles" not in services["extproc"] and "profiles" not in services["envoy"]


def test_azure_settings_come_from_env() -> None:
    env = {"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AZURE_OPENAI_API_KEY": "secret",
           "AZURE_OPENAI_MODEL_MAPPER": "gpt-4o=prod"}
    environment = service_environment(compose_resolved(env)["services"]["extproc"])
    assert environment["AZURE_OPENAI_ENDPOINT"] == "https://r.openai.azure.com"
    assert environment["AZURE_OPENAI_API_KEY"] == "secret"
    assert environment["AZURE_OPENAI_MODEL_MAPPER"] == "gpt-4o=prod"
    assert "secret" not in json.dumps(compose_raw())


def test_envoy_waits_for_a_healthy_extproc_and_shares_its_volume() -> None:
    services = compose_resolved()["services"]
    envoy, extproc = services["envoy"], services["extproc"]
    assert envoy["depends_on"]["extproc"]["condition"] == "service_healthy"
    assert services["open-webui"]["depends_on"]["envoy"]["condition"] == "service_healthy"
    assert healthcheck_argv(extproc) == ["python", "-m", "extproc", "health"]
    assert "/ready" in " ".join(healthcheck_argv(envoy))
    for service in ("extproc", "envoy", "emulator"):
        assert "healthcheck" in services[service], service
    extproc_run = next(m for m in service_mounts(extproc) if m.target == SHARED_DIR)
    envoy_run = next(m for m in service_mounts(envoy) if m.target == SHARED_DIR)
    assert extproc_run.named and extproc_run.source == envoy_run.source
    assert not extproc_run.read_only and envoy_run.read_only
    assert extproc_run.source in compose_raw()["volumes"]


@pytest.mark.parametrize("name", ["extproc", "envoy", "emulator"])
def test_gateway_containers_are_hardened(name: str) -> None:
    service = compose_resolved()["services"][name]
    assert service["user"] == "10001:10001"
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert "privileged" not in service and "cap_add" not in service


def test_ports_are_published_on_localhost_by_default() -> None:
    for env in ({}, read_env_file(ENV_EXAMPLE)):
        services = compose_resolved(env)["services"]
        published = [p for s in services.values() for p in s.get("ports") or []]
        assert published and all(p.startswith("127.0.0.1:") for p in published), published
        assert not any("9901" in p for p in published), "the Envoy admin stays inside the container"


def test_images_are_pinned() -> None:
    for name, service in compose_resolved()["services"].items():
        image = service["image"]
        assert ":" in image.rpartition("/")[2] and not image.endswith(":latest"), f"{name}: {image}"


def test_example_app_points_at_envoy() -> None:
    services = compose_resolved()["services"]
    base_url = service_environment(services["open-webui"])["OPENAI_API_BASE_URL"]
    http_port = next(p for p in services["envoy"]["ports"] if p.endswith(":8080")).rpartition(":")[2]
    assert base_url == f"http://envoy:{http_port}/v1"


def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${UNSET:-d} ${EMPTY-d} ${UNSET-d} $$SET $SET", env) == "x d d  d $SET x"
    assert interpolate("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}", env) == "alt||alt"


# --- the observability profile -----------------------------------------------------------------


def _active(services: dict[str, Any], profile: str | None) -> set[str]:
    """The services `docker compose [--profile PROFILE] up` starts."""
    return {name for name, service in services.items()
            if not service.get("profiles") or (profile is not None and profile in service["profiles"])}


def test_observability_services_are_only_in_their_profile() -> None:
    services = compose_resolved()["services"]
    in_profile = {name for name, s in services.items() if OBSERVABILITY_PROFILE in (s.get("profiles") or [])}
    assert in_profile == OBSERVABILITY_SERVICES
    for name in OBSERVABILITY_SERVICES:
        assert services[name]["profiles"] == [OBSERVABILITY_PROFILE], name
    assert _active(services, None) == {"extproc", "envoy"}, "`docker compose up` starts the gateway only"
    assert _active(services, "demo") == {"extproc", "envoy", "emulator", "open-webui"}
    assert _active(services, "app") == {"extproc", "envoy", "open-webui"}
    assert _active(services, OBSERVABILITY_PROFILE) == {"extproc", "envoy"} | OBSERVABILITY_SERVICES


def test_every_profile_starts_what_its_services_depend_on() -> None:
    services = compose_resolved()["services"]
    profiles = {None} | {p for s in services.values() for p in s.get("profiles") or []}
    for profile in profiles:
        active = _active(services, profile)
        for name in active:
            assert set(services[name].get("depends_on") or {}) <= active, (profile, name)


def test_observability_ports_stay_on_localhost_whatever_the_bind() -> None:
    """AOAI_GATEWAY_BIND may publish the gateway beyond this machine; Prometheus and Grafana stay on it."""
    for env in ({}, {"AOAI_GATEWAY_BIND": "0.0.0.0"}):
        services = compose_resolved(env)["services"]
        for name in OBSERVABILITY_SERVICES:
            ports = services[name]["ports"]
            assert ports and all(p.startswith("127.0.0.1:") for p in ports), (name, ports)


def test_no_two_services_publish_the_same_host_port() -> None:
    """Profiles combine (`--profile demo --profile observability`): no port is claimed twice."""
    published: dict[str, str] = {}
    for name, service in compose_resolved()["services"].items():
        for port in service.get("ports") or []:
            host_port = port.split(":")[-2]
            assert host_port not in published, f"{name} and {published.get(host_port)} both publish {host_port}"
            published[host_port] = name


def test_the_metrics_port_is_never_published() -> None:
    """The ext_proc's /metrics is for the compose network (Prometheus) only."""
    port = str(metrics_section(COMPOSE_CONFIG.read_text())["port"])
    for env in ({}, read_env_file(ENV_EXAMPLE), {"AOAI_GATEWAY_BIND": "0.0.0.0"}):
        for name, service in compose_resolved(env)["services"].items():
            assert not any(p.split(":")[-2] == port or p.split(":")[-1] == port for p in service.get("ports") or []), name


@pytest.mark.parametrize("name", sorted(OBSERVABILITY_SERVICES))
def test_observability_containers_are_hardened(name: str) -> None:
    service = compose_resolved()["services"][name]
    uid = str(service["user"]).partition(":")[0]
    assert uid.isdigit() and uid != "0", "a numeric non-root user"
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert "privileged" not in service and "cap_add" not in service
    # Writable only where the image keeps its data: a named volume (or tmpfs); every file from here is read-only.
    for mount in service_mounts(service):
        assert mount.named or mount.read_only, (name, mount)
        if mount.named:
            assert mount.source in compose_raw()["volumes"], (name, mount)
    assert "healthcheck" in service


def test_every_bind_mount_source_exists() -> None:
    for name, service in compose_resolved()["services"].items():
        for mount in service_mounts(service):
            if not mount.named:
                assert (REPO / mount.source).exists(), f"{name}: {mount.source} does not exist"


# --- forward-proxy mode ------------------------------------------------------------------------

FORWARD_PROXY_APP = "my-app"


def test_forward_proxy_app_example() -> None:
    """docker-compose.yml's commented `my-app` (forward-proxy mode), uncommented as a reader would: valid compose; the
    app's proxy is Envoy's HTTP listener in the compose network, and it trusts the bundle the gateway made (with
    deploy/compose/config.yaml's forward_proxy turned on), copied out of the volume `run` by the documented
    `docker compose cp` and mounted read-only; it mounts no volume of the gateway's (sockets, the CA's key)."""
    text = COMPOSE_FILE.read_text()
    document = yaml.safe_load(uncomment_section(text, FORWARD_PROXY_APP, indent="  "))
    assert _errors(document) == []
    for env in ({}, read_env_file(ENV_EXAMPLE)):
        assert _errors(interpolate_tree(document, env)) == []
    assert variables_used(document) <= set(read_env_file(ENV_EXAMPLE))
    services = interpolate_tree(document, read_env_file(ENV_EXAMPLE))["services"]
    assert {name: s for name, s in services.items() if name != FORWARD_PROXY_APP} == compose_resolved()["services"]
    app = services[FORWARD_PROXY_APP]
    environment = service_environment(app)
    settings = with_forward_proxy(compose_flavour(), "compose+forward-proxy").container_settings()
    assert settings.forward_proxy.enabled
    assert environment["HTTPS_PROXY"] == f"http://envoy:{settings.listen.http_port}"
    assert environment["NO_PROXY"], "the app's other destinations must not go to the gateway (403)"
    assert app["depends_on"]["envoy"]["condition"] == "service_healthy"
    ((source, copied),) = re.findall(r"docker compose cp extproc:(\S+) (\S+)", text)
    assert source == str(settings.forward_proxy_dir / "bundle.pem")
    (mount,) = service_mounts(app)
    assert not mount.named and mount.read_only and mount.source == copied
    assert environment["SSL_CERT_FILE"] == environment["REQUESTS_CA_BUNDLE"] == mount.target
    assert "/" + copied.removeprefix("./") in (REPO / ".gitignore").read_text().splitlines()

