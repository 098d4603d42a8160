"""deploy/kubernetes: both overlays render, every object validates offline against the
Kubernetes schemas (kubernetes-validate ships them), and the Deployment keeps the promises
docs/operations.md makes (probes, grace period, non-root, read-only root, sizing)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway.config.settings import Settings
from support.kustomize import merge, render

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy" / "kubernetes"
OVERLAYS = ("single", "ha")
#: The oldest Kubernetes still in upstream support when this was written, and the newest the package knows.
KUBE_VERSIONS = ("1.32", kubernetes_validate.latest_version())
SERVICEMONITOR_SCHEMA = json.loads((REPO / "tests" / "fixtures" / "deploy" / "servicemonitor.schema.json").read_text())


def objects(overlay: str) -> list[dict[str, Any]]:
    return render(KUBE / "overlays" / overlay)


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{kind}: {len(found)} objects"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["gateway"]
    return dict(spec["containers"][0])


def env(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(docs)["env"]}


def validate(obj: dict[str, Any]) -> None:
    if obj["kind"] == "ServiceMonitor":  # a CRD: no Kubernetes schema, the operator's (in part)
        jsonschema.validate(obj, SERVICEMONITOR_SCHEMA)
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(overlay: str) -> None:
    docs = objects(overlay)
    kinds = sorted(d["kind"] for d in docs)
    expected = {"ConfigMap", "Deployment", "NetworkPolicy", "Service", "ServiceAccount"}
    expected |= {"PersistentVolumeClaim"} if overlay == "single" else {
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"}
    assert set(kinds) == expected
    for obj in docs:
        validate(obj)


def test_the_validator_refuses_a_misspelt_field() -> None:
    # Proves the strict schemas are really consulted: a typo must not pass.
    deployment = copy.deepcopy(one(objects("ha"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    monitor = copy.deepcopy(one(objects("ha"), "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: kustomize cross-check skipped")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_renderer_agrees_with_kubectl_kustomize(overlay: str) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(KUBE / "overlays" / overlay)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    def key(d: dict[str, Any]) -> tuple[str, str]:
        return d["kind"], d["metadata"]["name"]
    ours = sorted((_normal(d) for d in objects(overlay)), key=key)
    theirs = sorted((_normal(d) for d in yaml.safe_load_all(out) if d), key=key)
    assert ours == theirs


def _normal(value: Any) -> Any:
    """Lists of named maps (env, volumes...) sorted by name: order is not what is compared."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_normal(v) for v in value]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: str(i["name"]))
        return items
    return value


def test_strategic_merge_subset() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}
    patch = {"a": {"c": [3]}, "env": [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}]}
    assert merge(base, patch) == {"a": {"b": 1, "c": [3]}, "env": [
        {"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}, {"name": "X", "value": "1"}]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_probes_security_and_sizing(overlay: str) -> None:
    docs = objects(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["ports"][0]["containerPort"] == 8080
    # Non-root (the Dockerfile's uid), read-only root, nothing to escalate.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"--uid {pod['securityContext']['runAsUser']} " in dockerfile
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts  # applied-policy snapshots and multiprocess metrics are written there
    # Sizing from benchmarks/README.md: ~90 MiB RSS, 180-280 µs CPU per request.
    resources = c["resources"]
    assert resources["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert resources["limits"] == {"cpu": "1", "memory": "512Mi"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_graceful_stop_and_ledger_flush(overlay: str) -> None:
    docs = objects(overlay)
    config = yaml.safe_load(one_configmap(docs, "llm-gateway-config")["gateway.yaml"])
    defaults = Settings()
    graceful = config.get("server", {}).get("graceful_timeout_s", defaults.server.graceful_timeout_s)
    flush = config.get("ledger", {}).get("shutdown_timeout_s", defaults.ledger.shutdown_timeout_s)
    pre_stop = int(container(docs)["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + graceful + flush


def one_configmap(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    found = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    assert len(found) == 1
    return dict(found[0]["data"])


def test_single_runs_sqlite_on_a_volume() -> None:
    docs = objects("single")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two SQLite writers
    assert env(docs)["DATABASE_URL"]["value"] == "sqlite:////data/gateway.db"
    assert {"name": "data", "mountPath": "/data"} in container(docs)["volumeMounts"]
    claim = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim


def test_ha_shares_postgres_and_redis_from_the_secret() -> None:
    docs = objects("ha")
    deployment = one(docs, "Deployment")
    hpa, pdb = one(docs, "HorizontalPodAutoscaler"), one(docs, "PodDisruptionBudget")
    assert deployment["spec"]["replicas"] >= 3 and hpa["spec"]["minReplicas"] >= 3
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    variables = env(docs)
    for name, key in (("DATABASE_URL", "database-url"), ("REDIS_URL", "redis-url"),
                      ("GATEWAY_PROMPT_SIGNING_KEY", "prompt-signing-key")):
        ref = variables[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] == key and ref.get("optional", False) is False
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_reference_and_the_config_check(overlay: str, tmp_path: Path) -> None:
    docs = objects(overlay)
    refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in env(docs).values() if "valueFrom" in e}
    assert {"admin-key", "prompt-signing-key", "openai-api-key", "langfuse-public-key",
            "langfuse-secret-key"} <= refs
    # The mounted configuration passes `gateway config check` (as laid out at /etc/gateway).
    (tmp_path / "policies").mkdir()
    (tmp_path / "gateway.yaml").write_text(one_configmap(docs, "llm-gateway-config")["gateway.yaml"])
    for name, text in one_configmap(docs, "llm-gateway-policies").items():
        (tmp_path / "policies" / name).write_text(text)
    run_env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}"}
    check = subprocess.run([sys.executable, "-m", "gateway", "config", "check", "-c", str(tmp_path / "gateway.yaml")],
                           env=run_env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
