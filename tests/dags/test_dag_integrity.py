"""DAG files import cleanly, without TensorFlow, and are wired as documented."""

from __future__ import annotations

import copy
import subprocess
import sys

from tests.dags.conftest import DAGS_FOLDER, REPO_ROOT

TRAINING_TASKS = [
    "ingest", "validate", "check_changes", "train", "evaluate", "gate", "export",
    "infra_validate", "promote_canary", "smoke_test", "mark_stable",
]  # fmt: skip


def test_dag_files_import_without_errors_or_tensorflow(dag_settings):
    code = (
        "import sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS_FOLDER)!r})\n"
        "assert bag.import_errors == {}, bag.import_errors\n"
        "print(sorted(bag.dag_ids))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tensorflow_datasets'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "['fashion_mnist_rollback', 'fashion_mnist_training']" in result.stdout


def test_training_dag_shape(dag_bag):
    dag = dag_bag.get_dag("fashion_mnist_training")
    assert [t.task_id for t in dag.topological_sort()] == TRAINING_TASKS  # a chain, no cycles
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.timetable.expression == "0 2 * * *" and not dag.timetable.run_immediately
    train = dag.get_task("train")
    assert (train.pool, train.queue) == ("gpu_training", "gpu")
    for task in dag.tasks:
        assert task.retries == 1 and task.retry_exponential_backoff
        assert task.execution_timeout is not None and task.on_failure_callback
    assert [o.name for o in dag.get_task("mark_stable").outlets] == ["fashion_mnist_stable_model"]


def test_trigger_form_params_are_typed_and_bounded(dag_bag):
    params = dag_bag.get_dag("fashion_mnist_training").params
    assert set(params) == {"data_source", "model", "epochs", "batch_size", "learning_rate", "min_accuracy",
                           "max_regression", "force"}  # fmt: skip
    for name in params:
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, name
    assert params.get_param("epochs").schema == {**params.get_param("epochs").schema, "type": "integer", "minimum": 1}
    assert params.get_param("model").schema["enum"] == ["cnn", "mlp"]
    assert params.get_param("min_accuracy").schema["maximum"] == 1
    assert params.get_param("force").value is False
    params.validate()  # the defaults are valid


def test_bad_params_are_refused_before_a_run(dag_bag):
    import pytest
    from airflow.sdk.exceptions import ParamValidationError

    dag = dag_bag.get_dag("fashion_mnist_training")
    for conf in ({"epochs": -1}, {"epochs": "ten"}, {"model": "resnet"}, {"min_accuracy": 1.5},
                 {"learning_rate": 0}, {"data_source": "/tmp/data"}, {"force": "yes"}):  # fmt: skip
        params = copy.deepcopy(dag.params)
        with pytest.raises(ParamValidationError):
            params.update(conf)
            params.validate()


def test_documented_schedule_matches_settings_file():
    import yaml

    settings = yaml.safe_load((REPO_ROOT / "dags" / "settings.yaml").read_text())
    assert settings["schedule"] == "0 2 * * *"
    readme = (REPO_ROOT / "README.md").read_text()
    assert "0 2 * * *" in readme
