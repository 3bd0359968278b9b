"""The training and rollback DAGs end to end with dag.test() on a small subset, against a real serving server."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import trigger_form_fields
from pipeline.runner import STEP_NAMES
from serving.client import TFServingClient
from tests.support import REPO_ROOT, Traffic

DOWNSTREAM_OF_CHECK = list(STEP_NAMES[STEP_NAMES.index("train") :])


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _serving_labels(config_file, model: str = "fashion_mnist") -> dict[str, int]:
    """The version labels of one model in the serving config (other models may share the file)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    parsed = text_format.Parse(config_file.read_text(), model_server_config_pb2.ModelServerConfig())
    return {k: v for m in parsed.model_config_list.config if m.name == model for k, v in m.version_labels.items()}


def _lineage(dag_settings) -> list[dict]:
    path = f"{dag_settings['pipeline']['workdir']}/lineage.jsonl"
    return [json.loads(line) for line in open(path)]


def _served_version(serving_server, label: str, images) -> int:
    with TFServingClient(serving_server["grpc_target"], serving_server["rest_url"]) as client:
        result = client.predict("fashion_mnist", {"images": images}, label=label)
        rest = client.predict("fashion_mnist", {"images": images}, label=label, protocol="rest")
        assert rest["class_ids"].tolist() == result["class_ids"].tolist()
        return result.version


def _asset_event_extras() -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "fashion_mnist_stable_model")
            .order_by(AssetEvent.timestamp)
            .all()
        )
        return [dict(row.extra) for row in rows]


