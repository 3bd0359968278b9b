import json

import numpy as np
import pytest

from pipeline.core.problem import image_classification
from pipeline.training.evaluate import Baseline, classification_metrics, evaluate, gate_rules
from tests.support import export_candidate


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2])
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    metrics = classification_metrics(labels, probabilities, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)  # The tie in row 5 picks class 0.
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert metrics["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert metrics["per_class"]["b"]["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert metrics["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    expected_loss = -np.mean(np.log(np.clip([0.9, 0.2, 0.9, 1.0, 0.5], 1e-7, 1)))
    assert metrics["loss"] == pytest.approx(expected_loss, abs=1e-6)


PROBLEM = image_classification((28, 28, 1), ["Shirt", "Bag", "Coat"])


def _metrics(accuracy: float, recall: dict[str, float]) -> dict:
    return {"accuracy": accuracy, "per_class": {name: {"recall": value} for name, value in recall.items()}}


@pytest.mark.parametrize(
    "accuracy, baseline, blessed",
    [(0.90, None, True), (0.80, None, False), (0.90, 0.905, True), (0.90, 0.92, False), (0.84, 0.80, False)],
)
def test_gate_rules(make_config, accuracy, baseline, blessed):
    config = make_config(min_accuracy=0.85, max_regression=0.01)
    base = None if baseline is None else Baseline(1, {"accuracy": baseline}, {"a": 0.9})
    checks = gate_rules(_metrics(accuracy, {"a": 0.9}), base, config, PROBLEM)
    assert [check.rule for check in checks] == (
        ["min_accuracy"] if baseline is None else ["min_accuracy", "max_regression"]
    )
    assert all(check.passed for check in checks) is blessed


def test_per_class_rules_check_every_class_and_say_which_failed(make_config):
    config = make_config(min_accuracy=0.5, max_regression=0.05, min_class_recall=0.7, max_class_regression=0.1)
    baseline = Baseline(3, {"accuracy": 0.86}, {"Shirt": 0.72, "Bag": 0.97})
    checks = gate_rules(_metrics(0.86, {"Shirt": 0.55, "Bag": 0.96}), baseline, config, PROBLEM)
    by_rule = {check.rule: check for check in checks}
    assert list(by_rule) == [
        "min_accuracy",
        "max_regression",
        "min_class_recall[Shirt]",
        "min_class_recall[Bag]",
        "max_class_regression[Shirt]",
        "max_class_regression[Bag]",
    ]
    failed = [check.rule for check in checks if not check.passed]
    assert failed == ["min_class_recall[Shirt]", "max_class_regression[Shirt]"]  # the overall accuracy hides it
    assert by_rule["min_class_recall[Shirt]"].reason == "recall of Shirt 0.5500 < min_class_recall 0.7"
    assert by_rule["max_class_regression[Shirt]"].reason == (
        "recall of Shirt 0.5500 < baseline 0.7200 - max_class_regression 0.1 = 0.6200"
    )
    assert by_rule["max_class_regression[Bag]"].passed


def test_first_evaluation_has_no_baseline(trained_run):
    result = trained_run["evaluate"]
    report = json.loads(result.evaluation_path.read_text())
    assert report["blessed"] is result.blessed is True
    assert report["baseline"] == {"version": None, "metrics": None, "class_recall": None}
    assert report["task"] == "multiclass" and report["gate_metric"] == result.metric == "accuracy"
    assert report["metrics"]["headline"] == {k: report["metrics"][k] for k in ("accuracy", "macro_f1", "log_loss")}
    assert [(rule["rule"], rule["passed"]) for rule in report["rules"]] == [("min_accuracy", True)]
    assert any("no published model" in reason for reason in report["reasons"])
    assert report["metrics"]["examples"] == 500
    assert 0.5 <= report["metrics"]["accuracy"] <= 1.0
    assert len(report["metrics"]["per_class"]) == 10
    matrix = json.loads(result.confusion_matrix_path.read_text())["matrix"]
    assert np.array(matrix).sum() == 500
    assert result.plot_path.name == "confusion_matrix.png" and result.plot_path.read_bytes()[:4] == b"\x89PNG"


def test_published_model_is_the_baseline_and_the_gate_can_refuse(trained_run, make_config):
    shared = trained_run["config"]
    config = make_config(workdir=shared.workdir, run_id="baseline-check")
    published = export_candidate(trained_run, config)

    same = evaluate(config, trained_run["snapshot"], trained_run["train"].model_path)
    assert same.baseline_version == published.version
    assert same.baseline_score == pytest.approx(same.score, abs=1e-6)  # Same model, same answers.
    assert same.blessed

    newer = export_candidate(trained_run, config)  # e.g. a canary that was rolled back: published, not serving
    against_stable = evaluate(config, trained_run["snapshot"], trained_run["train"].model_path, published.version)
    assert (newer.version, against_stable.baseline_version) == (published.version + 1, published.version)
    assert evaluate(config, trained_run["snapshot"], trained_run["train"].model_path).baseline_version == newer.version

    strict = evaluate(config.replace(min_accuracy=0.999), trained_run["snapshot"], trained_run["train"].model_path)
    assert not strict.blessed
    assert strict.reasons[0].endswith("< min_accuracy 0.999")  # the failing rule first

    per_class = config.replace(min_class_recall=0.999, max_class_regression=0.0)
    checked = evaluate(per_class, trained_run["snapshot"], trained_run["train"].model_path)
    rules = json.loads(checked.evaluation_path.read_text())["rules"]
    assert len(rules) == 2 + 2 * 10  # accuracy, regression, then both per-class rules for each class
    assert not checked.blessed and any(not rule["passed"] for rule in rules if rule["rule"].startswith("min_class"))
    assert all(rule["passed"] for rule in rules if rule["rule"].startswith("max_class_regression"))  # same model
