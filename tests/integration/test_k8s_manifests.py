"""The Kubernetes manifests (deploy/k8s/) validate against the Kubernetes API schemas and wire
the parts together: no cluster needed. kubernetes-validate ships the schemas of every release
in its wheel, so this runs offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from common.settings import AgentSettings, RouterSettings

ROOT = Path(__file__).parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes still maintained when written, and the newest the validator knows.
VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())

pytestmark = pytest.mark.timeout(60)


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return found


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    checked = []
    for name, document in documents():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name} {document['kind']}: {where}: {exc.message}")
        checked.append(document["kind"])
    assert {"Deployment", "DaemonSet", "Service", "ConfigMap"} <= set(checked)


def test_the_validator_catches_a_broken_manifest() -> None:
    """What the test above relies on: a wrong field fails (the schemas are really there)."""
    router = by_kind("Deployment")["gpulet-router"]
    broken = {**router, "spec": {**router["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_routers_are_replicated_behind_a_service_ready_on_readyz() -> None:
    router = by_kind("Deployment")["gpulet-router"]
    assert router["spec"]["replicas"] >= 2
    [container] = pod_spec(router)["containers"]
    assert container["command"] == ["gpulet", "router"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = container["readinessProbe"]["httpGet"]["port"]
    assert port in {p["name"] for p in container["ports"]}
    service = by_kind("Service")["gpulet-router"]
    labels = router["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert env_of(container)["GPULET_ROUTER_HOST"]["value"] == "0.0.0.0"


def test_gpu_agents_run_on_gpu_nodes_with_the_mps_pipe_from_the_host() -> None:
    agent = by_kind("DaemonSet")["gpulet-agent-gpu"]
    spec = pod_spec(agent)
    [container] = spec["containers"]
    assert "nvidia.com/gpu" in container["resources"]["limits"]
    assert spec["hostIPC"] is True
    pipe = env_of(container)["GPULET_MPS_PIPE_DIR"]["value"]
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounted[pipe]]["hostPath"]["path"] == pipe
    assert env_of(container)["GPULET_DEVICE_KIND"]["value"] == "nvidia"


def test_agents_advertise_their_pod_ip_and_reach_the_configured_redis() -> None:
    config = by_kind("ConfigMap")["gpulet-config"]["data"]
    redis_service = by_kind("Service")["gpulet-redis"]
    port = redis_service["spec"]["ports"][0]["port"]
    assert config["GPULET_REDIS_URL"].startswith(f"redis://gpulet-redis:{port}")
    for name in ("gpulet-agent-gpu", "gpulet-agent-cpu"):
        [container] = pod_spec(by_kind("DaemonSet")[name])["containers"]
        env = env_of(container)
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["GPULET_AGENT_ADVERTISE_URL"]["value"] == "http://$(POD_IP):8100"
        assert env["GPULET_AGENT_PORT"]["value"] == "8100"
        assert container["envFrom"] == [{"configMapRef": {"name": "gpulet-config"}}]


def test_every_gpulet_variable_is_a_real_setting() -> None:
    """A misspelt GPULET_ variable would be ignored silently by the pods."""
    known = {f"GPULET_{f.upper()}" for cls in (RouterSettings, AgentSettings)
             for f in cls.model_fields}  # fmt: skip
    used = set(by_kind("ConfigMap")["gpulet-config"]["data"])
    for kind in ("Deployment", "DaemonSet"):
        for workload in by_kind(kind).values():
            for container in pod_spec(workload)["containers"]:
                used |= set(env_of(container))
    assert {v for v in used if v.startswith("GPULET_")} <= known
