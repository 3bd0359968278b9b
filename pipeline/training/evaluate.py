"""Stage 5, evaluate: metrics on the held-out split, a baseline, and the gate.

The candidate is blessed only if its accuracy is at least `min_accuracy` and no
more than `max_regression` below the published baseline (when there is one).
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
    import keras

    model = keras.models.load_model(model_path)
    return np.asarray(model.predict(images.astype(np.float32), batch_size=512, verbose=0), np.float32)


def _baseline(config: PipelineConfig, snapshot: Snapshot, images, labels, reasons: list[str]):
    """Evaluates the published baseline; returns (version, accuracy) or (None, None)."""
    versions = model_repo.published_versions(config.model_dir)
    if config.baseline_version is not None:
        if config.baseline_version not in versions:
            reasons.append(f"baseline version {config.baseline_version} is not published: no baseline")
            return None, None
        version = config.baseline_version
    elif versions:
        version = versions[-1]
    else:
        reasons.append("no published model: no baseline comparison (first run)")
        return None, None
    version_dir = config.model_dir / str(version)
    try:
        if model_repo.read_class_names(version_dir) != snapshot.class_names:
            reasons.append(f"baseline version {version} has other class names: not comparable")
            return None, None
        probabilities = model_repo.predict_saved_model(version_dir, images)["probabilities"]
    except Exception as err:  # A broken published model must not block a good candidate.
        reasons.append(f"baseline version {version} could not be evaluated ({err}): no baseline")
        log.warning("baseline %s failed to evaluate: %s", version_dir, err)
        return None, None
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    return version, round(accuracy, 6)


def gate(accuracy: float, baseline_accuracy: float | None, config: PipelineConfig, reasons: list[str]) -> bool:
    """Applies the blessing rules, appending one reason per rule to `reasons`."""
    blessed = True
    if accuracy >= config.min_accuracy:
        reasons.append(f"accuracy {accuracy:.4f} >= min_accuracy {config.min_accuracy}")
    else:
        reasons.append(f"accuracy {accuracy:.4f} < min_accuracy {config.min_accuracy}")
        blessed = False
    if baseline_accuracy is not None:
        floor = baseline_accuracy - config.max_regression
        relation = ">=" if accuracy >= floor else "<"
        reasons.append(
            f"accuracy {accuracy:.4f} {relation} baseline {baseline_accuracy:.4f} - "
            f"max_regression {config.max_regression} = {floor:.4f}"
        )
        blessed = blessed and accuracy >= floor
    return blessed


def evaluate(config: PipelineConfig, snapshot: Snapshot, model_path: str | Path) -> EvaluationResult:
    """Runs the evaluate stage.

    Args:
        config: Uses `test_split`, the gate thresholds and the model base path.
        snapshot: The data snapshot.
        model_path: The trained Keras model (`model.keras`).

    Returns:
        The metrics, the gate decision and where they were written.
    """
    out = stage_dir(config, "evaluate")
    images, labels = snapshot.split_arrays(config.test_split)
    metrics = classification_metrics(labels, predict_keras(Path(model_path), images), snapshot.class_names)
    reasons: list[str] = []
    baseline_version, baseline_accuracy = _baseline(config, snapshot, images, labels, reasons)
    blessed = gate(metrics["accuracy"], baseline_accuracy, config, reasons)
    log.info("gate: %s (%s)", "BLESSED" if blessed else "NOT blessed", "; ".join(reasons))

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
            "baseline": {"version": baseline_version, "accuracy": baseline_accuracy},
            "thresholds": {"min_accuracy": config.min_accuracy, "max_regression": config.max_regression},
            "blessed": blessed,
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
