"""The operations files under deploy/: alert rules, Grafana dashboard, Kubernetes manifests.

Fast and offline: `promtool` (from `make tools`) checks and unit-tests the alert rules and the
PromQL of the dashboard and of the KEDA scaler; the manifests are parsed and cross-checked
against the code (settings, task queue names, metric names).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from videogen.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "videogen.json"
K8S = DEPLOY / "k8s"


def known_metrics() -> set[str]:
    """Every videogen_* metric the processes export, read from the code itself: the
    Prometheus registry once the modules that define metrics are imported, plus the counter
    the workflow records through Temporal's metric meter."""
    from prometheus_client import REGISTRY

    import api.app  # noqa: F401 - registers the API's metrics (and, through it, the fleet's)
    import videogen.metrics  # noqa: F401

    names = {n for n in REGISTRY._names_to_collectors if n.startswith("videogen_")}
    workflow_source = (ROOT / "workflows" / "video.py").read_text()
    names |= set(re.findall(r'create_counter\(\s*"(videogen_[a-z0-9_]+)"', workflow_source))
    return names


# The product requirements' alert table (restated in docs/operations.md, "Alerts"):
# alert name -> severity.
DESIGN_ALERTS = {
    "VideogenQueueDrainTimeHigh": "P2",  # queue drain time > 10 min, sustained 15 min
    "VideogenPreemptionRateHigh": "P1",  # preemption rate > 20%/hour, spike detection
    "VideogenCheckpointSlow": "P2",  # checkpoint save > 30 s, p95 sustained 10 min
    "VideogenLeaseExpirationsHigh": "P1",  # lease expirations > 5/min, sustained 5 min
    "VideogenGpuUnderutilized": "P3",  # GPU utilization < 50%, any worker 5 min
    "VideogenWastedGpuHoursHigh": "P3",  # wasted GPU hours > 20/day
    "VideogenCompletionRateLow": "P1",  # job completion rate < 95%, per hour
}

METRIC_RE = re.compile(r"\bvideogen_[a-z0-9_]+")


def promtool() -> str:
    """The promtool `make tools` put next to the venv's python, else one on PATH."""
    local = Path(sys.executable).parent / "promtool"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found next to the venv's python or on PATH: run `make tools`")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    out.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard())
    return out


def k8s_docs() -> dict[str, list[dict[str, Any]]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [d for ds in k8s_docs().values() for d in ds if d.get("kind") == kind]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]


def gpu_deployment() -> dict[str, Any]:
    found = [
        d
        for d in k8s_objects("Deployment")
        if any(c.get("command", [])[-2:] == ["worker", "gpu"] for c in containers(d))
    ]
    assert len(found) == 1, "exactly one Deployment runs `videogen worker gpu`"
    return found[0]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment: its ConfigMaps (envFrom) overridden by its env."""
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in k8s_objects("ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        env[var["name"]] = str(var.get("value", ""))
    return env


def gpu_scaled_object() -> dict[str, Any]:
    found = k8s_objects("ScaledObject")
    assert len(found) == 1
    return found[0]


def prometheus_promql(tmp_path: Path, exprs: list[str]) -> None:
    """Syntax-check PromQL by wrapping it into recording rules for `promtool check rules`."""
    rules = {
        "groups": [
            {
                "name": "check",
                "rules": [{"record": f"check:expr{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    run_promtool("check", "rules", str(path))


def grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$__range", "6h").replace("$tier", ".*")


# --- Prometheus ---------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    out = run_promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert f"SUCCESS: {len(DESIGN_ALERTS)} rules found" in out.stdout


def test_alert_rules_unit_tests() -> None:
    """alerts_test.yml: alerts firing and look-alikes not firing, with their annotations."""
    out = run_promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))
    assert "SUCCESS" in out.stdout


def test_alerts_cover_the_design_alert_table() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert set(rules) == set(DESIGN_ALERTS)
    for name, severity in DESIGN_ALERTS.items():
        rule = rules[name]
        assert rule["labels"]["severity"] == severity, name
        assert re.fullmatch(r"\d+[smhd]", rule["for"]), name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{name}: {key}"
    assert rules["VideogenQueueDrainTimeHigh"]["for"] == "15m"
    assert "> 600" in rules["VideogenQueueDrainTimeHigh"]["expr"]
    assert rules["VideogenCheckpointSlow"]["for"] == "10m"
    assert "histogram_quantile(0.95" in rules["VideogenCheckpointSlow"]["expr"]
    assert rules["VideogenLeaseExpirationsHigh"]["for"] == "5m"
    assert rules["VideogenGpuUnderutilized"]["for"] == "5m"


# --- Grafana ------------------------------------------------------------------------------


def test_dashboard_is_valid_and_complete(tmp_path: Path) -> None:
    dash = dashboard()
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        if p["type"] != "row" and "targets" in p:
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    cost = [p for p in panels if "cost" in p["title"].lower() and p["type"] == "table"]
    assert len(cost) == 1
    desc = cost[0]["description"].lower()
    for reading in ("healthy", "cold start", "checkpoint frequency", "scaling lag"):
        assert reading in desc
    text = " ".join(cost[0]["targets"][i]["expr"] for i in range(len(cost[0]["targets"])))
    for metric in (
        "videogen_gpu_utilization",
        "videogen_wasted_gpu_seconds_total",
        "videogen_queue_depth",
    ):
        assert metric in text
    prometheus_promql(tmp_path, [grafana_to_promql(e) for e in dashboard_exprs()])


# --- Kubernetes ---------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # The example secret's placeholders (a known admin key) must never be applied as they are.
    assert listed == present - {"secret.example.yaml"}


def _api_paths() -> set[str]:
    from api.app import create_app

    return set(create_app(Settings()).openapi()["paths"])


def test_every_container_has_probes() -> None:
    deployments = k8s_objects("Deployment")
    assert {tuple(c["command"]) for d in deployments for c in containers(d)} == {
        ("videogen", "api"),
        ("videogen", "worker", "cpu"),
        ("videogen", "worker", "gpu"),
    }
    for d in deployments:
        for c in containers(d):
            assert "readinessProbe" in c and "livenessProbe" in c, d["metadata"]["name"]
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in c:
                    action = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                    assert action["port"] in ports, (d["metadata"]["name"], probe)
                    if "path" in action and c["command"][1] == "api":
                        assert action["path"] in _api_paths(), (probe, action["path"])
            # Prometheus scrapes the port the process serves /metrics on.
            annotations = d["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true"
            assert int(annotations["prometheus.io/port"]) in ports.values()


def test_every_videogen_variable_is_a_setting() -> None:
    """A misspelt VIDEOGEN_* name would be ignored silently (settings ignore extras)."""
    fields = {f"VIDEOGEN_{name.upper()}" for name in Settings.model_fields}
    names: set[str] = set()
    for kind in ("ConfigMap", "Secret"):
        for obj in k8s_objects(kind):
            names |= set(obj.get("data", {})) | set(obj.get("stringData", {}))
    for d in k8s_objects("Deployment"):
        for c in containers(d):
            names |= {var["name"] for var in c.get("env", [])}
    used = {n for n in names if n.startswith("VIDEOGEN_")}
    assert used, "no VIDEOGEN_* variable found"
    assert used <= fields, f"not settings: {sorted(used - fields)}"


@pytest.fixture
def gpu_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The GPU worker Deployment, its container and its env; Settings() sees only that env
    (none of this machine's VIDEOGEN_* variables)."""
    for name in list(os.environ):
        if name.startswith("VIDEOGEN_"):
            monkeypatch.delenv(name)
    gpu = gpu_deployment()
    (container,) = containers(gpu)
    return gpu, container, container_env(container)


