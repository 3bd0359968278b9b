"""A real `airflow standalone` (scheduler, API server, LocalExecutor): REST API and browser.

The metadata database is a fresh PostgreSQL database on the local server (SQLite locks
under the scheduler, the DAG processor and the API server writing at once). Runs after
the dag.test() lifecycle tests (file order), against the same serving server.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.launcher import free_port
from tests.dags.airflow_api import (
    DAG_ID,
    fetch_text,
    prepare_database,
    request,
    task_instances,
    task_states,
    wait_and_log_in,
    wait_for_dag,
    wait_for_run,
)
from tests.dags.conftest import with_far_schedules, write_dags
from tests.support import REPO_ROOT, Traffic, table_rows, wait_for, write_table

ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def standalone(tmp_path_factory, dag_settings, serving_server, postgres_url):
    home = tmp_path_factory.mktemp("standalone-home")
    # This deployment asks a person before `stable` moves (dag.test cannot answer Airflow's approval form).
    dags_folder = home / "dags"
    # Two models in one deployment: the Fashion-MNIST classifier and a loans table model beside it.
    loans = write_table(home / "data" / "loans.csv", table_rows("binary", 300))
    models = [
        {"name": "fashion_mnist"},
        {
            "name": "loans",
            "approval_required": False,
            "pipeline": {"data_source": f"csv:{loans}", "label": "approved?", "canary_watch_seconds": 0, "epochs": 4},
        },
    ]
    settings = with_far_schedules(
        {**dag_settings, "approval_required": True, "approval_timeout_minutes": 15, "models": models}
    )
    write_dags(dags_folder, settings)
    port = free_port()
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
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
    base = f"http://localhost:{port}"
    airflow = {"base": base, "home": home, "env": env, "started": time.time(), "schedule": settings["schedule"]}
    airflow["process"] = _start_standalone(env, home)
    try:
        airflow["token"], airflow["password"] = wait_and_log_in(base, home)
        yield airflow
    finally:
        _stop_standalone(airflow["process"])


def _start_standalone(env: dict[str, str], home: Path) -> subprocess.Popen:
    with open(home / "standalone.log", "ab") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "standalone"],
            env=env,
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop_standalone(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def _run(airflow: dict, run_id: str) -> dict:
    return request(f"{airflow['base']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", token=airflow["token"])[1]


def _task_log_problems(home: Path, run_id: str) -> dict[str, list[str]]:
    """Error-level lines (shown red in the UI) of each task log of a run, mapped tasks' included, by task."""
    problems = {}
    run_logs = home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    for log_file in run_logs.glob("task_id=*/**/attempt=*.log"):
        lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
        bad = [
            f"{line.get('logger')}: {line.get('event')}" for line in lines if line.get("level") in ("error", "critical")
        ]
        if bad:
            problems[str(log_file.parent.relative_to(run_logs))] = bad
    return problems


def _trigger_forced_run(airflow: dict, reason: str) -> str:
    runs = f"{airflow['base']}/api/v2/dags/{DAG_ID}/dagRuns"
    conf = {"force": True, "force_reason": reason}
    status, reply = request(runs, "POST", {"logical_date": None, "conf": conf}, airflow["token"])
    assert status == 200, reply
    return reply["dag_run_id"]


def _approval_url(airflow: dict, run_id: str) -> str:
    return f"{airflow['base']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"


def _wait_for_approval(airflow: dict, run_id: str) -> dict:
    """Waits until the run's `approve` task asks for a decision; returns its request (subject, body...)."""

    def asking():
        if task_states(airflow, run_id).get("watch_canary") in ("skipped", "failed", "upstream_failed"):
            raise AssertionError(f"the canary watch did not pass: {task_states(airflow, run_id)}")
        status, detail = request(_approval_url(airflow, run_id), token=airflow["token"])
        return detail if status == 200 and task_states(airflow, run_id)["approve"] == "awaiting_input" else None

    return wait_for(asking, 900, "the approval request", interval=3)


def _pause_seen_by_scheduler(airflow: dict, run_id: str, try_number: int) -> bool:
    """Whether the scheduler has processed the executor's event for the paused `approve` try.

    Its standalone log says so with a "TaskInstance Finished" line in state awaiting_input.
    """
    finished = f"TaskInstance Finished: dag_id={DAG_ID}, task_id=approve, run_id={run_id},"
    return any(
        finished in line and "state=awaiting_input," in line and f"try_number={try_number}," in line
        for line in (airflow["home"] / "standalone.log").read_text(errors="replace").splitlines()
    )