def _xcom(run, task_id: str, key: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(run_id=run.run_id, task_id=task_id, key=key).one()
        return XComModel.deserialize_value(row)


def _note(run) -> str | None:
    """The DAG run's note, as the run page shows it."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(DagRun).filter_by(dag_id=run.dag_id, run_id=run.run_id).one().note


@pytest.fixture(scope="module")
def run_conf(dag_bag):
    """Builds a full run conf: the defaults plus overrides (dag.test keeps params between runs)."""
    defaults = {name: dag_bag.get_dag("fashion_mnist_training").params[name] for name in trigger_form_fields()}

    def make(**overrides):
        return {**defaults, **overrides}

    return make


@pytest.fixture(scope="module")
def images(fashion_subset):
    return fashion_subset["t10k"][0][:8]


@pytest.fixture(scope="module")
def first_run(dag_bag, run_conf):
    """Phase 1: the first run trains, gates, exports, validates and promotes version 1."""
    return dag_bag.get_dag("fashion_mnist_training").test(run_conf=run_conf())


@pytest.fixture(scope="module")
def live_images(fashion_subset):
    return fashion_subset["t10k"][0].reshape(-1, 28, 28)


@pytest.fixture(scope="module")
def forced_run(first_run, dag_bag, run_conf, serving_server, live_images):
    """Phase 4: a forced run retrains, watches its canary on live traffic and promotes version 2."""
    with Traffic(serving_server["grpc_target"], live_images) as traffic:
        run = dag_bag.get_dag("fashion_mnist_training").test(run_conf=run_conf(force=True, force_reason="new labels"))
    return {"run": run, "traffic": traffic}


@pytest.fixture(scope="module")
def permuted_labels_run(forced_run, dag_bag, run_conf, serving_server, live_images, permuted_idx_dir):
    """Phase 5: new data whose labels are all shifted by one class; its model passes the gate, not the canary."""
    with Traffic(serving_server["grpc_target"], live_images) as traffic:
        run = dag_bag.get_dag("fashion_mnist_training").test(run_conf=run_conf(data_source=f"idx:{permuted_idx_dir}"))
    return {"run": run, "traffic": traffic}


@pytest.fixture(scope="module")
def dag_rollback(permuted_labels_run, dag_bag):
    """Phase 5: the rollback DAG puts version 1 back."""
    return dag_bag.get_dag("fashion_mnist_rollback").test(run_conf={"version": 1, "reason": "test rollback"})


def test_first_run_promotes_version_1(first_run, serving_server, images):
    assert set(_states(first_run).values()) == {"success"}, _states(first_run)
    assert _serving_labels(serving_server["config_file"]) == {"stable": 1, "canary": 1}
    assert _served_version(serving_server, "stable", images) == 1


def test_a_run_ends_with_its_outcome_as_the_run_note_and_a_report_page(first_run):
    outcome = _xcom(first_run, "report", "return_value")
    assert outcome["outcome"] == "promoted" and outcome["version"] == 1
    note = _note(first_run)
    assert note == outcome["summary"]
    assert note.startswith("promoted version 1 to stable (test accuracy 0.") and note.endswith("was nothing)")
    page = Path(outcome["report_path"]).read_text()
    for section in (
        "Per class",
        "baseline: none",
        "Gate on accuracy: blessed",
        "Confusion matrix",
        "Training curves",
        "Model card",
    ):
        assert section in page, section
    assert page.count("data:image/png;base64,") == 2  # the confusion matrix and the curves, inline
    assert _asset_event_extras()[0]["outcome"] == "promoted"


def test_the_drift_dag_judges_the_smoke_tests_requests_and_does_not_ask_for_retraining(first_run, dag_bag):
    # The promotion turned request logging on; the smoke test's real test images were logged.
    run = dag_bag.get_dag("fashion_mnist_drift").test()
    states = _states(run)
    assert states == {"check_drift": "success", "request_retraining": "skipped"}, states
    assert _note(run).startswith(("no drift in ", "not judged: ")), _note(run)


def test_an_identical_run_short_circuits_after_validation(first_run, dag_bag, run_conf):
    second = dag_bag.get_dag("fashion_mnist_training").test(run_conf=run_conf())
    states = _states(second)
    assert states["ingest"] == states["validate"] == states["check_changes"] == "success"
    assert {states[t] for t in DOWNSTREAM_OF_CHECK} == {"skipped"}
    assert "equal those of stable version 1" in _xcom(second, "check_changes", "stop_reason")
    assert states["report"] == "success"  # not skipped with the rest: it says why the run stopped
    assert _note(second).startswith("skipped: ") and "equal those of stable version 1" in _note(second)


def test_the_gate_stops_a_weak_candidate_and_serving_is_unchanged(first_run, dag_bag, run_conf, serving_server):
    strict = dag_bag.get_dag("fashion_mnist_training").test(run_conf=run_conf(min_accuracy=0.999))
    states = _states(strict)
    assert states["gate"] == "success" and states["evaluate"] == "success"
    assert {states[t] for t in DOWNSTREAM_OF_CHECK[3:]} == {"skipped"}
    assert "< min_accuracy 0.999" in _xcom(strict, "gate", "stop_reason")
    assert _serving_labels(serving_server["config_file"]) == {"stable": 1, "canary": 1}
    assert states["report"] == "success" and _xcom(strict, "report", "return_value")["outcome"] == "not_blessed"
    assert _note(strict).startswith("not blessed: ") and "< min_accuracy 0.999" in _note(strict)


def test_a_forced_run_watches_its_canary_on_live_traffic_and_promotes_version_2(
    forced_run, serving_server, images, dag_settings
):
    run = forced_run["run"]
    assert set(_states(run).values()) == {"success"}, _states(run)
    assert _serving_labels(serving_server["config_file"]) == {"stable": 2, "canary": 2}
    assert _served_version(serving_server, "stable", images) == 2
    assert {1, 2} <= set(forced_run["traffic"].versions)  # live requests reached both during the watch
    watch = _xcom(run, "watch_canary", "return_value")["watch_canary"]
    assert watch["passed"] and watch["figures"]["canary_requests"] >= 20, watch
    events = [e["event"] for e in _lineage(dag_settings)]
    assert events.index("canary_traffic") < events.index("canary_passed") < len(events) - 1


def test_the_rollback_form_lists_the_published_versions_and_stable(forced_run):
    from airflow.dag_processing.dagbag import BundleDagBag

    from tests.dags.conftest import DAGS_FOLDER

    # The DAG processor parses the file again; the form then shows what is published now.
    bag = BundleDagBag(dag_folder=str(DAGS_FOLDER / "rollback.py"), bundle_path=DAGS_FOLDER)
    version = bag.get_dag("fashion_mnist_rollback").params.get_param("version")
    assert version.schema["enum"] == [2, 1] and version.value == 1  # the newest version that is not stable
    assert version.schema["values_display"]["2"].startswith("version 2, test accuracy 0.")
    assert version.schema["values_display"]["2"].endswith("(stable, canary)")
    assert "now stable: 2" in version.description


def test_a_canary_trained_on_permuted_labels_is_rolled_back_by_the_watch(
    permuted_labels_run, serving_server, dag_settings
):
    run = permuted_labels_run["run"]
    states = _states(run)
    assert states["gate"] == "success" and states["smoke_test"] == "success"  # a lax gate blessed it
    assert (states["watch_canary"], states["mark_stable"], states["report"]) == ("skipped", "skipped", "success")
    assert 3 in permuted_labels_run["traffic"].versions  # it answered live requests until it was caught
    assert _serving_labels(serving_server["config_file"]) == {"stable": 2, "canary": 2}
    record = _lineage(dag_settings)[-1]
    assert (record["event"], record["rolled_back_version"], record["by"]) == (
        "canary_rolled_back",
        3,
        "automatic: canary watch",
    )
    assert "predicted class equal to stable's" in record["reasons"][0]
    assert _note(run).startswith("canary version 3 rolled back: predicted class equal to stable's")
    assert _xcom(run, "watch_canary", "stop_reason").startswith("canary rolled back: ")


def test_the_rollback_dag_restores_version_1(dag_rollback, serving_server, images):
    assert set(_states(dag_rollback).values()) == {"success"}
    assert _serving_labels(serving_server["config_file"]) == {"stable": 1, "canary": 1}
    assert _served_version(serving_server, "stable", images) == 1
    assert _note(dag_rollback) == "rolled back: stable is version 1 (was 2): test rollback"


def test_the_cli_rolls_back_and_refuses_unpublished_versions(dag_rollback, dag_settings, serving_server, images):
    pipeline = dag_settings["pipeline"]
    keys = ("workdir", "model_base_path", "model_name", "serving_config_file", "serving_grpc_target")
    cli = [
        sys.executable,
        "-m",
        "pipeline",
        "rollback",
        *[f"--{key.replace('_', '-')}={pipeline[key]}" for key in keys],
    ]
    refused = subprocess.run([*cli, "--version", "99"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert (
        refused.returncode == 2 and "cannot roll back to version 99: published versions are [1, 2, 3]" in refused.stderr
    )
    moved = subprocess.run(
        [*cli, "--version", "2", "--reason", "cli test"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert _serving_labels(serving_server["config_file"]) == {"stable": 2, "canary": 2}
    assert _served_version(serving_server, "stable", images) == 2
    last = _lineage(dag_settings)[-1]
    assert (last["event"], last["version"], last["previous"], last["reason"]) == ("rollback", 2, 1, "cli test")
    assert last["by"].startswith("cli by ")


def test_every_decision_is_in_the_lineage_log_and_asset_events(dag_rollback, dag_settings):
    # Each move of `stable` by a DAG emitted an event on the stable-model asset.
    assert [extra["version"] for extra in _asset_event_extras()] == [1, 2, 1]
    events = [(e["event"], e.get("label"), e.get("version")) for e in _lineage(dag_settings)]
    assert ("gate", None, None) in events and ("skipped_unchanged", None, None) in events
    assert events.count(("label_moved", "stable", 1)) == 1 and ("label_moved", "stable", 2) in events
    assert ("rollback", "stable", 1) in events
    gate_records = [e for e in _lineage(dag_settings) if e["event"] == "gate"]
    assert {g["blessed"] for g in gate_records} == {True, False}
    assert all(g["data_fingerprint"] and g["config"]["epochs"] == 1 and g["by"] for g in gate_records)
    for record in gate_records:  # an explicit pass/fail check per rule, failing ones exactly when not blessed
        assert record["rules"] and all({"rule", "passed", "reason"} <= set(rule) for rule in record["rules"])
        assert record["blessed"] == all(rule["passed"] for rule in record["rules"])
    forced = [e for e in _lineage(dag_settings) if e["event"] == "forced"]
    assert forced[0]["reason"] == "new labels" and forced[0]["by"].startswith("manual") and forced[0]["time"]


def test_ingest_failure_stops_the_run_with_the_stage_message(dag_bag, caplog, run_conf):
    dag = dag_bag.get_dag("fashion_mnist_training")
    with caplog.at_level(logging.ERROR):
        run = dag.test(run_conf=run_conf(data_source="idx:/no/such/folder", force=True, force_reason="failure test"))
    states = _states(run)
    assert states["ingest_plan"] == "failed"
    assert {states[t] for t in states if t != "ingest_plan"} == {"upstream_failed"}
    assert "IDX data folder /no/such/folder does not exist" in caplog.text
    assert "task=ingest_plan (attempt 1, not retried" in caplog.text  # settings say retries 1: not for data errors
    assert _note(run).startswith("failed at ingest_plan (attempt 1, not retried") and "/no/such/folder" in _note(run)


def test_serving_down_during_promotion_retries_and_keeps_stable(dag_bag, serving_server, run_conf, images):
    from tests.dags.conftest import restart_serving

    before = _serving_labels(serving_server["config_file"])
    serving_server["local"].stop()
    try:
        run = dag_bag.get_dag("fashion_mnist_training").test(run_conf=run_conf(force=True, force_reason="outage test"))
    finally:
        restart_serving(serving_server)
    states = _states(run)
    assert states["infra_validate"] == "success"  # the sandbox does not need the serving endpoint
    assert states["promote_canary"] == "failed"
    assert {states["smoke_test"], states["mark_stable"]} == {"upstream_failed"}
    tries = [ti.try_number for ti in run.get_task_instances() if ti.task_id == "promote_canary"]
    assert tries == [2]  # retried once (settings: retries 1) before failing
    assert _serving_labels(serving_server["config_file"]) == before
    if "stable" in before:  # run alone, no earlier test has promoted a model
        with TFServingClient(serving_server["grpc_target"], serving_server["rest_url"]) as client:
            assert client.predict("fashion_mnist", {"images": images}, label="stable").version == before["stable"]
