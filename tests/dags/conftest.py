"""Airflow in tests: a temporary AIRFLOW_HOME, the project's DAGs with test settings, a serving server.

The environment is set when this file is imported, before anything imports Airflow.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.support import REPO_ROOT, start_test_server

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-home-"))
DAGS_FOLDER = AIRFLOW_HOME / "dags"
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
    }
)


def write_dags(folder: Path, settings: dict) -> None:
    """Copies the project's DAG folder (DAG files, helpers, .airflowignore) into `folder` beside a settings.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    for dag_file in [*(REPO_ROOT / "dags").glob("*.py"), REPO_ROOT / "dags" / ".airflowignore"]:
        shutil.copy(dag_file, folder / dag_file.name)
    (folder / "settings.yaml").write_text(yaml.safe_dump(settings))


def with_far_schedules(settings: dict) -> dict:
    """The settings with the nightly and the drift slot 12 hours from now, for a live scheduler.

    A slot that passes while a test's scheduler runs starts a run of its own beside the test's
    (a CI run that crossed 02:00 UTC found the snapshot already ingested by the scheduled run).
    """
    hour = (datetime.datetime.now(datetime.UTC).hour + 12) % 24
    return {**settings, "schedule": f"0 {hour} * * *", "drift_schedule": f"30 {hour} * * *"}


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils import db

    db.resetdb()
    return AIRFLOW_HOME


def _serving_flags(config_file: Path, model_roots: Path) -> list[str]:
    # As in production: a restart reads the labels promotion wrote, before any version is loaded.
    # Promotion turns request logging on (request_log_sampling_rate) under the request log folder.
    # The model roots are explicit, as a deployment sets them: otherwise a restart would allow only
    # the models its config file names then, and a model added later would be refused.
    return [
        f"--model_config_file={config_file}",
        f"--model_base_path_roots={model_roots}",
        "--allow_version_labels_for_unavailable_models",
        f"--request_log_roots={config_file.parent / 'request_logs'}",
        "--request_log_rotate_seconds=1",
        f"--monitoring_config_file={REPO_ROOT / 'serving' / 'monitoring.config'}",  # the canary watch reads it
    ]


@pytest.fixture(scope="session")
def serving_server(tmp_path_factory):
    """A local serving server started on the promotion config file (initially empty).

    Promotion pushes each change over gRPC, so the server does not also poll the file:
    two channels for one config would race.
    """
    root = tmp_path_factory.mktemp("serving")
    config_file = root / "models.config"
    config_file.write_text("model_config_list {\n}\n")
    model_roots = tmp_path_factory.getbasetemp()  # every test's pipeline folder is under it
    local = start_test_server(root, root / "server.log", *_serving_flags(config_file, model_roots))
    server = {
        "config_file": config_file,
        "rest_url": local.rest_url,
        "grpc_target": local.grpc_target,
        "local": local,
        "model_roots": model_roots,
    }
    yield server
    server["local"].stop()


def restart_serving(server: dict) -> None:
    """Starts the serving server again on the same ports and config file."""
    old = server["local"]
    server["local"] = start_test_server(
        old.log_path.parent,
        old.log_path,
        *_serving_flags(server["config_file"], server["model_roots"]),
        ports=(old.grpc_port, old.rest_port),
    )


@pytest.fixture(scope="session")
def dag_settings(tmp_path_factory, small_idx_dir, serving_server):
    work = tmp_path_factory.mktemp("pipeline")
    settings = {
        "schedule": "0 2 * * *",
        "pool": "gpu_training",
        "queue": "gpu",
        "retries": 1,
        "retry_delay_seconds": 1,
        "max_retry_delay_seconds": 2,
        "task_timeout_minutes": 10,
        "train_timeout_minutes": 10,
        "pipeline": {
            "data_source": f"idx:{small_idx_dir}",
            "workdir": str(work / "artifacts"),
            "model_base_path": str(work / "models"),
            "model_name": "fashion_mnist",
            "serving_config_file": str(serving_server["config_file"]),
            "serving_grpc_target": serving_server["grpc_target"],
            "serving_rest_url": serving_server["rest_url"],
            "request_log_sampling_rate": 1.0,
            "request_log_dir": str(serving_server["config_file"].parent / "request_logs"),
            "drift_min_requests": 50,
            # A 1-epoch model's predicted classes are far from the label distribution already.
            "drift_max_class_distance": 0.6,
            "epochs": 1,
            "batch_size": 64,
            "shuffle_buffer": 512,
            "min_accuracy": 0.5,
            "warmup_requests": 3,
            "smoke_test_examples": 32,
            "infra_validation_timeout_s": 120,
            # Each canary with a stable beside it is watched on live traffic (tests send it) for 6 s.
            "canary_watch_seconds": 6,
            "canary_traffic_percent": 50,
            "canary_min_requests": 20,
            "canary_min_agreement": 0.6,  # two 1-epoch models agree less than two good ones
            "canary_max_latency_ratio": 5.0,
        },
    }
    write_dags(DAGS_FOLDER, settings)
    return settings


@pytest.fixture(scope="session")
def dag_bag(airflow_db, dag_settings):
    from airflow.dag_processing.dagbag import BundleDagBag

    # As Airflow's DAG processor and task runner parse it: the DAG folder (bundle) is on sys.path.
    bag = BundleDagBag(dag_folder=str(DAGS_FOLDER), bundle_path=DAGS_FOLDER)
    assert bag.import_errors == {}
    return bag


POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def postgres_url():
    """A new PostgreSQL database for this module, dropped afterwards (skips if no server answers)."""
    import uuid

    import psycopg2

    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **POSTGRES)
    except psycopg2.OperationalError as err:
        pytest.skip(
            f"PostgreSQL is not reachable at {POSTGRES['host']}:{POSTGRES['port']} as user {POSTGRES['user']} "
            f"(trust auth), needed for Airflow's metadata DB: {str(err).strip()}"
        )
    name = f"airflow_test_{uuid.uuid4().hex[:10]}"
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg2://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="module")
def redis_url():
    """The Celery broker on the local Redis (skips if it does not answer PING)."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except redis.exceptions.RedisError as err:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}, needed as the Celery broker: {err}")
    return REDIS_URL
