"""Talking to a running Airflow's REST API: requests, logging in, preparing the metadata DB.

Used by the tests of the DAGs (tests/dags) and by the benches that run a real Airflow stack.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

AIRFLOW = str(Path(sys.executable).parent / "airflow")


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


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Polls `condition` until it returns something truthy, which is returned.

    An OSError (a server not listening yet) counts as not yet.

    Raises:
        TimeoutError: naming `what` after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


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

    wait_until(healthy, 240, "the API server")
    passwords = home / "simple_auth_manager_passwords.json.generated"
    wait_until(passwords.exists, 60, "the generated admin password")
    password = json.loads(passwords.read_text())["admin"]
    return log_in(base, password), password


def log_in(base: str, password: str) -> str:
    """Returns an access token for the admin user.

    Raises:
        RuntimeError: if the API refuses the password.
    """
    status, reply = request(base + "/auth/token", "POST", {"username": "admin", "password": password})
    if status not in (200, 201):
        raise RuntimeError(f"logging in to {base} failed: HTTP {status} {reply}")
    return reply["access_token"]