def _decide(airflow: dict, run_id: str, option: str) -> str:
    """Answers the approval form as the logged-in admin, waits for the run to end; returns its state.

    The answer waits until the scheduler has processed the executor's event for the paused try.
    Airflow 3.3 races when the answer comes first (apache/airflow#72716; seen 11 s after the pause
    on a busy 2-core machine): the stale event finds the resumed try running, takes it for a task
    changed externally and retries it. The resumed try's report is then refused, an error line in
    its log, and the new try asks again. Should that still happen, this answers once per try.
    """
    answered: set[int] = set()

    def ended():
        state = _run(airflow, run_id)["state"]
        if state in ("success", "failed"):
            return state
        approve = task_instances(airflow, run_id)["approve"]
        try_number = approve["try_number"]
        if (
            approve["state"] == "awaiting_input"
            and try_number not in answered
            and _pause_seen_by_scheduler(airflow, run_id, try_number)
        ):
            body = {"chosen_options": [option]}
            if request(_approval_url(airflow, run_id), "PATCH", body, airflow["token"])[0] == 200:
                answered.add(try_number)
        return None

    return wait_for(ended, 900, f"run {run_id} to end after the answer {option!r}", interval=3)


def _lineage_records(dag_settings: dict, event: str) -> list[dict]:
    path = Path(dag_settings["pipeline"]["workdir"]) / "lineage.jsonl"
    return [record for line in path.read_text().splitlines() if (record := json.loads(line))["event"] == event]


@pytest.fixture(scope="module")
def live_images(fashion_subset):
    return fashion_subset["t10k"][0].reshape(-1, 28, 28)


def test_scheduler_runs_the_dag_triggered_through_the_rest_api(standalone, serving_server, dag_settings, live_images):
    from tests.dags.test_training_dag import _serving_labels

    wait_for_dag(standalone)
    runs = f"{standalone['base']}/api/v2/dags/{DAG_ID}/dagRuns"
    for conf, named in (({"epochs": -1}, "epochs"), ({"epochs": 0}, "epochs"), ({"learning_rate": 5}, "learning_rate")):
        status, reply = request(runs, "POST", {"logical_date": None, "conf": conf}, standalone["token"])
        assert status in (400, 422) and named in json.dumps(reply), reply  # refused (not clamped) before a run

    before = _serving_labels(serving_server["config_file"]).get("stable", 0)
    # Live traffic for the canary watch (run by the triggerer), then a person approves in Airflow.
    with Traffic(serving_server["grpc_target"], live_images):
        run_id = _trigger_forced_run(standalone, "REST test")
        approval = _wait_for_approval(standalone, run_id)
    assert approval["subject"].startswith("Promote fashion_mnist version ")
    assert (
        "| test accuracy |" in approval["body"] and "| class | candidate recall | stable recall |" in approval["body"]
    )
    # Run alone, this deployment has nothing stable yet: no canary to watch (the reject test watches one).
    watched = "**Canary watch on live traffic**: ok: " if before else "**Canary watch**: nothing stable to compare"
    assert watched in approval["body"], approval["body"]
    assert approval["defaults"] == ["Reject"]  # no answer in time: rejected
    state = _decide(standalone, run_id, "Approve")
    assert state == "success", task_states(standalone, run_id)
    assert set(task_states(standalone, run_id).values()) == {"success"}
    stable = _serving_labels(serving_server["config_file"])["stable"]
    assert stable > before
    decision = _lineage_records(dag_settings, "approval")[-1]
    assert (decision["version"], decision["approved"], decision["by"]) == (stable, True, "admin")
    # The outcome at a glance: the scheduler's listener (the project's plugin) wrote the run's note.
    assert wait_for(lambda: _run(standalone, run_id)["note"], 30, "the run note").startswith(
        f"promoted version {stable} to stable (test accuracy 0."
    )
    # A healthy run: no red (error-level) line in any task's log, TensorFlow's start-up included.
    assert _task_log_problems(standalone["home"], run_id) == {}
    mapped = (standalone["home"] / "logs").rglob(f"run_id={run_id}/task_id=ingest_part/map_index=*/attempt=1.log")
    assert any(mapped)  # the mapped tasks' logs are among those read
    train_log = next((standalone["home"] / "logs").rglob(f"run_id={run_id}/task_id=train/attempt=1.log")).read_text()
    assert "tensorflow.native" in train_log  # its start-up lines are there, at their own (lower) level
    # The run report and the registry, served by the plugin behind Airflow's login.
    report_url = f"{standalone['base']}/mlops/runs/{DAG_ID}/{run_id}"
    status, page = fetch_text(report_url, standalone["token"])
    assert status == 200 and "Confusion matrix" in page and f"promoted version {stable}" in page
    assert fetch_text(report_url)[0] in (401, 403)
    status, page = fetch_text(f"{standalone['base']}/mlops/registry/{DAG_ID}", standalone["token"])
    assert status == 200 and f"<td>{stable}</td><td>stable, canary</td>" in page


