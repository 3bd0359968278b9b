"""Airflow distributed for real: CeleryExecutor, PostgreSQL metadata DB, Redis broker, three Celery workers.

The stack is deploy/celery_stack.py, as `make airflow EXECUTOR=celery` runs it (with
`--default-workers 2`): api-server, scheduler, dag-processor, triggerer, two workers on the
default queue, which share the mapped ingest and validation parts, and one on the training
queue. Queue names are unique to this test, so no other worker on the same Redis takes its tasks.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from deploy import celery_stack
from serving.client import TFServingClient
from serving.launcher import free_port
from tests.dags.airflow_api import (
    AIRFLOW,
    DAG_ID,
    prepare_database,
    request,
    task_instances,
    wait_and_log_in,
    wait_for_dag,
    wait_for_run,
)
from tests.dags.conftest import with_far_schedules, write_dags
from tests.support import REPO_ROOT, Traffic


@pytest.fixture(scope="module")
def celery_airflow(tmp_path_factory, dag_settings, serving_server, postgres_url, redis_url):
    suffix = uuid.uuid4().hex[:8]
    queues = {"default": f"default_{suffix}", "train": f"train_{suffix}"}
    home = tmp_path_factory.mktemp("celery-home")
    # Ingest in parts (one per split here): the mapped `ingest_part` tasks go to both default workers.
    # Its own workdir: the data has no snapshot there yet, so the parts are written.
    pipeline_options = {**dag_settings["pipeline"], "ingest_part_mb": 0.5, "workdir": str(home / "artifacts")}
    write_dags(
        home / "dags", with_far_schedules({**dag_settings, "queue": queues["train"], "pipeline": pipeline_options})
    )
    port = free_port()
    base_env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queues["default"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    env = celery_stack.celery_env(
        base_env, database_url=postgres_url, broker_url=redis_url, jwt_secret=secrets.token_urlsafe(32)
    )
    prepare_database(env, dag_settings["pool"])
    stack = celery_stack.Stack(home / "logs-stack")
    workers = [queues["default"], queues["default"], queues["train"]]
    stack.start(celery_stack.service_commands(AIRFLOW, workers), env, cwd=home)
    base = f"http://localhost:{port}"
    try:

        def check_alive():
            if stack.dead():
                raise celery_stack.StackError(f"{stack.dead()} exited:\n" + stack.log(stack.dead()[0])[-3000:])

        token, _ = wait_and_log_in(base, home, check_alive)
        yield {"base": base, "token": token, "stack": stack, "queues": queues}
    finally:
        stack.stop()
        _forget_queues(redis_url, suffix)


def _forget_queues(redis_url: str, suffix: str) -> None:
    """Removes the Redis keys Celery made for this test's queues."""
    import redis

    broker = redis.Redis.from_url(redis_url)
    for key in broker.scan_iter(f"*{suffix}*"):
        broker.delete(key)


def _tasks_run_by(worker_log: str, run_id: str) -> set[str]:
    """Task ids of `run_id` that a Celery worker's log says it executed."""
    executed = set()
    for line in worker_log.splitlines():
        if "Executing workload in Celery" in line and run_id in line:
            executed.update(re.findall(r"task_id='([^']+)'", line))
    return executed


def _mapped_instances(airflow: dict, run_id: str, task_id: str) -> list[dict]:
    url = f"{airflow['base']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/listMapped"
    return request(url, token=airflow["token"])[1]["task_instances"]


def test_train_runs_on_the_training_queue_worker_and_the_rest_on_the_default_workers(
    celery_airflow, serving_server, dag_settings, fashion_subset
):
    from tests.dags.test_training_dag import _serving_labels

    wait_for_dag(celery_airflow)
    before = _serving_labels(serving_server["config_file"]).get("stable", 0)
    runs = f"{celery_airflow['base']}/api/v2/dags/{DAG_ID}/dagRuns"
    # Live requests for the canary watch (deferred to the stack's triggerer) when a stable model serves.
    with Traffic(serving_server["grpc_target"], fashion_subset["t10k"][0].reshape(-1, 28, 28)):
        status, reply = request(
            runs,
            "POST",
            {"logical_date": None, "conf": {"force": True, "force_reason": "celery test"}},
            celery_airflow["token"],
        )
        assert status == 200, reply
        run_id = reply["dag_run_id"]
        state = wait_for_run(celery_airflow, run_id)
    stack = celery_airflow["stack"]
    instances = task_instances(celery_airflow, run_id)
    assert state == "success", {t: ti["state"] for t, ti in instances.items()}
    assert {ti["state"] for ti in instances.values()} == {"success"}

    queues = celery_airflow["queues"]
    assert instances["train"]["queue"] == queues["train"]
    assert {ti["queue"] for task, ti in instances.items() if task != "train"} == {queues["default"]}
    on_train_worker = _tasks_run_by(stack.log(f"worker-{queues['train']}"), run_id)
    on_default_workers = [
        _tasks_run_by(stack.log(f"worker-{name}"), run_id) for name in (queues["default"], f"{queues['default']}-2")
    ]
    assert on_train_worker == {"train"}
    assert set().union(*on_default_workers) == set(instances) - {"train"}
    parts = _mapped_instances(celery_airflow, run_id, "ingest_part")
    assert len(parts) == 2 and {ti["state"] for ti in parts} == {"success"}  # train and test, one part each

    stable = _serving_labels(serving_server["config_file"])["stable"]
    assert stable > before
    images = np.zeros((2, 28, 28), np.uint8)
    with TFServingClient(serving_server["grpc_target"], serving_server["rest_url"]) as client:
        answer = client.predict(dag_settings["pipeline"]["model_name"], {"images": images}, label="stable")
    assert answer.version == stable and len(answer["class_names"]) == 2
    assert not stack.dead()