def test_gpu_worker_grace_period_covers_the_emergency_checkpoint(
    gpu_worker: tuple[dict[str, Any], dict[str, Any], dict[str, str]],
) -> None:
    gpu, container, env = gpu_worker
    graceful = float(env.get("VIDEOGEN_GRACEFUL_SHUTDOWN_S", Settings().graceful_shutdown_s))
    grace = gpu["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > graceful
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert (
        container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
        >= 300
    ), "model loading takes minutes"
    # The metrics server (probes, scraping) must not bind loopback.
    assert env["VIDEOGEN_WORKER_METRICS_HOST"] == "0.0.0.0"
    assert env["VIDEOGEN_WORKER_METRICS_PORT"] == "9100"
    # Exec form: the worker is PID 1 and gets the SIGTERM itself.
    assert container["command"][0] == "videogen"


def test_keda_scales_the_gpu_worker_on_its_task_queue(
    tmp_path: Path, gpu_worker: tuple[dict[str, Any], dict[str, Any], dict[str, str]]
) -> None:
    gpu, _, env = gpu_worker
    settings = Settings(
        model=env.get("VIDEOGEN_MODEL", ""),
        model_name=env.get("VIDEOGEN_MODEL_NAME", ""),
        task_queue_prefix=env.get("VIDEOGEN_TASK_QUEUE_PREFIX", "videogen"),
        worker_pool=env.get("VIDEOGEN_WORKER_POOL", ""),
    )
    queue = settings.warm_queue(settings.served_model, settings.worker_pool)

    so = gpu_scaled_object()
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == gpu["metadata"]["name"]
    assert "replicas" not in gpu["spec"], "KEDA owns the GPU worker's replica count"
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert "cooldownPeriod" in spec
    triggers = {t["type"]: t for t in spec["triggers"]}
    for trigger in spec["triggers"]:
        # The CRD types trigger metadata as a map of strings: "1", not 1.
        assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger["type"]

    temporal = triggers["temporal"]["metadata"]
    assert temporal["taskQueue"] == queue
    assert temporal["queueTypes"] == "activity"
    assert temporal["endpoint"] == env["TEMPORAL_ADDRESS"]
    assert temporal["namespace"] == env["TEMPORAL_NAMESPACE"]

    query = triggers["prometheus"]["metadata"]["query"]
    assert set(re.findall(r'queue="([^"]+)"', query)) == {queue}
    # Backlog alone would scale busy workers away: running jobs must be counted too.
    assert "videogen_queue_depth" in query and "videogen_running_jobs" in query
    prometheus_promql(tmp_path, [query])


def test_every_referenced_metric_exists() -> None:
    texts = []
    for rule in alert_rules():
        texts.append(rule["expr"])
        texts.extend(rule["annotations"].values())
    texts.extend(dashboard_exprs())
    texts.extend(
        t["metadata"]["query"]
        for t in gpu_scaled_object()["spec"]["triggers"]
        if t["type"] == "prometheus"
    )
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for t in texts for m in METRIC_RE.findall(t)}
    assert used, "no videogen_* metric found"
    known = known_metrics()
    assert "videogen_jobs_total" in known and "videogen_queue_depth" in known
    assert used <= known, f"unknown metrics: {sorted(used - known)}"
