"""The compose profile `observability`: Prometheus and Grafana files, checked without Docker.

Targets must match the services and ports docker-compose.yml runs, mounted files must
exist, and the dashboard must query only documented metrics, all of them.
(tests/platform/test_observability.py checks that the metrics themselves are real.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from app.platform.settings import PROJECT_ROOT
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