def test_a_rejected_candidate_is_withdrawn_and_stable_stays(standalone, serving_server, dag_settings, live_images):
    from tests.dags.test_training_dag import _serving_labels

    wait_for_dag(standalone)
    before = _serving_labels(serving_server["config_file"])["stable"]
    with Traffic(serving_server["grpc_target"], live_images):
        run_id = _trigger_forced_run(standalone, "reject test")
        approval = _wait_for_approval(standalone, run_id)
    # The watch ran in the triggerer on live traffic and passed before the person was asked.
    assert "**Canary watch on live traffic**: ok: " in approval["body"], approval["body"]
    assert _decide(standalone, run_id, "Reject") == "success"  # a decision, not a failure
    states = task_states(standalone, run_id)
    assert (states["approve"], states["mark_stable"], states["report"]) == ("success", "skipped", "success")
    assert _serving_labels(serving_server["config_file"]) == {"stable": before, "canary": before}
    rejected = _lineage_records(dag_settings, "canary_rejected")[-1]
    assert rejected["by"] == "admin" and rejected["previous"] > before and rejected["labels"]["canary"] == before
    assert _lineage_records(dag_settings, "canary_passed")[-1]["version"] == rejected["previous"]
    note = wait_for(lambda: _run(standalone, run_id)["note"], 30, "the run note")
    assert note == f"version {rejected['previous']} not approved (admin): canary withdrawn"


def _drift_run(airflow: dict) -> dict:
    """Triggers the drift DAG through the REST API; returns the finished run with its note."""
    base, token = airflow["base"], airflow["token"]
    wait_for(lambda: request(f"{base}/api/v2/dags/fashion_mnist_drift", token=token)[0] == 200, 240, "the drift DAG")
    status, reply = request(f"{base}/api/v2/dags/fashion_mnist_drift/dagRuns", "POST", {"logical_date": None}, token)
    assert status == 200, reply
    url = f"{base}/api/v2/dags/fashion_mnist_drift/dagRuns/{reply['dag_run_id']}"

    def finished():
        run = request(url, token=token)[1]
        return run if run["state"] in ("success", "failed") and run["note"] else None

    return wait_for(finished, 300, "the drift run and its note")


def test_drift_in_served_requests_starts_a_training_run(standalone, serving_server, fashion_subset):
    """Inverted images through the real server -> request logs -> drift DAG -> asset event -> training run.

    Runs after the REST test, which promoted the model that serves here (file order).
    """
    from serving.client import TFServingClient

    wait_for_dag(standalone)
    logs = serving_server["config_file"].parent / "request_logs"
    time.sleep(2)  # a file is published one rotation (1 s) after its last record
    before = _drift_run(standalone)  # reads what earlier tests' smoke tests sent: real test images
    assert before["state"] == "success" and before["note"].startswith(("no drift in ", "not judged: ")), before
    read = set(logs.glob("fashion_mnist.*.tfrecord"))
    with TFServingClient(serving_server["grpc_target"], serving_server["rest_url"]) as client:  # stable: REST test
        images = fashion_subset["t10k"][0][:120].reshape(120, 28, 28)
        for start in range(0, 120, 40):
            client.predict("fashion_mnist", {"images": 255 - images[start : start + 40]}, label="stable")
    wait_for(lambda: set(logs.glob("fashion_mnist.*.tfrecord")) - read, 30, "a new published request log")
    time.sleep(2)
    drifted = _drift_run(standalone)
    assert drifted["state"] == "success"
    assert drifted["note"].startswith("drift in 120 requests: pixel mean"), drifted["note"]
    # The drift asset's event starts the training DAG: no person, no schedule slot.
    runs_url = f"{standalone['base']}/api/v2/dags/{DAG_ID}/dagRuns?order_by=-run_after&limit=5"

    def asset_triggered_run():
        runs = request(runs_url, token=standalone["token"])[1]["dag_runs"]
        return next((run for run in runs if run["run_type"] == "asset_triggered"), None)

    retraining = wait_for(asset_triggered_run, 120, "a training run started by the drift event")
    assert wait_for_run(standalone, retraining["dag_run_id"]) == "success"
    assert wait_for(lambda: _run(standalone, retraining["dag_run_id"])["note"], 30, "its note")


