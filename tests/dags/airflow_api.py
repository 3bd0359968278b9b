"""Talking to a running Airflow's REST API in tests: waiting for the DAG and for runs.

The generic helpers (requests, logging in, the metadata DB) are `deploy.airflow_api`'s.
`airflow` below is a dict with the API's `base` URL and a bearer `token`.
"""

from __future__ import annotations

from deploy.airflow_api import AIRFLOW, fetch_text, log_in, prepare_database, request, wait_and_log_in
from tests.support import wait_for

__all__ = ["AIRFLOW", "fetch_text", "log_in", "prepare_database", "request", "wait_and_log_in"]

DAG_ID = "fashion_mnist_training"


def wait_for_dag(airflow: dict):
    url = f"{airflow['base']}/api/v2/dags/{DAG_ID}"
    return wait_for(lambda: request(url, token=airflow["token"])[0] == 200, 240, "the DAG to be parsed")


def wait_for_run(airflow: dict, run_id: str, timeout: float = 900) -> str:
    """Waits until the run ends; returns 'success' or 'failed'."""
    url = f"{airflow['base']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"

    def finished():
        state = request(url, token=airflow["token"])[1]["state"]
        return state if state in ("success", "failed") else None

    return wait_for(finished, timeout, f"run {run_id}", interval=3)


def task_instances(airflow: dict, run_id: str) -> dict[str, dict]:
    """The run's task instances by task id."""
    url = f"{airflow['base']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
    return {ti["task_id"]: ti for ti in request(url, token=airflow["token"])[1]["task_instances"]}


def task_states(airflow: dict, run_id: str) -> dict[str, str]:
    return {task_id: ti["state"] for task_id, ti in task_instances(airflow, run_id).items()}
