"""Talking to a running Airflow's REST API in tests: requests, waiting for the DAG and for runs.

`airflow` below is a dict with the API's `base` URL and a bearer `token`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.support import wait_for

AIRFLOW = str(Path(sys.executable).parent / "airflow")

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


def fetch_text(url: str, token: str | None = None) -> tuple[int, str]:
    """Returns (HTTP status, body text) of a GET, e.g. a page the project's plugin serves."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def prepare_database(env: dict[str, str], pool: str) -> None:
    """Migrates the metadata DB that `env` names and creates the training pool."""
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([AIRFLOW, "pools", "set", pool, "1", "GPU training"], env=env, check=True, capture_output=True)


def wait_and_log_in(base: str, home: Path, check_alive: Callable[[], None] = lambda: None) -> tuple[str, str]:
    """Waits for the API server and its generated admin password; returns (token, password).

    `check_alive` raises when a process the API needs has died, so the wait fails at once.
    """

    def healthy():
        check_alive()
        return request(base + "/api/v2/monitor/health")[0] == 200

    wait_for(healthy, 240, "the API server")
    passwords = home / "simple_auth_manager_passwords.json.generated"
    wait_for(passwords.exists, 60, "the generated admin password")
    password = json.loads(passwords.read_text())["admin"]
    return log_in(base, password), password


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
