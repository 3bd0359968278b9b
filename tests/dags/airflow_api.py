"""Talking to a running Airflow's REST API in tests: requests, waiting for the DAG and for runs.

`airflow` below is a dict with the API's `base` URL and a bearer `token`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.support import wait_for

DAG_ID = "fashion_mnist_training"


def request(url: str, method: str = "GET", body: dict | None = None, token: str | None = None):
    """Returns (HTTP status, decoded JSON body) of one API call."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    call = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def log_in(base: str, password: str) -> str:
    """Returns an access token for the admin user."""
    status, reply = request(base + "/auth/token", "POST", {"username": "admin", "password": password})
    assert status in (200, 201), reply
    return reply["access_token"]


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
