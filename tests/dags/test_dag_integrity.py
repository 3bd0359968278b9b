"""DAG files import cleanly, without TensorFlow, and are wired as documented."""

from __future__ import annotations

import copy
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
    assert "['fashion_mnist_rollback', 'fashion_mnist_training']" in result.stdout


def test_training_dag_shape(dag_bag):
    dag = dag_bag.get_dag("fashion_mnist_training")
    assert [t.task_id for t in dag.topological_sort()] == list(STEP_NAMES)  # the runner's sequence
    for upstream, downstream in zip(STEP_NAMES, STEP_NAMES[1:], strict=False):  # a straight line
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
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
    assert list(params) == trigger_form_fields()  # generated from the config, in its order
    for name in params:
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, name
    epochs = params.get_param("epochs").schema
    assert (epochs["type"], epochs["minimum"], epochs["maximum"]) == ("integer", 1, 500)
    assert "<= 500" in params.get_param("epochs").description
    assert params.get_param("batch_size").schema["maximum"] == 8192
    assert params.get_param("model").schema["enum"] == ["cnn", "mlp"]
    assert params.get_param("min_accuracy").schema["maximum"] == 1
    assert params.get_param("force").value is False
    params.validate()  # the defaults are valid


def test_bad_params_are_refused_before_a_run(dag_bag):
    import pytest
    from airflow.sdk.exceptions import ParamValidationError

    dag = dag_bag.get_dag("fashion_mnist_training")
    for conf in (
        {"epochs": -1},
        {"epochs": 501},
        {"epochs": "ten"},
        {"model": "resnet"},
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
