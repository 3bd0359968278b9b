"""deploy/docker-compose.yml, read as data (no Docker engine here) and checked against the code and settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.dag_settings import load_settings
from tests.support import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def settings():
    return load_settings(DEPLOY / "compose" / "settings.yaml", "/opt/airflow")  # fails on any invalid value


def _flags(command: list[str]) -> dict[str, str]:
    return dict(flag.removeprefix("--").split("=", 1) for flag in command if flag.startswith("--") and "=" in flag)


def _mounts(service: dict) -> dict[str, str]:
    """{container path: source} of a service's volumes."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes", [])}


def test_the_stack_has_every_service_the_readme_describes(compose):
    assert set(compose["services"]) == {
        "postgres",
        "redis",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-worker-gpu",
        "tf-serving",
    }
    for name, service in compose["services"].items():
        if name not in ("airflow-init", "tf-serving"):
            assert "healthcheck" in service, name


def test_queues_and_pool_agree_with_the_dag_settings(compose, settings):
    services = compose["services"]
    assert services["airflow-worker-gpu"]["command"].split("--queues ")[1].split()[0] == settings.queue
    devices = services["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    env = dict(
        line.split("=", 1) for line in (DEPLOY / "compose" / "airflow.env").read_text().splitlines() if "=" in line
    )
    assert (
        services["airflow-worker"]["command"].split("--queues ")[1].split()[0]
        == env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    )
    assert f"airflow pools set {settings.pool} " in services["airflow-init"]["command"][1]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert (
        "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        and "@redis:6379" in env["AIRFLOW__CELERY__BROKER_URL"]
    )


def test_tf_serving_reads_what_the_pipeline_publishes_and_promotion_reaches_it(compose, settings):
    services = compose["services"]
    serving, worker = services["tf-serving"], services["airflow-worker-gpu"]
    config = settings.base_config()
    flags = _flags(serving["command"])
    host, port = config.serving_grpc_target.split(":")
    assert host == "tf-serving" and port == flags["port"]
    assert config.serving_rest_url == f"http://tf-serving:{flags['rest_api_port']}"
    assert flags["model_config_file"] == config.serving_config_file
    assert flags["allow_version_labels_for_unavailable_models"] == "true"  # the labelled file must start
    # The same named volume at the model base path in the workers and in TF Serving.
    assert _mounts(worker)[config.model_base_path] == _mounts(serving)[config.model_base_path] == "models"
    assert _mounts(worker)[config.workdir] == "artifacts"
    assert config.serving_config_file.startswith(config.model_base_path + "/")
    dockerfile = (REPO_ROOT / "serving" / "Dockerfile").read_text()
    pinned = re.search(r"ARG TF_SERVING_VERSION=(\S+)", dockerfile).group(1)
    assert serving["image"] == f"tensorflow/serving:{pinned}"


def test_every_file_the_stack_mounts_exists(compose):
    for service in compose["services"].values():
        for source in _mounts(service).values():
            if source.startswith("."):
                assert (DEPLOY / source).resolve().exists(), source
    assert (DEPLOY / "compose" / "airflow.env").exists()
    assert compose["x-airflow-common"]["image"].startswith("keras-mlops-airflow")
    assert "keras-mlops-airflow" in (REPO_ROOT / "Dockerfile").read_text()
    assert Path(compose["x-airflow-common"]["env_file"]).name == "airflow.env"


# --- Kubernetes ---------------------------------------------------------------------------------------

K8S = DEPLOY / "kubernetes"


def _documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def test_kubernetes_settings_route_training_to_the_gpu_pod_template(settings):
    k8s = load_settings(K8S / "settings.yaml", "/opt/airflow")
    assert k8s.train_executor_config() == {"pod_template_file": "/opt/airflow/pod_templates/gpu-train.yaml"}
    assert settings.train_executor_config() == {}  # Celery (compose) routes by queue instead
    (pod,) = _documents("gpu-train-pod-template.yaml")
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "base"  # the KubernetesExecutor runs the task in the container named base
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    assert values["executor"] == "KubernetesExecutor"
    mounts = {mount["mountPath"]: mount["name"] for mount in values["volumeMounts"]}
    assert mounts[str(Path(k8s.train_pod_template_file).parent)] == "pod-templates"
    config = k8s.base_config()
    for volume_mounts in (values["volumeMounts"], container["volumeMounts"]):
        paths = {mount["mountPath"]: mount["name"] for mount in volume_mounts}
        assert paths[config.model_base_path] == "models" and paths[config.workdir] == "artifacts"
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (REPO_ROOT / "requirements.txt").read_text(), re.M))
    assert values["airflowVersion"] == pins["apache-airflow"]


def test_kubernetes_serving_replicas_are_the_ones_promotion_reloads():
    from pipeline.release.promotion import serving_targets

    config = load_settings(K8S / "settings.yaml", "/opt/airflow").base_config()
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for doc in _documents("tf-serving.yaml")}
    statefulset = docs[("StatefulSet", "tf-serving")]
    service_name = statefulset["spec"]["serviceName"]
    assert docs[("Service", service_name)]["spec"]["clusterIP"] == "None"  # per-replica DNS names
    replicas = statefulset["spec"]["replicas"]
    assert serving_targets(config) == [f"tf-serving-{i}.{service_name}:8500" for i in range(replicas)]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    flags = _flags(container["args"])
    assert flags["model_config_file"] == config.serving_config_file and flags["port"] == "8500"
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{config.model_name}"
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}[config.model_base_path] == "models"
    assert {("PersistentVolumeClaim", "models"), ("PersistentVolumeClaim", "artifacts")} <= set(docs)
    dockerfile = (REPO_ROOT / "serving" / "Dockerfile").read_text()
    assert container["image"] == "tensorflow/serving:" + re.search(r"ARG TF_SERVING_VERSION=(\S+)", dockerfile).group(1)
