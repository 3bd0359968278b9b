"""Airflow on the CeleryExecutor on one machine, as deploy/docker-compose.yml runs it on several.

PostgreSQL holds the metadata, Redis carries the Celery messages, and each queue gets its
own Celery worker: `default` for every task but training, the training queue of
`dags/settings.yaml` (`gpu`) for `train`. The same services, one process each:
api-server, scheduler, dag-processor, triggerer and the workers. Used by
`make airflow EXECUTOR=celery` (deploy/local.py) and by the integration test
tests/dags/test_celery_executor.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

CORE_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
DEFAULT_QUEUE = "default"
FIRST_LOG_SERVER_PORT = 8793  # Airflow's worker log server port; each worker here takes the next one.


class StackError(RuntimeError):
    """A service of the stack is missing or died."""


def require_service(url: str, what: str) -> None:
    """Checks that a TCP service answers at the host and port of `url`.

    Raises:
        StackError: naming the service and address that did not answer.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        with socket.create_connection((host, port), timeout=3):
            return
    except OSError as err:
        message = f"{what} is not reachable at {host}:{port} ({err}); start it or point the setting elsewhere"
        raise StackError(message) from err


def ensure_database(admin_dsn: str, name: str) -> None:
    """Creates the PostgreSQL database `name` if it does not exist.

    Args:
        admin_dsn: libpq connection string of a role that may create databases.
        name: Database name (letters, digits, underscores).
    """
    import psycopg2

    if not name.replace("_", "").isalnum():
        raise StackError(f"database name {name!r} must be letters, digits and underscores")
    connection = psycopg2.connect(admin_dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {name}")
    finally:
        connection.close()


def celery_env(base: dict[str, str], *, database_url: str, broker_url: str, jwt_secret: str) -> dict[str, str]:
    """Environment for every process of the stack: CeleryExecutor, PostgreSQL and Redis.

    Args:
        base: The Airflow environment (AIRFLOW_HOME, DAG folder, API port...).
        database_url: SQLAlchemy URL of the metadata database (postgresql+psycopg2://...).
        broker_url: Celery broker URL (redis://host:port/db).
        jwt_secret: Shared secret of the API server and the workers' task tokens.
    """
    port = base.get("AIRFLOW__API__PORT", "8080")
    return {
        **base,
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database_url,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": base.get("AIRFLOW__OPERATORS__DEFAULT_QUEUE", DEFAULT_QUEUE),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
        "AIRFLOW__API__BASE_URL": base.get("AIRFLOW__API__BASE_URL", f"http://localhost:{port}"),
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
    }


def service_commands(airflow: str, queues: list[str]) -> dict[str, tuple[list[str], dict[str, str]]]:
    """The stack's processes: name -> (command, extra environment).

    Args:
        airflow: Path of the `airflow` executable.
        queues: One Celery worker per entry, in this order; a queue named twice gets two
            workers (`worker-<queue>`, `worker-<queue>-2`), which share its tasks.
    """
    services = {name: ([airflow, name], {}) for name in CORE_SERVICES}
    for index, queue in enumerate(queues):
        number = queues[: index + 1].count(queue)
        name = queue if number == 1 else f"{queue}-{number}"
        services[f"worker-{name}"] = (
            [airflow, "celery", "worker", "--queues", queue, "--celery-hostname", f"{name}@%h"],
            # Workers on one machine each serve their task logs on a port of their own.
            {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(FIRST_LOG_SERVER_PORT + index)},
        )
    return services


@dataclasses.dataclass
class Stack:
    """The running processes of the stack, each in its own process group, logging to `log_dir`."""

    log_dir: Path
    processes: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)

    def start(self, services: dict[str, tuple[list[str], dict[str, str]]], env: dict[str, str], cwd: Path) -> None:
        """Starts every service in the background."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name, (command, extra) in services.items():
            with open(self.log_dir / f"{name}.log", "ab") as log:
                self.processes[name] = subprocess.Popen(
                    command,
                    env={**env, **extra},
                    cwd=cwd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )

    def dead(self) -> list[str]:
        """Names of the services that have exited."""
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def log(self, name: str) -> str:
        """The log a service wrote so far."""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM to every service's process group, SIGKILL to those still alive after `timeout_s`."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Task processes a worker started live in the worker's group; make sure none is left.
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
