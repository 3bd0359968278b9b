"""Bring your own problem: tables of each task and a user's model, through the real stages to a SavedModel."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core import model_repo
from pipeline.core.errors import ConfigError
from pipeline.core.problem import ProblemSpec
from pipeline.data.ingest import ingest
from pipeline.data.snapshot import Snapshot
from pipeline.training.evaluate import Baseline, evaluate, gate_rules, predict_keras, roc_auc, task_metrics
from pipeline.training.export import rows_to_examples
from pipeline.training.train import train
from tests.support import REPO_ROOT, export_candidate, table_rows, write_table

HEADLINES = {
    "binary": {"auc", "accuracy", "log_loss", "f1"},
    "multiclass": {"accuracy", "macro_f1", "log_loss"},
    "regression": {"rmse", "mae", "r2"},
    "text": {"auc", "accuracy", "log_loss", "f1"},
}


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression", "text"])
def test_each_task_trains_on_its_own_loss_and_is_judged_by_its_own_metrics(table_run, task):
    run = table_run(task)
    problem = run["snapshot"].problem
    evaluation = json.loads(run["evaluate"].evaluation_path.read_text())
    assert evaluation["task"] == problem.task and set(evaluation["metrics"]["headline"]) == HEADLINES[task]
    history = json.loads(run["train"].history_path.read_text())
    monitor = {"binary": "val_auc", "text": "val_auc", "multiclass": "val_accuracy", "regression": "val_rmse"}[task]
    assert run["train"].monitor == monitor and monitor in history
    # The generated tables have a clear signal: a dozen short epochs learn it.
    figures = evaluation["metrics"]
    if task == "regression":
        assert figures["r2"] > 0.3 and run["evaluate"].metric == "rmse"
        assert run["evaluate"].plot_path.name == "predictions.png" and run["evaluate"].confusion_matrix_path is None
    else:
        assert figures["accuracy"] > 0.7 and (task == "multiclass" or figures["auc"] > 0.8)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_the_exported_model_takes_raw_features_and_answers_as_the_keras_model(table_run, tmp_path, task):
    run = table_run(task)
    snapshot, problem = run["snapshot"], run["snapshot"].problem
    exported = export_candidate(run, run["config"].replace(model_base_path=str(tmp_path)))
    rows = snapshot.request_rows("test", 24)
    # Missing values reach serving as they reached training: NaN numbers, '' text.
    numeric = next(f.key for f in problem.features if f.dtype == "float32")
    rows[numeric][:3] = np.nan
    text = next(f.key for f in problem.features if f.dtype == "string")
    rows[text][3:5] = ""
    served = model_repo.predict_saved_model(exported.version_dir, rows)
    expected = predict_keras(run["train"].model_path, problem, rows)
    if task == "regression":
        assert set(served) == {"predictions"} and np.isfinite(served["predictions"]).all()
        np.testing.assert_allclose(served["predictions"], expected["predictions"], rtol=1e-5)
    else:
        np.testing.assert_allclose(served["probabilities"], expected["probabilities"], atol=1e-5)
        assert (served["class_ids"] == model_repo.answers(served)).all()
        names = [name.decode() for name in served["class_names"]]
        assert names == [problem.class_names[i] for i in served["class_ids"]]
    card = json.loads(exported.model_card_path.read_text())
    assert ProblemSpec.from_dict(card["problem"]) == problem and card["metrics"] == run["evaluate"].headline
    assert card["column_mapping"] == problem.renamed_columns() != {}
    assert card["signature"]["inputs"] == problem.serving_inputs()


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_classify_and_regress_signatures_take_tf_examples(table_run, tmp_path, task):
    run = table_run(task)
    problem = run["snapshot"].problem
    exported = export_candidate(run, run["config"].replace(model_base_path=str(tmp_path)))
    rows = run["snapshot"].request_rows("test", 8)
    examples = rows_to_examples(problem, rows)
    gap = next(f.key for f in problem.features if f.dtype != "int64")  # whole numbers have no missing value
    del examples[0].features.feature[gap]  # a missing feature: NaN or '' as in training
    signatures = tf.saved_model.load(str(exported.version_dir)).signatures
    serialized = tf.constant([example.SerializeToString() for example in examples])
    expected = model_repo.predict_saved_model(
        exported.version_dir, {k: _missing(v, 0) if k == gap else v for k, v in rows.items()}
    )
    if task == "regression":
        outputs = signatures["regression"](inputs=serialized)
        np.testing.assert_allclose(outputs["outputs"].numpy(), expected["predictions"], rtol=1e-5)
    else:
        outputs = signatures["classification"](inputs=serialized)
        assert [c.decode() for c in outputs["classes"].numpy()[0]] == list(problem.class_names)
        np.testing.assert_allclose(outputs["scores"].numpy(), expected["probabilities"], atol=1e-6)
    saved = model_repo.read_warmup_records(exported.version_dir)
    kinds = {record.WhichOneof("log_type") for record in saved}
    assert kinds == {"predict_log", "regress_log" if task == "regression" else "classify_log"}


def _missing(values, index):
    values = values.copy()
    values[index] = np.nan if values.dtype.kind == "f" else ""
    return values


def test_a_users_model_function_trains_exports_and_its_source_decides_a_retrain(make_config, tmp_path, monkeypatch):
    from pipeline.core.user_code import model_code_digest
    from pipeline.release.promotion import ServingState, apply_state, unchanged_reason

    package = tmp_path / "user_code" / "my_models"
    shutil.copytree(REPO_ROOT / "tests" / "pipeline" / "user_models", package)
    monkeypatch.syspath_prepend(str(tmp_path / "user_code"))
    source = write_table(tmp_path / "data" / "loans.csv", table_rows("binary", 300))
    config = make_config(
        data_source=f"csv:{source}",
        label="approved?",
        model="my_models.wide_and_deep:build",
        epochs=3,
        batch_size=32,
        serving_config_file=str(tmp_path / "serving" / "models.config"),
        serving_grpc_target=None,
    )
    snapshot = ingest(config)
    trained = train(config, snapshot)
    assert trained.model_builder == "my_models.wide_and_deep:build"
    run = {"snapshot": snapshot, "train": trained, "evaluate": evaluate(config, snapshot, trained.model_path)}
    exported = export_candidate(run, config)
    card = json.loads(exported.model_card_path.read_text())
    assert card["model_builder"] == "my_models.wide_and_deep:build"
    assert card["model_code"] == model_code_digest(config.model) and len(card["model_code"]) == 64

    apply_state(config, ServingState(stable=exported.version))
    assert unchanged_reason(config, snapshot.fingerprint)  # data, config and code as the stable model's
    module = package / "wide_and_deep.py"
    module.write_text(module.read_text().replace("Dense(32", "Dense(48"))
    assert model_code_digest(config.model) != card["model_code"]
    assert unchanged_reason(config, snapshot.fingerprint) is None  # the user's model changed: retrain


@pytest.mark.parametrize(
    "model, message",
    [
        ("tests.pipeline.user_models.wide_and_deep:wrong_output", r"must end in the binary task's output: \[N, 1\]"),
        ("tests.pipeline.user_models.wide_and_deep:not_a_model", "returned str, not a keras.Model"),
        ("tests.pipeline.user_models.wide_and_deep:crashes", "failed to build: RuntimeError: my layer is broken"),
        ("tests.pipeline.user_models.wide_and_deep:missing", "has no function 'missing'"),
        ("tests.pipeline.no_such_module:build", "cannot import 'tests.pipeline.no_such_module'"),
    ],
)
def test_a_users_model_that_breaks_the_contract_is_refused_by_name(table_run, model, message):
    run = table_run("binary")
    config = run["config"].replace(model=model, run_id="broken-model")
    with pytest.raises(ConfigError, match=message):
        train(config, run["snapshot"])


def test_the_pipeline_cli_trains_a_users_model_from_the_working_folder(tmp_path):
    import subprocess

    source = write_table(tmp_path / "loans.csv", table_rows("binary", 200))
    shutil.copytree(REPO_ROOT / "tests" / "pipeline" / "user_models", tmp_path / "models_here")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "train",
            f"--data-source=csv:{source}",
            "--label=approved?",
            "--model=models_here.wide_and_deep:build",
            "--epochs=1",
            f"--workdir={tmp_path / 'work'}",
            "--run-id=cli-user-model",
            "--snapshot",
            str(ingest_snapshot(tmp_path, source)),
        ],
        cwd=tmp_path,  # the user's folder: their package is importable from here
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["model_builder"] == "models_here.wide_and_deep:build"


def ingest_snapshot(tmp_path, source):
    from pipeline.core.config import PipelineConfig

    config = PipelineConfig(data_source=f"csv:{source}", label="approved?", workdir=str(tmp_path / "work")).validate()
    return ingest(config).path


def test_metrics_of_each_task_by_hand():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9])) == pytest.approx(0.75)  # a tie counts half
    binary = ProblemSpec.from_dict(
        {
            "task": "binary",
            "label": "y",
            "label_key": "y",
            "class_names": ["no", "yes"],
            "features": [{"name": "x", "key": "x", "kind": "numeric", "dtype": "float32"}],
        }
    )
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]], np.float32)
    metrics = task_metrics(binary, np.array([0, 1, 1, 0]), {"probabilities": probabilities}, 0.5)
    assert (metrics["accuracy"], metrics["precision"], metrics["recall"]) == (0.5, 0.5, 0.5)
    assert metrics["positive_class"] == "yes" and metrics["auc"] == pytest.approx(0.5)
    lenient = task_metrics(binary, np.array([0, 1, 1, 0]), {"probabilities": probabilities}, 0.35)
    assert lenient["recall"] == 1.0  # the threshold decides the class
    regression = ProblemSpec("regression", "y", "y", binary.features)
    figures = task_metrics(regression, np.array([1.0, 2.0, 3.0]), {"predictions": np.array([1.0, 2.0, 5.0])}, 0.5)
    assert figures["rmse"] == pytest.approx(np.sqrt(4 / 3), abs=1e-6) and figures["mae"] == pytest.approx(2 / 3)
    assert figures["r2"] == pytest.approx(1 - 4 / 2) and set(figures["headline"]) == {"rmse", "mae", "r2"}


def test_the_gate_judges_any_metric_in_its_direction(make_config):
    regression = ProblemSpec.from_dict(
        {
            "task": "regression",
            "label": "price",
            "label_key": "price",
            "features": [{"name": "x", "key": "x", "kind": "numeric", "dtype": "float32"}],
        }
    )
    config = make_config(gate_threshold=500.0, max_regression=25.0)
    baseline = Baseline(4, {"rmse": 480.0, "mae": 300.0, "r2": 0.9}, {})
    checks = gate_rules({"rmse": 510.0, "mae": 320.0, "r2": 0.88}, baseline, config, regression)
    assert [(c.rule, c.passed) for c in checks] == [("gate_threshold", False), ("max_regression", False)]
    assert checks[0].reason == "rmse 510.0000 > gate_threshold 500.0"  # lower is better: at most
    assert checks[1].reason == "rmse 510.0000 > baseline 480.0000 + max_regression 25.0 = 505.0000"
    on_r2 = gate_rules({"r2": 0.88}, baseline, make_config(gate_metric="r2", max_regression=0.05), regression)
    assert [(c.rule, c.passed) for c in on_r2] == [("max_regression", True)]  # no min_accuracy for regression
    with pytest.raises(ConfigError, match="gate_metric 'auc' is not a regression metric"):
        gate_rules({}, None, make_config(gate_metric="auc"), regression)


def test_a_baseline_of_another_problem_is_not_compared(table_run, tmp_path):
    binary, multiclass = table_run("binary"), table_run("multiclass")
    config = binary["config"].replace(model_base_path=str(tmp_path), model_name="shared_name")
    export_candidate(multiclass, config)  # a published version that solves another problem
    result = evaluate(config, binary["snapshot"], binary["train"].model_path)
    assert result.baseline_version is None
    assert any("baseline version 1 is not comparable: it solves a multiclass task" in r for r in result.reasons)


def test_validation_reports_the_rows_without_a_label_and_per_feature_statistics(table_run):
    from pipeline.data.data_validation import validate

    run = table_run("multiclass")
    config = run["config"].replace(run_id="validate-table")
    validate(config, run["snapshot"])
    report = json.loads((config.workdir_path / "runs" / "validate-table" / "validate" / "anomalies.json").read_text())
    missing = next(c for c in report["anomalies"] if c["check"] == "missing_labels")
    assert missing["split"] == "train" and missing["value"] == 11 and missing["severity"] == "warning"
    assert "11 rows had no label and were left out at ingest" in missing["message"]
    statistics = json.loads(
        (config.workdir_path / "runs" / "validate-table" / "validate" / "statistics.json").read_text()
    )
    train_stats = statistics["splits"]["train"]
    assert train_stats["dropped_missing_label"] == 11
    bill = train_stats["features"]["bill_length__mm_"]
    assert bill["missing"] > 0 and 38 < bill["mean"] < 50
    assert train_stats["features"]["island"]["distinct"] == 4  # three islands and '' (missing)
    assert Snapshot.load(run["snapshot"].path) == run["snapshot"]


def _noisy_slice_table(rows: int = 4000) -> dict:
    """Loans with a sales channel; in the 'store' channel the label is a coin flip: no model can learn it."""
    table = table_rows("binary", rows, seed=11)
    rng = np.random.default_rng(11)
    channel = rng.choice(["web", "store", "phone"], rows, p=[0.7, 0.25, 0.05])
    table["channel"] = channel.tolist()
    table["approved?"] = [
        rng.choice(["yes", "no"]) if c == "store" else v for c, v in zip(channel, table["approved?"], strict=True)
    ]
    return table


def test_a_slice_that_regresses_blocks_the_gate_while_the_overall_metric_passes(make_config, tmp_path):
    source = write_table(tmp_path / "loans.csv", _noisy_slice_table())
    config = make_config(
        data_source=f"csv:{source}",
        label="approved?",
        epochs=8,
        batch_size=64,
        gate_threshold=0.75,
        min_accuracy=None,
        slice_features=["channel"],
        slice_min_metric=0.7,
    )
    snapshot = ingest(config)
    trained = train(config, snapshot)
    result = evaluate(config, snapshot, trained.model_path)
    report = json.loads(result.evaluation_path.read_text())
    assert result.score >= 0.75  # overall AUC passes its bound ...
    assert not result.blessed  # ... but the 'store' slice blocks the candidate
    rules = {rule["rule"]: rule for rule in report["rules"]}
    assert rules["gate_threshold"]["passed"] and not rules["slice_min_metric[channel=store]"]["passed"]
    assert rules["slice_min_metric[channel=web]"]["passed"]
    assert "slice_min_metric[channel=phone]" not in rules  # too few rows: reported, not gated
    slices = {item["name"]: item for item in report["slices"]}
    assert slices["channel=phone"]["gated"] is False and "< slice_min_size 30" in slices["channel=phone"]["note"]
    assert report["slices"][0]["name"] in ("channel=store", "channel=phone")  # worst first
    assert result.reasons[1].startswith("auc of channel=store (")  # after the note, the failing rule first
    from pipeline.release.report import render_run_report

    page = render_run_report(config, {"evaluate": result.to_dict()})
    assert "<h2>Slices (worst auc first)</h2>" in page and "channel=store" in page
    from pipeline.release.report import approval_markdown

    form = approval_markdown({"evaluate": result.to_dict(), "export": {"version": 1}})
    assert "| slice (worst auc first) | rows | candidate | stable (none) |" in form and "| channel=store |" in form


def test_slice_rules_against_the_baseline_in_the_metrics_direction(make_config):
    from pipeline.training.evaluate import SliceResult, slice_rules

    slices = [
        SliceResult("district", "north", 120, {}, 910.0, 800.0, True, ""),  # rmse up 110: regressed
        SliceResult("district", "south", 150, {}, 790.0, 800.0, True, ""),
        SliceResult("district", "east", 12, {}, 5000.0, 800.0, False, "too few"),
    ]
    checks = slice_rules(slices, make_config(slice_max_regression=50.0), "rmse")
    assert [(c.rule, c.passed) for c in checks] == [
        ("slice_max_regression[district=north]", False),
        ("slice_max_regression[district=south]", True),
    ]
    assert (
        checks[0].reason
        == "rmse of district=north (120 rows) 910.0000 > baseline 800.0000 + slice_max_regression 50.0 = 850.0000"
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"slice_features": ["colour"]}, r"slice_features: 'colour' is not a feature; the features are: annual_income"),
        (
            {"slice_features": ["debt ratio"]},
            r"slice_features: 'debt ratio' is a numeric feature; slices need a categorical",
        ),
        (
            {"feature_drift_thresholds": {"colour": 0.2}},
            r"feature_drift_thresholds names features the data does not have",
        ),
        ({"gate_metric": "rmse"}, r"gate_metric 'rmse' is not a binary metric"),
        ({"monitor_metric": "mae"}, r"monitor_metric 'mae' is not logged for a binary task"),
    ],
)
def test_options_naming_features_or_metrics_are_refused_before_training(tmp_path, options, message):
    from pipeline import runner
    from pipeline.core.config import PipelineConfig

    source = write_table(tmp_path / "loans.csv", table_rows("binary", 120))
    config = PipelineConfig(
        data_source=f"csv:{source}", label="approved?", workdir=str(tmp_path / "work"), run_id="early", **options
    ).validate()
    with pytest.raises(ConfigError, match=message):
        runner.run_step("ingest", config, {}, "test")
    assert not (tmp_path / "work" / "runs" / "early" / "train").exists()
