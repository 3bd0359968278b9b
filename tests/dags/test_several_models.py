"""Several models in one deployment: settings per model, one DAG of each kind per model, refusals by name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from pipeline.core.errors import ConfigError
from pipeline.dag_settings import load_settings
from tests.dags.conftest import write_dags
from tests.support import REPO_ROOT, table_rows, write_table


@pytest.fixture
def two_models(tmp_path, small_idx_dir):
    """Settings of a deployment serving the Fashion-MNIST classifier and a loans table model."""
    loans = write_table(tmp_path / "data" / "loans.csv", table_rows("binary", 200))
    houses = write_table(tmp_path / "data" / "houses.csv", table_rows("regression", 200))
    return {
        "schedule": "0 2 * * *",
        "pool": "gpu_training",
        "queue": "gpu",
        "pipeline": {
            "workdir": str(tmp_path / "artifacts"),
            "model_base_path": str(tmp_path / "models"),
            "serving_config_file": str(tmp_path / "serving" / "models.config"),
            "serving_grpc_target": None,
            "epochs": 1,
        },
        "models": [
            {"name": "fashion_mnist", "pipeline": {"data_source": f"idx:{small_idx_dir}"}},
            {
                "name": "loans",
                "pipeline": {"data_source": f"csv:{loans}", "label": "approved?", "min_accuracy": 0.6},
                "schedule": "30 3 * * *",
                "pool": "cpu_training",
                "queue": "default",
                "approval_required": True,
            },
            {
                "name": "houses",
                "pipeline": {"data_source": f"csv:{houses}", "label": "price", "task": "regression"},
                "drift_schedule": None,
            },
        ],
    }


def _load(tmp_path, settings):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    return load_settings(path, REPO_ROOT)


def test_each_model_resolves_its_own_settings_on_top_of_the_shared_ones(tmp_path, two_models):
    settings = _load(tmp_path, two_models)
    fashion, loans, houses = settings.model_list()
    assert [m.name for m in (fashion, loans, houses)] == ["fashion_mnist", "loans", "houses"]
    assert (loans.schedule, loans.pool, loans.queue, loans.approval_required) == (
        "30 3 * * *",
        "cpu_training",
        "default",
        True,
    )
    assert (fashion.schedule, fashion.pool, fashion.approval_required) == ("0 2 * * *", "gpu_training", False)
    assert houses.drift_schedule is None and fashion.drift_schedule == "0 * * * *"
    config = loans.base_config()
    assert config.model_name == "loans" and config.label == "approved?" and config.epochs == 1
    assert config.serving_config_file == fashion.base_config().serving_config_file  # one serving config
    assert loans.stable_model_asset()[0] == "loans_stable_model" and loans.drift_asset()[0] == "loans_request_drift"
    assert settings.model_for_dag("houses_rollback") == houses
    with pytest.raises(ConfigError, match="DAG 'nightly' is not one of a model's DAGs"):
        settings.model_for_dag("nightly")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s["models"].append({"name": "loans"}), r"model 'loans' is listed twice"),
        (
            lambda s: s["models"][1]["pipeline"].update(data_source="csv:/no/such/loans.csv"),
            r"model 'loans': data_source 'csv:/no/such/loans.csv': no such file or folder",
        ),
        (
            lambda s: s["models"][2]["pipeline"].update(max_feature_drift=2),
            r"model 'houses': max_feature_drift must be <= 1, got 2",
        ),
        (
            lambda s: s["models"][2]["pipeline"].update(max_feature_drift="high"),
            r"model 'houses': max_feature_drift must be float, got str 'high'",
        ),
        (
            lambda s: s["models"][1]["pipeline"].update(feature_drift_thresholds={"state": 3.0}),
            r"model 'loans': feature_drift_thresholds\['state'\] must be between 0 and 1, got 3.0",
        ),
        (lambda s: s["models"][1].update(colour="blue"), r"model 'loans': unknown setting\(s\): colour"),
        (lambda s: s["models"][1]["pipeline"].update(model_name="x"), r"model 'loans': pipeline.model_name is"),
        (lambda s: s["models"].append({"pipeline": {}}), r"models\[3\] has no name"),
        (lambda s: s["models"].append({"name": "a b"}), r"models\[3\]: name 'a b' must be"),
    ],
    ids=[
        "same-name-twice",
        "missing-source",
        "threshold-out-of-range",
        "threshold-of-the-wrong-type",
        "per-feature-threshold-out-of-range",
        "unknown-key",
        "model-name-in-pipeline",
        "no-name",
        "bad-name",
    ],
)
def test_bad_settings_are_refused_in_one_line_naming_the_model_and_the_key(tmp_path, two_models, change, message):
    change(two_models)
    with pytest.raises(ConfigError, match=message) as caught:
        _load(tmp_path, two_models)
    assert "\n" not in str(caught.value) and "settings.yaml" in str(caught.value)


def test_each_model_gets_its_own_dags_with_its_pool_assets_and_form(airflow_db, tmp_path, two_models):
    """Parsed in a fresh process, as Airflow's DAG processor does (the helpers module is the folder's own)."""
    folder = tmp_path / "dags"
    write_dags(folder, two_models)
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from airflow.dag_processing.dagbag import BundleDagBag\n"
        f"bag = BundleDagBag(dag_folder={str(folder)!r}, bundle_path=Path({str(folder)!r}))\n"
        "assert bag.import_errors == {}, bag.import_errors\n"
        "out = {}\n"
        "for dag_id in sorted(bag.dag_ids):\n"
        "    dag = bag.get_dag(dag_id)\n"
        "    entry = {'tasks': [t.task_id for t in dag.topological_sort()], 'params': sorted(dag.params)}\n"
        "    if dag_id.endswith('_training'):\n"
        "        train = dag.get_task('train')\n"
        "        entry.update(pool=train.pool, queue=train.queue,\n"
        "                     stable=[o.name for o in dag.get_task('mark_stable').outlets],\n"
        "                     drift=[a.name for a in dag.timetable.asset_condition.objects],\n"
        "                     gate_metric=dag.params.get_param('gate_metric').schema.get('enum'))\n"
        "    out[dag_id] = entry\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    dags = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(dags) == sorted(
        f"{m}_{kind}" for m in ("fashion_mnist", "loans", "houses") for kind in ("training", "drift", "rollback")
    )
    loans, fashion, houses = dags["loans_training"], dags["fashion_mnist_training"], dags["houses_training"]
    assert (loans["pool"], loans["queue"]) == ("cpu_training", "default")
    assert (fashion["pool"], fashion["queue"]) == ("gpu_training", "gpu")
    assert loans["stable"] == ["loans_stable_model"] and loans["drift"] == ["loans_request_drift"]
    assert fashion["stable"] == ["fashion_mnist_stable_model"] and fashion["drift"] == ["fashion_mnist_request_drift"]
    assert "approve" in loans["tasks"] and "approve" not in fashion["tasks"]
    assert "min_accuracy" not in houses["params"] and "min_accuracy" in loans["params"]  # the task's form
    assert houses["gate_metric"] == ["auto", "rmse", "mae", "r2"]
