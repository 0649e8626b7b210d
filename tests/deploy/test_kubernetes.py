"""deploy/kubernetes: every kustomization renders (kubectl's built-in kustomize), every object is
valid for the Kubernetes API (kubernetes-validate's schemas, strict), and the pods keep the promises
of the README: native sidecars in order, probes, resources, a restrictive securityContext."""

from __future__ import annotations

import base64
import copy
import re

import kubernetes_validate
import pytest
import yaml

from .flavours import kubernetes_flavours
from .helpers import (
    EXTERNAL_SECRETS,
    FORWARD_PROXY_CA_SECRET,
    FORWARD_PROXY_COMPONENT,
    KUBERNETES,
    KUBERNETES_VERSIONS,
    KUSTOMIZATIONS,
    all_containers,
    container,
    find,
    image_name,
    kustomize,
    kustomize_with,
    pod_specs,
    volume_sources,
)
from .observability import METRICS_PATH, SCRAPER_LABEL, commented_section, metrics_section, prometheus_config

ENVOY_IMAGE = "envoyproxy/envoy"
UID = 10001


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_is_valid(name: str, version: str) -> None:
    docs = kustomize(name)
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} is invalid for {version}: {exc.message}")


def test_validation_catches_mistakes() -> None:
    """The schemas really check the fields the manifests rely on."""
    deployment = find(kustomize("base/sidecar"), "Deployment", "chat-app")
    assert deployment is not None
    for mutate in (
        lambda pod: pod["initContainers"][0].update(restartPolicy=1),
        lambda pod: pod["initContainers"][0]["securityContext"].update(readOnlyRootFs=True),
        lambda pod: pod["containers"][0].update(livenessprobe={}),
    ):
        broken = copy.deepcopy(deployment)
        mutate(broken["spec"]["template"]["spec"])
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_pods_are_restricted(name: str) -> None:
    for owner, pod in pod_specs(kustomize(name)):
        where = f"{name}: {owner['metadata']['name']}"
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, where
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is False, where
        for c in all_containers(pod):
            context = c["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert context["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert context["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert not context.get("privileged"), (where, c["name"])
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], (where, c["name"])
            assert ":" in c["image"].rpartition("/")[2] and not c["image"].endswith(":latest"), c["image"]
            if c["name"] in ("extproc", "envoy", "emulator"):
                assert "readinessProbe" in c and "livenessProbe" in c, (where, c["name"])
        assert not any(v.get("hostPath") for v in volume_sources(pod).values()), where


def _gateway_pods(name: str):  # type: ignore[no-untyped-def]
    for owner, pod in pod_specs(kustomize(name)):
        if container(pod, "extproc") is not None:
            yield owner, pod


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_extproc_is_a_native_sidecar_started_before_envoy(name: str) -> None:
    pods = list(_gateway_pods(name))
    assert pods
    for owner, pod in pods:
        init = pod["initContainers"]
        assert init[0]["name"] == "extproc" and init[0]["restartPolicy"] == "Always"
        # The startupProbe is what holds the next container back until the ext_proc is healthy.
        assert init[0]["startupProbe"]["exec"]["command"] == ["python", "-m", "extproc", "health"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert init[0][probe]["exec"]["command"] == ["python", "-m", "extproc", "health"]
        envoy = container(pod, "envoy")
        assert envoy is not None and image_name(envoy["image"]) == ENVOY_IMAGE
        if owner["metadata"]["name"] == "chat-app":  # the sidecar pattern: envoy is a sidecar too
            assert init[1]["name"] == "envoy" and init[1]["restartPolicy"] == "Always"
            assert "startupProbe" in init[1], "the app starts once Envoy is ready"
        for c in (init[0], envoy):
            assert c["securityContext"].get("runAsUser", pod["securityContext"]["runAsUser"]) == UID


def test_apps_point_at_the_gateway() -> None:
    """The sidecar app at Envoy's loopback listener; the demo's client at the gateway Service."""
    sidecar = next(f for f in kubernetes_flavours() if f.name == "kubernetes:base/sidecar:chat-app")
    listen = sidecar.container_settings().listen
    assert listen.address == "127.0.0.1" and listen.https_port is None, "the sidecar serves its own pod only"
    docs = kustomize("overlays/demo")
    expected = {
        "chat-app": f"http://127.0.0.1:{listen.http_port}/v1",
        "gateway-client": "http://aoai-gateway:{}/v1".format(
            next(p["port"] for p in find(docs, "Service", "aoai-gateway")["spec"]["ports"] if p["name"] == "http")),
    }
    for owner, pod in pod_specs(docs):
        name = owner["metadata"]["name"]
        if name in expected:
            app = container(pod, "app")
            assert app is not None
            env = {e["name"]: e.get("value") for e in app["env"]}
            assert env["OPENAI_BASE_URL"] == expected.pop(name)
            if name == "gateway-client":  # let through the gateway's NetworkPolicy
                assert owner["spec"]["template"]["metadata"]["labels"]["aoai-gateway/client"] == "true"
    assert not expected
    gateway = next(f for f in kubernetes_flavours() if f.name == "kubernetes:overlays/demo:aoai-gateway")
    envoy = container(find(docs, "Deployment", "aoai-gateway")["spec"]["template"]["spec"], "envoy")
    assert {p["name"]: p["containerPort"] for p in envoy["ports"]}["http"] == gateway.container_settings().listen.http_port


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_references_resolve(name: str) -> None:
    """ConfigMaps and Secrets a pod uses are in the output, or are the documented ones a reader creates."""
    docs = kustomize(name)
    for owner, pod in pod_specs(docs):
        for volume in volume_sources(pod).values():
            if "configMap" in volume:
                assert find(docs, "ConfigMap", volume["configMap"]["name"]), volume
            if "secret" in volume:
                secret = volume["secret"]["secretName"]
                assert find(docs, "Secret", secret) or secret in EXTERNAL_SECRETS, secret
        for c in all_containers(pod):
            names = [s["secretRef"]["name"] for s in c.get("envFrom") or [] if "secretRef" in s]
            names += [e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env") or []
                      if "secretKeyRef" in e.get("valueFrom", {})]
            for secret in names:
                doc = find(docs, "Secret", secret)
                if doc is None:
                    assert secret in EXTERNAL_SECRETS, f"{name}: Secret {secret} is neither generated nor documented"
                else:
                    assert EXTERNAL_SECRETS["aoai-gateway-azure"] <= set(doc["data"]), secret


def test_the_demo_runs_without_azure() -> None:
    docs = kustomize("overlays/demo")
    secrets = [d for d in docs if d["kind"] == "Secret"]
    assert len(secrets) == 1
    emulator = find(docs, "Service", "aoai-emulator")
    assert emulator is not None
    endpoint = base64.b64decode(secrets[0]["data"]["AZURE_OPENAI_ENDPOINT"]).decode()
    assert endpoint == f"http://aoai-emulator:{emulator['spec']['ports'][0]['port']}"
    namespace = find(docs, "Namespace", "aoai-gateway-demo")
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"aoai-gateway-demo"}


def test_gateway_service_and_policy_select_the_gateway_pods() -> None:
    docs = kustomize("base/gateway")
    deployment = find(docs, "Deployment", "aoai-gateway")
    service = find(docs, "Service", "aoai-gateway")
    policy = find(docs, "NetworkPolicy", "aoai-gateway")
    assert deployment and service and policy
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    envoy = container(deployment["spec"]["template"]["spec"], "envoy")
    assert envoy is not None
    named_ports = {p["name"] for p in envoy["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= named_ports


# --- metrics -----------------------------------------------------------------------------------

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
SCRAPE_ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")
MONITORING_COMPONENT = "components/monitoring"


def _gateway_config(name: str, owner: dict) -> str:  # type: ignore[type-arg]
    """The config file the pod's ext_proc reads (its ConfigMap's content)."""
    flavour = next(f for f in kubernetes_flavours() if f.name == f"kubernetes:{name}:{owner['metadata']['name']}")
    return flavour.files[flavour.env["AOAI_GATEWAY_CONFIG"]]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_scraped_pods_announce_the_metrics_port(name: str) -> None:
    """A pod whose ext_proc serves /metrics beyond its loopback carries the prometheus.io annotations and
    a container port `metrics` naming exactly that port; a pod that keeps it on loopback announces nothing."""
    scraped = []
    for owner, pod in _gateway_pods(name):
        where = f"{name}: {owner['metadata']['name']}"
        metrics = metrics_section(_gateway_config(name, owner))
        annotations = owner["spec"]["template"]["metadata"].get("annotations") or {}
        extproc = container(pod, "extproc")
        assert extproc is not None
        ports = {p["name"]: p for p in extproc.get("ports") or []}
        if metrics["enabled"] and metrics["address"] not in LOOPBACK:
            scraped.append(owner["metadata"]["name"])
            assert annotations["prometheus.io/scrape"] == "true", where
            assert annotations["prometheus.io/port"] == str(metrics["port"]), where
            assert annotations["prometheus.io/path"] == METRICS_PATH, where
            assert ports["metrics"]["containerPort"] == metrics["port"], where
            assert ports["metrics"].get("protocol", "TCP") == "TCP", where
        else:
            assert not set(SCRAPE_ANNOTATIONS) & set(annotations), f"{where}: /metrics is on loopback"
            assert "metrics" not in ports, where
        # No other container of the pod claims the port.
        for other in all_containers(pod):
            if other is not extproc:
                assert metrics["port"] not in {p["containerPort"] for p in other.get("ports") or []}, where
    if name != "base/sidecar":
        assert "aoai-gateway" in scraped, f"{name}: the shared gateway is scraped"


@pytest.mark.parametrize("name", [k for k in KUSTOMIZATIONS if k != "base/sidecar"])
def test_network_policy_admits_only_scrapers_to_metrics(name: str) -> None:
    docs = kustomize(name)
    deployment = find(docs, "Deployment", "aoai-gateway")
    assert deployment is not None
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    metrics_port = int(deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"])
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"
                and d["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()]
    assert policies, f"{name}: no NetworkPolicy selects the gateway pods"
    admitted = False
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress") or []:
            # No rule opens every port or admits every source.
            assert rule.get("ports") and rule.get("from"), rule
            # Only the scrapers' rule names the metrics port (the clients' rules name Envoy's ports).
            ports = {p["port"] for p in rule["ports"]}
            if ports & {metrics_port, "metrics"}:
                admitted = True
                assert ports <= {metrics_port, "metrics"}, f"the scrapers' rule admits {ports} too"
                assert all(p.get("protocol", "TCP") == "TCP" for p in rule["ports"])
                for peer in rule["from"]:
                    assert "ipBlock" not in peer, peer
                    assert peer["podSelector"] == {"matchLabels": SCRAPER_LABEL}, peer
    assert admitted, f"{name}: Prometheus cannot reach port {metrics_port}"


@pytest.mark.parametrize("base", ["base/gateway", "overlays/production"])
def test_monitoring_component_scrapes_the_metrics_port(base: str) -> None:
    """components/monitoring (Prometheus Operator): its PodMonitor selects the gateway pods and names the
    ext_proc's port `metrics` and the annotations' path; it is in no kustomization by default (CRD needed)."""
    docs = kustomize_with([base], [MONITORING_COMPONENT], namespace="aoai-gateway")
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "aoai-gateway"
    deployment = find(docs, "Deployment", "aoai-gateway")
    assert deployment is not None
    template = deployment["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    extproc = container(template["spec"], "extproc")
    assert extproc is not None
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in extproc["ports"]}
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]
    assert endpoint["interval"] == prometheus_config()["global"]["scrape_interval"]
    # The rest is what the kustomization renders without the component.
    without = kustomize_with([base], [], namespace="aoai-gateway")
    assert [d for d in docs if d["kind"] != "PodMonitor"] == without
    for name in KUSTOMIZATIONS:
        assert not any(d["kind"] == "PodMonitor" for d in kustomize(name)), name


# --- forward-proxy mode ------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["base/gateway", "overlays/production"])
def test_forward_proxy_component_mounts_the_ca_into_the_extproc_only(base: str) -> None:
    """components/forward-proxy: the operator's CA Secret, read-only in the ext_proc and in no other container (Envoy
    gets the certificate each replica signs, never the CA's key); nothing else changes; valid for the API. The
    configs' commented forward_proxy sections name its files (test_envoy_configs.py renders them)."""
    docs = kustomize_with([base], [FORWARD_PROXY_COMPONENT], namespace="aoai-gateway")
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)
    without = kustomize_with([base], [], namespace="aoai-gateway")
    assert [d for d in docs if d["kind"] != "Deployment"] == [d for d in without if d["kind"] != "Deployment"]
    deployment = find(docs, "Deployment", "aoai-gateway")
    assert deployment is not None and deployment["spec"]["replicas"] >= 2, "the case the Secret is for"
    pod = deployment["spec"]["template"]["spec"]
    ((name, volume),) = [(n, v) for n, v in volume_sources(pod).items()
                         if v.get("secret", {}).get("secretName") == FORWARD_PROXY_CA_SECRET]
    assert FORWARD_PROXY_CA_SECRET in EXTERNAL_SECRETS
    mode = volume["secret"]["defaultMode"]
    assert mode & 0o222 == 0 and mode & 0o007 == 0 and mode & 0o040, oct(mode)  # read-only, the pod's group only
    mounts = {c["name"]: [m for m in c.get("volumeMounts") or [] if m["name"] == name] for c in all_containers(pod)}
    (mount,) = mounts.pop("extproc")
    assert mount["readOnly"] is True
    assert not any(mounts.values()), mounts
    # The rest of the Deployment is the one without the component.
    stripped = copy.deepcopy(deployment)
    stripped_pod = stripped["spec"]["template"]["spec"]
    stripped_pod["volumes"] = [v for v in stripped_pod["volumes"] if v["name"] != name]
    extproc = container(stripped_pod, "extproc")
    assert extproc is not None
    extproc["volumeMounts"] = [m for m in extproc["volumeMounts"] if m["name"] != name]
    assert stripped == find(without, "Deployment", "aoai-gateway")
    # Apps reach the proxy at the Service's http port, which the NetworkPolicy admits clients to.
    text = (KUBERNETES / FORWARD_PROXY_COMPONENT / "kustomization.yaml").read_text()
    service = find(docs, "Service", "aoai-gateway")
    assert service is not None
    (http,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "http"]
    assert f"HTTPS_PROXY, value: \"http://aoai-gateway.aoai-gateway.svc:{http}\"" in text
    assert f"HTTPS_PROXY, value: \"http://my-app:$(OPENAI_API_KEY)@aoai-gateway.aoai-gateway.svc:{http}\"" in text  # client keys
    policy = find(docs, "NetworkPolicy", "aoai-gateway")
    assert policy is not None
    assert any(http in {p["port"] for p in rule["ports"]} and "aoai-gateway/client" in str(rule["from"])
               for rule in policy["spec"]["ingress"])


def test_production_overlay_names_the_forward_proxy_component() -> None:
    """overlays/production's commented `components:` line points at the component, and its config's commented
    forward_proxy section at that component's Secret mount."""
    text = (KUBERNETES / "overlays/production/kustomization.yaml").read_text()
    (path,) = re.findall(r"^#\s*-\s*(\S*components/forward-proxy)\s*$", text, re.M)
    assert (KUBERNETES / "overlays/production" / path).resolve() == (KUBERNETES / FORWARD_PROXY_COMPONENT).resolve()
    patch = yaml.safe_load((KUBERNETES / FORWARD_PROXY_COMPONENT / "ca.yaml").read_text())
    (extproc,) = patch["spec"]["template"]["spec"]["initContainers"]
    assert extproc["name"] == "extproc"
    (mount,) = extproc["volumeMounts"]
    for config in ("base/gateway/config.yaml", "overlays/production/config.yaml"):
        section = commented_section((KUBERNETES / config).read_text(), "forward_proxy")
        assert section is not None, config
        assert section["ca_cert_file"] == mount["mountPath"] + "/tls.crt"
        assert section["ca_key_file"] == mount["mountPath"] + "/tls.key"

