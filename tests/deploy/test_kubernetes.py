"""deploy/kubernetes: every kustomization renders (kubectl's built-in kustomize), every object is
valid for the Kubernetes API (kubernetes-validate's schemas, strict), and the pods keep the promises
of the README: native sidecars in order, probes, resources, a restrictive securityContext."""

from __future__ import annotations

import base64
import copy

import kubernetes_validate
import pytest

from .flavours import kubernetes_flavours
from .helpers import (
    EXTERNAL_SECRETS,
    KUBERNETES_VERSIONS,
    KUSTOMIZATIONS,
    all_containers,
    container,
    find,
    image_name,
    kustomize,
    pod_specs,
    volume_sources,
)

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
