"""A real `airflow standalone` (scheduler, API server, LocalExecutor): REST API and browser.

The metadata database is a fresh PostgreSQL database on the local server (SQLite locks
under the scheduler, the DAG processor and the API server writing at once). Runs after
the dag.test() lifecycle tests (file order), against the same serving server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from serving.launcher import free_port
from tests.dags.airflow_api import (
    DAG_ID,
    prepare_database,
    request,
    task_states,
    wait_and_log_in,
    wait_for_dag,
    wait_for_run,
)
from tests.dags.conftest import DAGS_FOLDER
from tests.support import REPO_ROOT, wait_for

ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def standalone(tmp_path_factory, dag_settings, serving_server, postgres_url):
    home = tmp_path_factory.mktemp("standalone-home")
    port = free_port()
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres_url,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    prepare_database(env, dag_settings["pool"])
    log = open(home / "standalone.log", "wb")  # noqa: SIM115  (open for the process's lifetime)
    process = subprocess.Popen(
        [str(venv_bin / "airflow"), "standalone"],
        env=env,
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://localhost:{port}"
    try:
        token, password = wait_and_log_in(base, home)
        yield {"base": base, "token": token, "password": password, "home": home}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_scheduler_runs_the_dag_triggered_through_the_rest_api(standalone, serving_server):
    from tests.dags.test_training_dag import _serving_labels

    wait_for_dag(standalone)
    runs = f"{standalone['base']}/api/v2/dags/{DAG_ID}/dagRuns"
    status, reply = request(runs, "POST", {"logical_date": None, "conf": {"epochs": -1}}, standalone["token"])
    assert status in (400, 422) and "epochs" in json.dumps(reply)  # refused before a run exists

    before = _serving_labels(serving_server["config_file"]).get("stable", 0)
    status, reply = request(runs, "POST", {"logical_date": None, "conf": {"force": True}}, standalone["token"])
    assert status == 200, reply
    state = wait_for_run(standalone, reply["dag_run_id"])
    assert state == "success", task_states(standalone, reply["dag_run_id"])
    assert set(task_states(standalone, reply["dag_run_id"]).values()) == {"success"}
    assert _serving_labels(serving_server["config_file"])["stable"] > before


def test_browser_triggers_the_dag_through_the_params_form(standalone, serving_server):
    from playwright import sync_api as playwright_api  # make test installs playwright and chromium

    chromium = Path("/usr/bin/chromium")
    assert chromium.exists(), "make test installs Debian's chromium"
    wait_for_dag(standalone)
    ARTIFACTS.mkdir(exist_ok=True)
    runs_url = f"{standalone['base']}/api/v2/dags/{DAG_ID}/dagRuns?order_by=-run_after&limit=1"
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(standalone["base"] + "/", wait_until="load")  # redirects to the login form
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(standalone["password"])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/" not in url, timeout=60_000)
            page.goto(f"{standalone['base']}/dags/{DAG_ID}", wait_until="load")
            page.get_by_role("button", name="Trigger").first.click()
            page.get_by_text("Run Parameters").first.wait_for(timeout=60_000)
            page.get_by_text("Maximum number of training epochs (early stopping may end sooner)").wait_for()
            page.get_by_role("spinbutton").first.fill("1")  # Epochs, the first number field
            page.screenshot(path=str(ARTIFACTS / "airflow-trigger-form.png"), full_page=True)
            page.get_by_role("button", name="Trigger").last.click()
            page.wait_for_timeout(3000)
        finally:
            page.screenshot(path=str(ARTIFACTS / "airflow-after-trigger.png"), full_page=True)
            browser.close()
    latest = request(runs_url, token=standalone["token"])[1]["dag_runs"][0]
    assert latest["run_type"] == "manual"
    state = wait_for_run(standalone, latest["dag_run_id"])
    assert state == "success", task_states(standalone, latest["dag_run_id"])


def test_the_api_and_the_ui_refuse_anonymous_and_wrong_password_requests(standalone):
    base = standalone["base"]
    status, _ = request(f"{base}/api/v2/dags/{DAG_ID}")  # no token
    assert status in (401, 403)
    status, _ = request(f"{base}/api/v2/dags/{DAG_ID}", token="not-a-token")
    assert status in (401, 403)
    status, _ = request(base + "/auth/token", "POST", {"username": "admin", "password": "wrong-password"})
    assert status in (401, 403)
    status, reply = request(f"{base}/api/v2/dags/{DAG_ID}", token=standalone["token"])
    assert status == 200 and reply["dag_id"] == DAG_ID  # the same request with a valid token


def _task_process_pids(ti_id: str) -> list[int]:
    """The process running a task instance (its title is 'airflow worker -- <ti id>'), not its supervisor."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ti_id in title and "LocalExecutor" not in title and "worker" in title:
            pids.append(int(proc.name))
    return pids


def test_a_killed_task_process_is_retried_and_the_run_succeeds(standalone, serving_server):
    """Reliability: SIGKILL the running `train` task's process; Airflow retries it and the run succeeds."""
    wait_for_dag(standalone)
    runs = f"{standalone['base']}/api/v2/dags/{DAG_ID}/dagRuns"
    status, reply = request(
        runs, "POST", {"logical_date": None, "conf": {"force": True, "epochs": 4}}, standalone["token"]
    )
    assert status == 200, reply
    run_id = reply["dag_run_id"]
    ti_url = f"{runs}/{run_id}/taskInstances/train"

    def running_train_process():
        ti = request(ti_url, token=standalone["token"])[1]
        return _task_process_pids(ti["id"]) if ti.get("state") == "running" else None

    pids = wait_for(running_train_process, 600, "the train task's process", interval=0.5)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    state = wait_for_run(standalone, run_id)
    assert state == "success", task_states(standalone, run_id)
    train = request(ti_url, token=standalone["token"])[1]
    assert train["try_number"] == 2  # the killed try, then the retry that finished
