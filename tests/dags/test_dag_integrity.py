"""DAG files import cleanly, without TensorFlow, and are wired as documented."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys

from pipeline.core.config import trigger_form_fields
from pipeline.runner import STEP_NAMES
from tests.dags.conftest import DAGS_FOLDER
from tests.support import REPO_ROOT


def test_dag_files_import_without_errors_or_tensorflow(dag_settings):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from airflow.dag_processing.dagbag import BundleDagBag\n"
        f"bag = BundleDagBag(dag_folder={str(DAGS_FOLDER)!r}, bundle_path=Path({str(DAGS_FOLDER)!r}))\n"
        "assert bag.import_errors == {}, bag.import_errors\n"
        "print(sorted(bag.dag_ids))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tensorflow_datasets'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "['fashion_mnist_drift', 'fashion_mnist_rollback', 'fashion_mnist_training']" in result.stdout


def test_training_dag_shape(dag_bag):
    dag = dag_bag.get_dag("fashion_mnist_training")
    # The runner's sequence, then the report; ingest fans out over parts of the source, validate's
    # reading over the shard files.
    tasks = ["ingest_plan", "ingest_part", "ingest", "validation_parts", "measure_part", *STEP_NAMES[1:], "report"]
    assert [t.task_id for t in dag.topological_sort()] == tasks
    fan_out = {"ingest_part": {"ingest_plan"}, "ingest": {"ingest_plan", "ingest_part"}}
    fan_out |= {"validation_parts": {"ingest"}, "measure_part": {"ingest", "validation_parts"}}
    fan_out["validate"] = {"ingest", "measure_part"}
    for upstream, downstream in zip(tasks, tasks[1:], strict=False):  # else a straight line, no extra edges
        assert dag.get_task(downstream).upstream_task_ids == fan_out.get(downstream, {upstream})
    assert type(dag.get_task("measure_part")).__name__ == "DecoratedMappedOperator"
    assert type(dag.get_task("ingest_part")).__name__ == "DecoratedMappedOperator"
    for short_circuit in ("check_changes", "gate"):  # skips what follows, but not the report
        assert dag.get_task(short_circuit).ignore_downstream_trigger_rules is False
    assert dag.get_task("report").trigger_rule == "none_failed"
    assert dag.catchup is False and dag.max_active_runs == 1
    # Nightly at 02:00 (never a past slot) or when the drift check emits its asset event.
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert type(dag.timetable.timetable).__name__ == "UpcomingCronTimetable"
    assert dag.timetable.timetable.summary.startswith("0 2 * * *")
    assert [asset.name for asset in dag.timetable.asset_condition.objects] == ["fashion_mnist_request_drift"]
    train = dag.get_task("train")
    assert (train.pool, train.queue) == ("gpu_training", "gpu")
    for task in dag.tasks:
        assert task.retries == 1 and task.retry_exponential_backoff
        assert task.execution_timeout is not None and _callbacks(task.on_failure_callback) == ["log_failure"]
    assert _callbacks(dag.on_failure_callback) == ["log_run_failure"]  # logs only: no XCom from the DAG processor
    assert [o.name for o in dag.get_task("mark_stable").outlets] == ["fashion_mnist_stable_model"]


def _callbacks(callback) -> list[str]:
    return [c.__name__ for c in (callback if isinstance(callback, list) else [callback])]


def test_the_dag_level_failure_callback_names_the_run_and_the_reason(caplog):
    from types import SimpleNamespace

    from dags.dag_helpers import log_run_failure

    run = SimpleNamespace(dag_id="fashion_mnist_training", run_id="manual__1")
    with caplog.at_level(logging.ERROR):
        log_run_failure({"dag_run": run, "reason": "task_failure"})
    assert "FAILED dag=fashion_mnist_training run=manual__1: task_failure" in caplog.text


def test_trigger_form_params_are_typed_and_bounded(dag_bag):
    params = dag_bag.get_dag("fashion_mnist_training").params
    assert list(params) == trigger_form_fields()  # generated from the config, in its order
    for name in params:
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, name
        assert "e.g. " in param.description, name  # an example in every description
        # Bounds sit where the form cannot clamp to them (its number fields clamp to a top-level
        # minimum/maximum); validation still refuses values outside them.
        assert "minimum" not in param.schema and "maximum" not in param.schema, name
    epochs = params.get_param("epochs").schema
    assert (epochs["type"], epochs["allOf"]) == ("integer", [{"minimum": 1, "maximum": 500}])
    assert ">= 1 and <= 500" in params.get_param("epochs").description
    assert params.get_param("batch_size").schema["allOf"][0]["maximum"] == 8192
    assert (
        params.get_param("model").value == "auto"
        and "cnn_deep|mlp|tabular" in params.get_param("model").schema["allOf"][0]["pattern"]
    )
    assert params.get_param("gate_metric").schema["enum"][:2] == ["auto", "accuracy"]
    assert params.get_param("min_accuracy").schema["allOf"][0]["maximum"] == 1
    assert params.get_param("force").value is False
    params.validate()  # the defaults are valid


def test_bad_params_are_refused_before_a_run(dag_bag):
    import pytest
    from airflow.sdk.exceptions import ParamValidationError

    dag = dag_bag.get_dag("fashion_mnist_training")
    for conf in (
        {"epochs": -1},
        {"epochs": 0},
        {"epochs": 501},
        {"learning_rate": 5},
        {"epochs": "ten"},
        {"model": "resnet"},
        {"model": "my models:build"},
        {"gate_metric": "f2"},
        {"min_accuracy": 1.5},
        {"learning_rate": 0},
        {"batch_size": 10_000},
        {"data_source": "/tmp/data"},
        {"force": "yes"},
    ):
        params = copy.deepcopy(dag.params)
        with pytest.raises(ParamValidationError):
            params.update(conf)
            params.validate()


def test_the_timetable_never_starts_a_past_slot():
    import datetime

    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction
    from mlops_timetables import UpcomingCronTimetable

    timetable = UpcomingCronTimetable("0 2 * * *", timezone="UTC")
    now = datetime.datetime.now(datetime.UTC)
    fresh = TimeRestriction(earliest=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), latest=None, catchup=False)
    first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=fresh)
    assert first.run_after > now  # Airflow's CronTriggerTimetable would answer today's past 02:00
    assert (first.run_after.hour, first.run_after.minute) == (2, 0) and first.run_after - now <= datetime.timedelta(1)
    week_ago = now - datetime.timedelta(days=7)
    old_run = DataInterval(week_ago, week_ago)  # Airflow was down since the last nightly run
    assert timetable.next_dagrun_info(last_automated_data_interval=old_run, restriction=fresh) == first
    with_catchup = TimeRestriction(earliest=week_ago, latest=None, catchup=True)  # catchup keeps Airflow's way
    assert timetable.next_dagrun_info(last_automated_data_interval=None, restriction=with_catchup).run_after < now
    restored = decode_timetable(encode_timetable(timetable))  # what the scheduler reads back
    # The plugin manager loads the module under the same name: the class matches by import path.
    assert type(restored).__qualname__ == "UpcomingCronTimetable" and type(restored).__module__ == "mlops_timetables"
    assert restored.serialize() == timetable.serialize()


def test_the_rollback_form_lists_published_versions(dag_bag):
    version = dag_bag.get_dag("fashion_mnist_rollback").params.get_param("version")
    assert version.schema["type"] == "integer"  # no version is published in this fresh test deployment
    assert "No version is published yet" in version.description


def test_the_drift_dag_asks_for_retraining_only_through_its_asset(dag_bag):
    dag = dag_bag.get_dag("fashion_mnist_drift")
    assert [t.task_id for t in dag.topological_sort()] == ["check_drift", "request_retraining"]
    assert [o.name for o in dag.get_task("request_retraining").outlets] == ["fashion_mnist_request_drift"]
    assert (
        dag.timetable.timetable.summary.startswith("0 * * * *")
        if hasattr(dag.timetable, "timetable")
        else (dag.timetable.summary.startswith("0 * * * *"))
    )
