"""The compose profile `observability`: Prometheus and Grafana files, checked without Docker.

Targets must match the services and ports docker-compose.yml runs, mounted files must
exist, the dashboard must query only documented metrics, all of them, and the alert rules
must be complete, valid for promtool, fire in their unit tests (alerts_test.yml) and use
only metrics and labels the processes export.
(tests/platform/test_observability.py checks that the metrics themselves are real.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from app.platform.settings import PROJECT_ROOT
from tests.deploy import promql
from tests.metrics_docs import dashboard_metrics, dashboard_panels, documented_metrics

pytestmark = pytest.mark.integration

DEPLOY = PROJECT_ROOT / "deploy"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load(PROJECT_ROOT / "docker-compose.yml")
    return data


@pytest.fixture(scope="module")
def jobs() -> dict[str, dict[str, Any]]:
    config = load(DEPLOY / "prometheus.yml")
    return {job["job_name"]: job for job in config["scrape_configs"]}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (or volume name) of a service's short-syntax volumes."""
    out = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def test_profile_services_are_optional_and_their_files_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
        assert "healthcheck" in services[name], name
        for target, source in mounts(services[name]).items():
            if source.startswith("./"):
                assert (PROJECT_ROOT / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
            assert target.startswith("/"), target
    # Nothing else depends on them: the stack runs the same without the profile.
    for name, svc in services.items():
        if name not in ("prometheus", "grafana"):
            assert "profiles" not in svc, name
            assert not {"prometheus", "grafana"} & set(svc.get("depends_on", {})), name


def test_prometheus_scrapes_the_api_workers_and_temporal(
    compose: dict[str, Any], jobs: dict[str, dict[str, Any]]
) -> None:
    services = compose["services"]
    api = jobs["orders-api"]
    assert api["metrics_path"] == "/metrics"
    assert api["static_configs"][0]["targets"] == ["app:8000"]
    assert services["app"]["environment"]["API_PORT"] == "8000"
    # /metrics needs a viewer key: read from the mounted secrets folder.
    key_file = Path(api["authorization"]["credentials_file"])
    host_dir = mounts(services["prometheus"])[str(key_file.parent)]
    assert (PROJECT_ROOT / host_dir).is_dir()
    assert (PROJECT_ROOT / host_dir / ".gitignore").read_text().splitlines()[-2:] == [
        "*",
        "!.gitignore",
    ]
    for worker in ("worker-orders", "worker-shipping"):
        (sd,) = jobs[worker]["dns_sd_configs"]
        assert sd["names"] == [worker] and sd["type"] == "A"
        command = services[worker]["command"]
        assert str(sd["port"]) == command[command.index("--metrics-port") + 1], worker
    assert jobs["temporal"]["static_configs"][0]["targets"] == ["temporal:8000"]


def test_grafana_provisions_the_datasource_and_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = mounts(compose["services"]["grafana"])
    provisioning = PROJECT_ROOT / grafana["/etc/grafana/provisioning"]
    (source,) = load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090"
    (provider,) = load(provisioning / "dashboards" / "orders.yml")["providers"]
    folder = provider["options"]["path"]
    assert (PROJECT_ROOT / grafana[folder] / "orders.json").is_file()
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]


def test_dashboard_shows_every_documented_metric_and_nothing_else() -> None:
    used = dashboard_metrics("orders_")
    documented = set(documented_metrics())
    assert used == documented, {"undocumented": used - documented, "unused": documented - used}


# --- alert rules ---------------------------------------------------------------------------

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = Path(__file__).with_name("alerts_test.yml")
SEVERITIES = {"warning", "critical"}
# Labels of the Temporal SDK families the deploy files query, as temporalio's core exports
# them on a worker's /metrics (the schedule-to-start histograms carry no activity_type).
SDK_LABELS = {
    "temporal_workflow_task_schedule_to_start_latency": {"namespace", "service_name", "task_queue"},
    "temporal_activity_schedule_to_start_latency": {"namespace", "service_name", "task_queue"},
}


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def process_families() -> set[str]:
    """process_* samples of prometheus_client's default registry, which the API's and every
    worker's /metrics serve (its process collector reads /proc)."""
    text = generate_latest(REGISTRY).decode()
    return set(re.findall(r"^(process_\w+?)(?:\{| )", text, flags=re.MULTILINE))


def known_labels() -> dict[str, frozenset[str]]:
    """Metric family -> the label names its series have besides the target labels."""
    labels = {name: labels for name, (_, labels) in documented_metrics().items()}
    labels.update({name: frozenset(values) for name, values in SDK_LABELS.items()})
    labels.update({name: frozenset() for name in process_families()})
    labels["up"] = frozenset()
    return labels