def test_a_pipeline_error_fails_its_task_with_the_message_and_no_traceback(standalone):
    wait_for_dag(standalone)
    runs = f"{standalone['base']}/api/v2/dags/{DAG_ID}/dagRuns"
    conf = {"data_source": "idx:/no/such/folder", "force": True, "force_reason": "failure test"}
    status, reply = request(runs, "POST", {"logical_date": None, "conf": conf}, standalone["token"])
    assert status == 200, reply
    run_id = reply["dag_run_id"]
    assert wait_for_run(standalone, run_id) == "failed"
    ingest = task_instances(standalone, run_id)["ingest_plan"]
    assert (ingest["state"], ingest["try_number"]) == ("failed", 1)  # settings allow a retry; data errors get none
    problems = _task_log_problems(standalone["home"], run_id)["task_id=ingest_plan"]
    assert any("IDX data folder /no/such/folder does not exist" in line for line in problems)
    assert any("attempt 1, not retried" in line for line in problems)  # the truthful failure line
    log_file = next((standalone["home"] / "logs").rglob(f"run_id={run_id}/task_id=ingest_plan/attempt=1.log"))
    details = [json.loads(line).get("error_detail") for line in log_file.read_text().splitlines()]
    errors = [error for detail in details if detail for error in detail]
    assert [error["exc_type"] for error in errors] == ["AirflowFailException"]  # the pipeline's traceback is not there
    assert wait_for(lambda: _run(standalone, run_id)["note"], 30, "the run note").startswith("failed at ingest_plan")


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
            page.get_by_text(">= 1 and <= 500; e.g. 12").wait_for()  # the range and an example
            assert page.get_by_role("button", name="Trigger").last.is_enabled()  # no field wrongly "required"
            runs_before = request(runs_url, token=standalone["token"])[1]["total_entries"]
            epochs = page.get_by_role("spinbutton").first  # Epochs, the first number field
            epochs.fill("0")
            epochs.press("Tab")
            page.wait_for_timeout(2000)  # the form's own checks run as the user moves on
            assert epochs.input_value() == "0"  # not clamped to 1 behind the user's back
            page.get_by_role("button", name="Trigger").last.click()
            page.get_by_text("epochs").last.wait_for()
            refusal = page.get_by_text("less than the minimum of 1").first
            refusal.wait_for(timeout=30_000)  # refused, with the reason
            refusal.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "airflow-trigger-form-refuses-epochs-0.png"), full_page=True)
            assert request(runs_url, token=standalone["token"])[1]["total_entries"] == runs_before
            epochs.fill("1")
            page.screenshot(path=str(ARTIFACTS / "airflow-trigger-form.png"), full_page=True)
            # The refusal's toast covers the button; a click event still reaches it.
            page.get_by_role("button", name="Trigger").last.dispatch_event("click")
            page.wait_for_timeout(3000)
            page.screenshot(path=str(ARTIFACTS / "airflow-after-trigger.png"), full_page=True)
            latest = request(runs_url, token=standalone["token"])[1]["dag_runs"][0]
            assert latest["run_type"] == "manual"
            run_id = latest["dag_run_id"]
            state = wait_for_run(standalone, run_id)
            assert state == "success", task_states(standalone, run_id)
            # The outcome on the run page (the run's note), then its report in the "Run report" tab.
            note = wait_for(lambda: _run(standalone, run_id)["note"], 30, "the run note")
            assert note.startswith(("skipped: ", "promoted version ")), note  # trained before, or not
            page.goto(f"{standalone['base']}/dags/{DAG_ID}/runs/{run_id}", wait_until="load")
            page.get_by_text(note[:40]).first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "airflow-run-note.png"), full_page=True)
            page.get_by_text("Run report", exact=True).click()
            report = page.frame_locator("iframe").first
            report.get_by_text(note[:40]).first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "airflow-run-report-tab.png"), full_page=True)
            # The registry view: the deployment's models; a model's page lists its versions, labels and metrics.
            page.goto(f"{standalone['base']}/plugin/model_registry", wait_until="load")
            registry = page.frame_locator("iframe").first
            registry.get_by_text("loans", exact=True).first.wait_for(timeout=60_000)
            registry.get_by_text("fashion_mnist", exact=True).first.click()
            registry.get_by_text("published versions").first.wait_for(timeout=60_000)
            registry.get_by_text("stable, canary").first.wait_for()
            page.screenshot(path=str(ARTIFACTS / "airflow-model-registry.png"), full_page=True)
        finally:
            page.screenshot(path=str(ARTIFACTS / "airflow-browser-last.png"), full_page=True)
            browser.close()


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
        runs,
        "POST",
        {"logical_date": None, "conf": {"force": True, "force_reason": "kill test", "epochs": 4}},
        standalone["token"],
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


