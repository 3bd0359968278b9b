"""The training and rollback DAGs end to end with dag.test() on a small subset, against a real serving server."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from serving.client import TFServingClient
from tests.dags.conftest import REPO_ROOT

DOWNSTREAM_OF_CHECK = ["train", "evaluate", "gate", "export", "infra_validate", "promote_canary", "smoke_test",
                       "mark_stable"]  # fmt: skip


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _serving_labels(config_file) -> dict[str, int]:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    parsed = text_format.Parse(config_file.read_text(), model_server_config_pb2.ModelServerConfig())
    return {k: v for m in parsed.model_config_list.config for k, v in m.version_labels.items()}


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


@pytest.fixture(scope="module")
def run_conf(dag_bag):
    """Builds a full run conf: the defaults plus overrides (dag.test keeps params between runs)."""
    defaults = {name: dag_bag.get_dag("fashion_mnist_training").params[name] for name in PARAMS}

    def make(**overrides):
        return {**defaults, **overrides}

    return make


PARAMS = ("data_source", "model", "epochs", "batch_size", "learning_rate", "min_accuracy", "max_regression", "force")


def test_training_lifecycle(dag_bag, dag_settings, serving_server, fashion_subset, run_conf):
    dag = dag_bag.get_dag("fashion_mnist_training")
    images = fashion_subset["t10k"][0][:8]

    # 1. The first run trains, gates, exports, validates and promotes version 1 to stable.
    first = dag.test(run_conf=run_conf())
    assert set(_states(first).values()) == {"success"}, _states(first)
    assert _serving_labels(serving_server["config_file"]) == {"stable": 1, "canary": 1}
    assert _served_version(serving_server, "stable", images) == 1

    # 2. The same data, config and code again: short-circuit after validation.
    second = dag.test(run_conf=run_conf())
    states = _states(second)
    assert states["ingest"] == states["validate"] == states["check_changes"] == "success"
    assert {states[t] for t in DOWNSTREAM_OF_CHECK} == {"skipped"}
    assert "equal those of stable version 1" in _xcom(second, "check_changes", "skip_reason")

    # 3. The gate refuses a weak candidate: the run stops before export, serving unchanged.
    strict = dag.test(run_conf=run_conf(min_accuracy=0.999))
    states = _states(strict)
    assert states["gate"] == "success" and states["evaluate"] == "success"
    assert {states[t] for t in DOWNSTREAM_OF_CHECK[3:]} == {"skipped"}
    assert any("< min_accuracy 0.999" in r for r in _xcom(strict, "gate", "reasons"))
    assert _serving_labels(serving_server["config_file"]) == {"stable": 1, "canary": 1}

    # 4. A forced run retrains and promotes version 2.
    forced = dag.test(run_conf=run_conf(force=True))
    assert set(_states(forced).values()) == {"success"}, _states(forced)
    assert _serving_labels(serving_server["config_file"]) == {"stable": 2, "canary": 2}
    assert _served_version(serving_server, "stable", images) == 2

    # 5. Rollback puts version 1 back and the decision is in the lineage log.
    rollback = dag_bag.get_dag("fashion_mnist_rollback").test(run_conf={"version": 1, "reason": "test rollback"})
    assert set(_states(rollback).values()) == {"success"}
    assert _serving_labels(serving_server["config_file"]) == {"stable": 1, "canary": 1}
    assert _served_version(serving_server, "stable", images) == 1

    # The CLI rolls back too (and refuses versions that were never published).
    pipeline = dag_settings["pipeline"]
    flags = [f"--{key.replace('_', '-')}={pipeline[key]}" for key in
             ("workdir", "model_base_path", "model_name", "serving_config_file", "serving_grpc_target")]  # fmt: skip
    cli = [sys.executable, "-m", "pipeline", "rollback", *flags]
    refused = subprocess.run([*cli, "--version", "99"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "cannot roll back to version 99: published versions are [1, 2]" in refused.stderr
    moved = subprocess.run([*cli, "--version", "2", "--reason", "cli test"], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert _serving_labels(serving_server["config_file"]) == {"stable": 2, "canary": 2}
    assert _served_version(serving_server, "stable", images) == 2
    last = _lineage(dag_settings)[-1]
    assert (last["event"], last["version"], last["previous"], last["reason"]) == ("rollback", 2, 1, "cli test")
    assert last["by"].startswith("cli by ")

    # Each move of `stable` emitted an event on the stable-model asset.
    assert [extra["version"] for extra in _asset_event_extras()] == [1, 2, 1]

    events = [(e["event"], e.get("label"), e.get("version")) for e in _lineage(dag_settings)]
    assert ("gate", None, None) in events and ("skipped_unchanged", None, None) in events
    assert events.count(("label_moved", "stable", 1)) == 1 and ("label_moved", "stable", 2) in events
    assert ("rollback", "stable", 1) in events and events[-1] == ("rollback", "stable", 2)
    gate_records = [e for e in _lineage(dag_settings) if e["event"] == "gate"]
    assert {g["blessed"] for g in gate_records} == {True, False}
    assert all(g["data_fingerprint"] and g["config"]["epochs"] == 1 and g["by"] for g in gate_records)


def test_ingest_failure_stops_the_run_with_the_stage_message(dag_bag, caplog, run_conf):
    dag = dag_bag.get_dag("fashion_mnist_training")
    with caplog.at_level(logging.ERROR):
        run = dag.test(run_conf=run_conf(data_source="idx:/no/such/folder", force=True))
    states = _states(run)
    assert states["ingest"] == "failed"
    assert {states[t] for t in states if t != "ingest"} == {"upstream_failed"}
    assert "IDX data folder /no/such/folder does not exist" in caplog.text


def test_serving_down_during_promotion_retries_and_keeps_stable(dag_bag, serving_server, run_conf):
    from tests.dags.conftest import restart_serving
    from tests.serving.conftest import stop_local_server

    before = _serving_labels(serving_server["config_file"])
    stop_local_server(serving_server["process"])
    try:
        run = dag_bag.get_dag("fashion_mnist_training").test(run_conf=run_conf(force=True))
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
            assert client.status("fashion_mnist", label="stable")[0]["version"] == before["stable"]