def check_query(expr: str, where: str) -> None:
    """Only known metrics, matched and grouped by labels they have."""
    known = known_labels()
    for selector in promql.selectors(expr):
        name = selector.family
        assert name in known, f"{where}: unknown metric {selector.metric}"
        if name.startswith("temporal_"):
            # Real: tests/platform/test_observability.py finds the dashboard's on a worker.
            assert name in dashboard_metrics("temporal_"), f"{where}: {name} not on the dashboard"
        have = known[name] | promql.TARGET_LABELS
        if selector.metric.endswith("_bucket"):
            have |= {"le"}
        assert selector.labels <= have, (where, selector.metric, selector.labels - have)
    for grouped, inner in promql.groupings(expr):
        have = set(promql.TARGET_LABELS)
        for selector in inner:
            have |= known.get(selector.family, frozenset())
            if selector.metric.endswith("_bucket"):
                have.add("le")
        assert grouped <= have, (where, "grouped by labels no series has", grouped - have)


def test_prometheus_loads_the_mounted_alert_rules(compose: dict[str, Any]) -> None:
    files = load(DEPLOY / "prometheus.yml")["rule_files"]
    targets = mounts(compose["services"]["prometheus"])
    assert files, "no rule_files"
    for path in files:
        assert (PROJECT_ROOT / targets[path]).resolve() == ALERTS.resolve(), path


def test_every_rule_is_complete() -> None:
    names = []
    for rule in rules():
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        names.append(rule["alert"])
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
    assert len(names) == len(set(names)), names


def test_the_alerts_an_operator_needs_exist() -> None:
    by_name = {rule["alert"]: rule["expr"] for rule in rules()}

    def families(alert: str) -> set[str]:
        return {s.family for s in promql.selectors(by_name[alert])}

    assert families("OrderStepErrorRateHigh") >= {"orders_step_errors_total"}
    assert any(
        labels == {"step"} for labels, _ in promql.groupings(by_name["OrderStepErrorRateHigh"])
    )
    assert 'reason="deadline_exceeded"' in by_name["OrdersHitTheirDeadline"]
    assert families("OrdersClosedLongPastDeadline") == {"orders_execution_seconds"}
    worker_jobs = 'job=~"worker-orders|worker-shipping"'
    assert worker_jobs in by_name["WorkerDown"] and "== 0" in by_name["WorkerDown"]
    assert families("WorkerQueueUnserved") == {"up"}
    assert families("WorkflowTaskScheduleToStartHigh") == {
        "temporal_workflow_task_schedule_to_start_latency"
    }
    assert families("ActivityScheduleToStartHigh") == {
        "temporal_activity_schedule_to_start_latency"
    }


def test_alert_rules_query_only_real_metrics_and_labels(jobs: dict[str, dict[str, Any]]) -> None:
    for rule in rules():
        check_query(rule["expr"], rule["alert"])
        # Jobs named in matchers are the scrape jobs deploy/prometheus.yml defines.
        for value in re.findall(r'job=~?"([^"]+)"', rule["expr"]):
            assert set(value.split("|")) <= set(jobs), (rule["alert"], value)


def test_dashboard_queries_only_real_metrics_and_labels() -> None:
    for panel in dashboard_panels():
        for target in panel["targets"]:
            check_query(target["expr"], panel["title"])


def test_the_query_checks_catch_mistakes() -> None:
    # What the checks above must refuse: an invented family, a label the series lack.
    with pytest.raises(AssertionError, match="unknown metric"):
        check_query("rate(orders_made_up_total[5m])", "probe")
    with pytest.raises(AssertionError, match="grouped by labels"):
        check_query(
            "sum by (le, activity_type) (rate(temporal_activity_schedule_to_start_latency_bucket[5m]))",
            "probe",
        )
    with pytest.raises(AssertionError):
        check_query('orders_terminal_total{outcome="FAILED"}', "probe")


def test_dashboard_shows_cpu_and_memory_per_process() -> None:
    exprs = {t["expr"] for panel in dashboard_panels() for t in panel["targets"]}
    for family in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert family in process_families(), family
        (expr,) = [e for e in exprs if family in e]
        assert "by (job, instance)" in expr, expr


def _promtool() -> str:
    found = shutil.which("promtool")
    # scripts/test.sh installs it (Debian's prometheus package); no skipping without it.
    assert found, "promtool not found: install Debian's `prometheus` package (scripts/test.sh does)"
    return found


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_rules_and_their_unit_tests() -> None:
    promtool = _promtool()
    checked = _run(promtool, "check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Each alert fires on the series that should raise it, and only there.
    tested = _run(promtool, "test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tested_alerts = {
        case["alertname"]
        for test in load(ALERTS_TEST)["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert tested_alerts == {rule["alert"] for rule in rules()}


def test_promtool_accepts_the_config_as_the_container_sees_it(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    # The config names container paths: point them at the files compose mounts there.
    text = (DEPLOY / "prometheus.yml").read_text()
    for target, source in mounts(compose["services"]["prometheus"]).items():
        if target.startswith("/etc/prometheus/") and source.startswith("./"):
            host = PROJECT_ROOT / source
            if target.endswith("/secrets"):  # git-ignored key file: a stand-in
                host = tmp_path / "secrets"
                host.mkdir()
                (host / "prometheus-api-key").write_text("key\n")
            text = text.replace(target, str(host))
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    checked = _run(_promtool(), "check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout
