"""Stage 5, evaluate: metrics on the held-out split, a baseline, and the gate.

The candidate is blessed only if it passes every rule: accuracy at least `min_accuracy`
and no more than `max_regression` below the published baseline (when there is one); when
set, every class's recall at least `min_class_recall` and no more than
`max_class_regression` below the baseline's recall of that class. Each rule is recorded
as an explicit pass/fail check with its numbers (`rules` in evaluation.json).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import model_repo
from pipeline.core.artifacts import StageResult, atomic_output, atomic_write_json, stage_dir, utc_now
from pipeline.core.config import PipelineConfig
from pipeline.data.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvaluationResult(StageResult):
    """Outputs of the evaluate stage."""

    evaluation_path: Path
    confusion_matrix_path: Path
    confusion_matrix_png: Path
    blessed: bool
    accuracy: float
    baseline_version: int | None
    baseline_accuracy: float | None
    reasons: list[str]


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Computes loss, accuracy, per-class precision/recall/F1 and the confusion matrix.

    Args:
        labels: int [N] true classes.
        probabilities: float [N, C] predicted class probabilities.
        class_names: C names.

    Returns:
        A JSON-serialisable dict.
    """
    num_classes = len(class_names)
    predictions = probabilities.argmax(axis=1)
    picked = probabilities[np.arange(labels.shape[0]), labels]
    loss = float(-np.log(np.clip(picked, 1e-7, 1.0)).mean())
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    actual = confusion.sum(axis=1).astype(np.float64)
    precision = np.divide(true_positive, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(num_classes), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    per_class = {
        name: {
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(actual[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "examples": int(labels.shape[0]),
        "loss": round(loss, 6),
        "accuracy": round(float(true_positive.sum() / max(labels.shape[0], 1)), 6),
        "macro_f1": round(float(f1.mean()), 6),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def plot_confusion_matrix(confusion: list[list[int]], class_names: list[str], path: Path) -> Path:
    """Draws a confusion matrix (rows: true class, columns: predicted) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    figure, axis = plt.subplots(figsize=(8, 7))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis)
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), value in np.ndenumerate(matrix):
        axis.text(
            column,
            row,
            str(value),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value > threshold else "black",
        )
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
    return path


def predict_keras(model_path: Path, images: np.ndarray) -> np.ndarray:
    """Returns a saved Keras model's probabilities for uint8 images."""
    from pipeline.training.models import load_model

    model = load_model(model_path)
    return np.asarray(model.predict(images.astype(np.float32), batch_size=512, verbose=0), np.float32)


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The published model the candidate is compared with, on the same test images."""

    version: int
    accuracy: float
    class_recall: dict[str, float]


@dataclasses.dataclass(frozen=True)
class RuleCheck:
    """One gate rule applied: which rule, whether the candidate passed it, and why, with the numbers."""

    rule: str
    passed: bool
    reason: str


def _baseline(
    config: PipelineConfig, snapshot: Snapshot, images, labels, notes: list[str], serving: int | None
) -> Baseline | None:
    """Evaluates the published baseline; None (with a note saying why) when there is none to compare."""
    versions = model_repo.published_versions(config.model_dir)
    if config.baseline_version is not None:
        if config.baseline_version not in versions:
            notes.append(f"baseline version {config.baseline_version} is not published: no baseline")
            return None
        version = config.baseline_version
    elif serving in versions:
        # What serves, not the newest version: that may be a canary that was rolled back or rejected.
        version = serving
    elif versions:
        version = versions[-1]
    else:
        notes.append("no published model: no baseline comparison (first run)")
        return None
    version_dir = config.model_dir / str(version)
    try:
        if model_repo.read_class_names(version_dir) != snapshot.class_names:
            notes.append(f"baseline version {version} has other class names: not comparable")
            return None
        probabilities = model_repo.predict_saved_model(version_dir, images)["probabilities"]
    except Exception as err:  # A broken published model must not block a good candidate.
        notes.append(f"baseline version {version} could not be evaluated ({err}): no baseline")
        log.warning("baseline %s failed to evaluate: %s", version_dir, err)
        return None
    metrics = classification_metrics(labels, probabilities, snapshot.class_names)
    recall = {name: values["recall"] for name, values in metrics["per_class"].items()}
    return Baseline(version, metrics["accuracy"], recall)


def _at_least(rule: str, what: str, value: float, floor: float, floor_text: str) -> RuleCheck:
    passed = value >= floor
    return RuleCheck(rule, passed, f"{what} {value:.4f} {'>=' if passed else '<'} {floor_text}")


def gate_rules(metrics: dict[str, Any], baseline: Baseline | None, config: PipelineConfig) -> list[RuleCheck]:
    """Applies every configured gate rule to the candidate's metrics; one check per rule (and class).

    Args:
        metrics: The candidate's `classification_metrics`.
        baseline: The published model's figures on the same images, or None.
        config: The thresholds: `min_accuracy`, `max_regression`, and when set,
            `min_class_recall` and `max_class_regression` (per class).

    Returns:
        The checks; the candidate is blessed only if all passed.
    """
    accuracy = metrics["accuracy"]
    checks = [
        _at_least("min_accuracy", "accuracy", accuracy, config.min_accuracy, f"min_accuracy {config.min_accuracy}")
    ]
    if baseline is not None:
        floor = baseline.accuracy - config.max_regression
        checks.append(
            _at_least(
                "max_regression",
                "accuracy",
                accuracy,
                floor,
                f"baseline {baseline.accuracy:.4f} - max_regression {config.max_regression} = {floor:.4f}",
            )
        )
    recall = {name: values["recall"] for name, values in metrics["per_class"].items()}
    if config.min_class_recall is not None:
        for name, value in recall.items():
            floor_text = f"min_class_recall {config.min_class_recall}"
            checks.append(
                _at_least(f"min_class_recall[{name}]", f"recall of {name}", value, config.min_class_recall, floor_text)
            )
    if config.max_class_regression is not None and baseline is not None:
        for name, value in recall.items():
            base = baseline.class_recall.get(name, 0.0)
            floor = base - config.max_class_regression
            floor_text = f"baseline {base:.4f} - max_class_regression {config.max_class_regression} = {floor:.4f}"
            checks.append(_at_least(f"max_class_regression[{name}]", f"recall of {name}", value, floor, floor_text))
    return checks


def evaluate(
    config: PipelineConfig, snapshot: Snapshot, model_path: str | Path, serving: int | None = None
) -> EvaluationResult:
    """Runs the evaluate stage.

    Args:
        config: Uses `test_split`, the gate thresholds and the model base path.
        snapshot: The data snapshot.
        model_path: The trained Keras model (`model.keras`).
        serving: The version labelled `stable`, the default baseline (else the newest published
            version; `config.baseline_version` overrides both).

    Returns:
        The metrics, the gate decision and where they were written.
    """
    out = stage_dir(config, "evaluate")
    images, labels = snapshot.split_arrays(config.test_split)
    metrics = classification_metrics(labels, predict_keras(Path(model_path), images), snapshot.class_names)
    notes: list[str] = []
    baseline = _baseline(config, snapshot, images, labels, notes, serving)
    rules = gate_rules(metrics, baseline, config)
    blessed = all(check.passed for check in rules)
    # The failing rules first: they are what a person reads in a one-line summary.
    reasons = notes + [c.reason for c in rules if not c.passed] + [c.reason for c in rules if c.passed]
    log.info("gate: %s (%s)", "BLESSED" if blessed else "NOT blessed", "; ".join(reasons))
    baseline_version = baseline.version if baseline else None
    baseline_accuracy = baseline.accuracy if baseline else None

    confusion_path = atomic_write_json(
        out / "confusion_matrix.json",
        {"class_names": snapshot.class_names, "matrix": metrics["confusion_matrix"]},
    )
    confusion_png = plot_confusion_matrix(
        metrics["confusion_matrix"], snapshot.class_names, out / "confusion_matrix.png"
    )
    evaluation_path = atomic_write_json(
        out / "evaluation.json",
        {
            "model_path": str(model_path),
            "snapshot": snapshot.path.name,
            "fingerprint": snapshot.fingerprint,
            "split": config.test_split,
            "metrics": metrics,
            "baseline": {
                "version": baseline_version,
                "accuracy": baseline_accuracy,
                "class_recall": baseline.class_recall if baseline else None,
            },
            "thresholds": {
                "min_accuracy": config.min_accuracy,
                "max_regression": config.max_regression,
                "min_class_recall": config.min_class_recall,
                "max_class_regression": config.max_class_regression,
            },
            "blessed": blessed,
            "rules": [dataclasses.asdict(check) for check in rules],
            "reasons": reasons,
            "evaluated_at": utc_now(),
        },
    )
    return EvaluationResult(
        evaluation_path=evaluation_path,
        confusion_matrix_path=confusion_path,
        confusion_matrix_png=confusion_png,
        blessed=blessed,
        accuracy=metrics["accuracy"],
        baseline_version=baseline_version,
        baseline_accuracy=baseline_accuracy,
        reasons=reasons,
    )