def test_a_restart_on_a_database_with_runs_starts_no_run_for_a_past_slot(standalone):
    """The DAG is scheduled nightly; Airflow's own cron timetable would start the last past slot at once."""
    wait_for_dag(standalone)
    runs_url = f"{standalone['base']}/api/v2/dags/{DAG_ID}/dagRuns"
    quick = {"logical_date": None, "conf": {"data_source": "idx:/no/such/folder"}}  # a run that ends fast
    run_id = request(runs_url, "POST", quick, standalone["token"])[1]["dag_run_id"]
    wait_for_run(standalone, run_id)
    _stop_standalone(standalone["process"])  # as after `make demo`: the database holds runs

    def api_gone() -> bool:
        try:
            request(standalone["base"] + "/api/v2/monitor/health")
        except OSError:
            return True
        return False

    wait_for(api_gone, 60, "the old API server to close its port")  # its workers outlive the group leader briefly
    standalone["process"] = _start_standalone(standalone["env"], standalone["home"])
    standalone["token"], _ = wait_and_log_in(standalone["base"], standalone["home"])
    wait_for_dag(standalone)
    time.sleep(20)  # the scheduler's loop runs every second: a due run would have been created by now
    runs = request(runs_url, token=standalone["token"])[1]["dag_runs"]
    assert [run["dag_run_id"] for run in runs if run["run_type"] == "scheduled"] == []
    dag = request(f"{standalone['base']}/api/v2/dags/{DAG_ID}", token=standalone["token"])[1]
    next_run = datetime.datetime.fromisoformat(dag["next_dagrun_run_after"])
    minute, hour = (int(field) for field in standalone["schedule"].split()[:2])
    assert next_run > datetime.datetime.now(datetime.UTC) and (next_run.hour, next_run.minute) == (hour, minute)
    assert dag["timetable_summary"].endswith(
        f"{standalone['schedule']} (upcoming slots only)"
    )  # "Asset or ...": drift too


def test_a_second_model_trains_and_serves_beside_the_first_without_touching_it(
    standalone, serving_server, dag_settings
):
    """The loans model's own DAG, asset, registry page and serving entry; the Fashion-MNIST model's labels stay."""
    import numpy as np

    from pipeline.dag_settings import load_settings
    from pipeline.release.promotion import read_state
    from serving.client import TFServingClient

    settings = load_settings(standalone["home"] / "dags" / "settings.yaml", REPO_ROOT)
    fashion, loans = settings.model("fashion_mnist").base_config(), settings.model("loans").base_config()
    before = read_state(fashion)
    base, token = standalone["base"], standalone["token"]
    wait_for(lambda: request(f"{base}/api/v2/dags/loans_training", token=token)[0] == 200, 240, "the loans DAG")
    status, reply = request(f"{base}/api/v2/dags/loans_training/dagRuns", "POST", {"logical_date": None}, token)
    assert status == 200, reply
    url = f"{base}/api/v2/dags/loans_training/dagRuns/{reply['dag_run_id']}"
    run = wait_for(lambda: (r := request(url, token=token)[1])["state"] in ("success", "failed") and r, 900, "loans")
    assert run["state"] == "success", run
    note = wait_for(lambda: request(url, token=token)[1].get("note"), 60, "the run's note")
    assert note.startswith("promoted version 1 to stable (test auc 0.")
    assert read_state(loans).stable == 1 and read_state(fashion) == before  # the other model is as it was
    config_text = serving_server["config_file"].read_text()
    assert 'name: "loans"' in config_text and 'name: "fashion_mnist"' in config_text
    rows = {
        "annual_income": np.array([52000.0], np.float32),
        "debt_ratio": np.array([0.2], np.float32),
        "state": np.array(["WA"], object),
    }
    with TFServingClient(serving_server["grpc_target"], serving_server["rest_url"]) as client:
        assert client.predict("loans", rows, label="stable").version == 1
    status, index = fetch_text(f"{base}/mlops/registry", token)
    assert (
        status == 200
        and "/mlops/registry/loans_training" in index
        and "/mlops/registry/fashion_mnist_training" in index
    )
    status, page = fetch_text(f"{base}/mlops/registry/loans_training", token)
    assert status == 200 and "<th>test auc</th>" in page and "<td>1</td><td>stable, canary</td>" in page
    status, report = fetch_text(f"{base}/mlops/runs/loans_training/{reply['dag_run_id']}", token)
    assert status == 200 and "binary" in report and "Metrics (binary, test split)" in report
