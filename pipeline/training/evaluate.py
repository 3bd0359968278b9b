"""Stage 5, evaluate: the task's metrics on the held-out split, a baseline, and the gate.

Metrics follow the task (`pipeline.core.problem.METRICS`): classification gets accuracy, log
loss, macro F1, per-class precision/recall/F1 and the confusion matrix; binary adds ROC AUC and
precision, recall and F1 of the positive class at `decision_threshold`; regression gets RMSE,
MAE and R². The plot is the confusion matrix, or predictions against the truth.

The candidate is blessed only if it passes every rule, each recorded as an explicit pass/fail
check with its numbers (`rules` in evaluation.json):

- `min_accuracy` (classification, unless none): accuracy at least that;
- `gate_threshold` (when set): `gate_metric` at least that (higher-is-better metrics) or at
  most that (rmse, mae, log_loss);
- `max_regression` (when there is a baseline): `gate_metric` no more than that worse than the
  published baseline's on the same rows;
- `min_class_recall`, `max_class_regression` (classification, when set): per class;
- `slice_min_metric`, `slice_max_regression` (when set): per slice, the rows where one of
  `slice_features` (categorical) has one value (TFMA's slicing idea); slices with fewer than
  `slice_min_size` test rows are reported but not gated. evaluation.json lists every slice's
  metrics, worst first.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import model_repo
from pipeline.core.artifacts import StageResult, atomic_output, atomic_write_json, stage_dir, utc_now
from pipeline.core.config import AUTO, PipelineConfig
from pipeline.core.problem import (
    BINARY,
    HEADLINE_METRICS,
    IMAGE,
    METRICS,
    REGRESSION,
    ProblemSpec,
    check_metric_for_task,
    higher_is_better,
)
from pipeline.data.snapshot import TEST, Snapshot

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvaluationResult(StageResult):
    """Outputs of the evaluate stage.

    Attributes:
        evaluation_path: evaluation.json (metrics, baseline, rules, decision).
        plot_path: The confusion matrix (classification) or predictions-vs-truth (regression) PNG.
        confusion_matrix_path: The confusion matrix as JSON (None for regression).
        blessed: The gate's decision.
        metric: The gate metric, e.g. 'accuracy' or 'rmse'.
        score: The candidate's value of it.
        headline: The task's headline metrics ({name: value}).
        baseline_version: The published version compared with, if any.
        baseline_score: Its value of the gate metric on the same rows.
        reasons: Why, failing rules first.
    """

    evaluation_path: Path
    plot_path: Path
    confusion_matrix_path: Path | None
    blessed: bool
    metric: str
    score: float
    headline: dict[str, float]
    baseline_version: int | None
    baseline_score: float | None
    reasons: list[str]


def _round(value: float) -> float:
    return round(float(value), 6)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of scores for labels in {0, 1} (ties count half); 0.5 when one class is absent."""
    positives = labels == 1
    count_pos, count_neg = int(positives.sum()), int((~positives).sum())
    if count_pos == 0 or count_neg == 0:
        return 0.5
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties (1-based).
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    return float((ranks[positives].sum() - count_pos * (count_pos + 1) / 2) / (count_pos * count_neg))


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: list[str], predictions: np.ndarray | None = None
) -> dict[str, Any]:
    """Computes log loss, accuracy, per-class precision/recall/F1 and the confusion matrix.

    Args:
        labels: int [N] true classes.
        probabilities: float [N, C] predicted class probabilities.
        class_names: C names.
        predictions: int [N] predicted classes (default: the most probable).

    Returns:
        A JSON-serialisable dict; `loss` and `log_loss` are the same figure.
    """
    num_classes = len(class_names)
    if predictions is None:
        predictions = probabilities.argmax(axis=1)
    picked = probabilities[np.arange(labels.shape[0]), labels]
    loss = float(-np.log(np.clip(picked, 1e-7, 1.0)).mean()) if labels.size else 0.0
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
            "precision": _round(precision[i]),
            "recall": _round(recall[i]),
            "f1": _round(f1[i]),
            "support": int(actual[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "examples": int(labels.shape[0]),
        "loss": _round(loss),
        "log_loss": _round(loss),
        "accuracy": _round(true_positive.sum() / max(labels.shape[0], 1)),
        "macro_f1": _round(f1.mean()),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str], threshold: float):
    """`classification_metrics` at a decision threshold, plus ROC AUC and the positive class's precision/recall/F1."""
    predictions = (probabilities[:, 1] >= threshold).astype(np.int64)
    metrics = classification_metrics(labels, probabilities, class_names, predictions)
    positive = metrics["per_class"][class_names[1]]
    metrics.update(
        auc=_round(roc_auc(labels, probabilities[:, 1])),
        precision=positive["precision"],
        recall=positive["recall"],
        f1=positive["f1"],
        threshold=threshold,
        positive_class=class_names[1],
    )
    return metrics


def regression_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
    """RMSE, MAE, R² (1 - residual / total sum of squares) and the residuals' spread."""
    labels = labels.astype(np.float64)
    residuals = predictions.astype(np.float64) - labels
    total = float(((labels - labels.mean()) ** 2).sum()) if labels.size else 0.0
    return {
        "examples": int(labels.shape[0]),
        "rmse": _round(np.sqrt(np.mean(residuals**2))) if labels.size else 0.0,
        "mae": _round(np.mean(np.abs(residuals))) if labels.size else 0.0,
        "r2": _round(1.0 - float((residuals**2).sum()) / total) if total > 0 else 0.0,
        "label_mean": _round(labels.mean()) if labels.size else 0.0,
        "label_std": _round(labels.std()) if labels.size else 0.0,
        "residual_quantiles": {q: _round(np.quantile(residuals, float(q))) for q in ("0.05", "0.5", "0.95")}
        if labels.size
        else {},
    }


def task_metrics(problem: ProblemSpec, labels: np.ndarray, outputs: dict[str, np.ndarray], threshold: float):
    """The task's metrics, with `headline` (the task's main figures) for run notes and cards.

    Args:
        problem: The problem spec.
        labels: True class ids or values [N].
        outputs: The serving signature's outputs (`probabilities` or `predictions`).
        threshold: Binary decision threshold.
    """
    if problem.task == REGRESSION:
        metrics = regression_metrics(labels, outputs["predictions"])
    elif problem.task == BINARY:
        metrics = binary_metrics(labels, outputs["probabilities"], list(problem.class_names), threshold)
    else:
        metrics = classification_metrics(labels, outputs["probabilities"], list(problem.class_names))
    metrics["headline"] = {name: metrics[name] for name in HEADLINE_METRICS[problem.task]}
    return metrics


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


def plot_predictions(labels: np.ndarray, predictions: np.ndarray, path: Path, label: str) -> Path:
    """Draws predictions against the truth (and the diagonal) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 6))
    axis.scatter(labels, predictions, s=6, alpha=0.4)
    low, high = float(min(labels.min(), predictions.min())), float(max(labels.max(), predictions.max()))
    axis.plot([low, high], [low, high], color="black", linewidth=1)
    axis.set_xlabel(f"true {label}")
    axis.set_ylabel(f"predicted {label}")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
    return path


def serving_outputs(problem: ProblemSpec, raw: np.ndarray) -> dict[str, np.ndarray]:
    """A Keras model's raw output as the serving signature answers it (binary [N,1] -> [N,2])."""
    raw = np.asarray(raw, np.float32)
    if problem.task == REGRESSION:
        return {"predictions": raw.reshape(-1)}
    if problem.task == BINARY:
        positive = raw.reshape(-1, 1)
        return {"probabilities": np.concatenate([1.0 - positive, positive], axis=1)}
    return {"probabilities": raw}


EVALUATION_BATCH = 512


def _keras_inputs(problem: ProblemSpec, features: dict[str, np.ndarray]) -> dict:
    import tensorflow as tf

    return {
        f.key: tf.constant(features[f.key].astype(np.float32) if f.kind == IMAGE else _tensor_values(features[f.key]))
        for f in problem.features
    }


def predict_keras(model_path: Path, problem: ProblemSpec, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A saved Keras model's answers for raw features held in memory, as the serving signature gives them."""
    import tensorflow as tf

    from pipeline.training.models import load_model

    model = load_model(model_path)
    inputs = {
        f.key: features[f.key].astype(np.float32) if f.kind == IMAGE else _tensor_values(features[f.key])
        for f in problem.features
    }
    dataset = tf.data.Dataset.from_tensor_slices(inputs).batch(EVALUATION_BATCH)
    return serving_outputs(problem, model.predict(dataset, verbose=0))


def _tensor_values(values: np.ndarray) -> np.ndarray:
    return values.astype(str) if values.dtype == object else values


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The published model the candidate is compared with, on the same test rows."""

    version: int
    metrics: dict[str, float]
    class_recall: dict[str, float]


@dataclasses.dataclass(frozen=True)
class RuleCheck:
    """One gate rule applied: which rule, whether the candidate passed it, and why, with the numbers."""

    rule: str
    passed: bool
    reason: str


def _comparable(version_dir: Path, problem: ProblemSpec) -> str | None:
    """Why a published version cannot be compared with a candidate for this problem, or None if it can."""
    card = model_repo.read_model_card(version_dir) or {}
    if "problem" in card:
        theirs = ProblemSpec.from_dict(card["problem"])
        if theirs.task != problem.task:
            return f"it solves a {theirs.task} task"
        if theirs.serving_inputs() != problem.serving_inputs():
            return "it takes other inputs"
        if theirs.class_names != problem.class_names:
            return "it has other class names"
        return None
    # A version exported before problem specs: an image classifier with class names in its assets.
    if problem.single_image is None or not problem.is_classification:
        return "it takes other inputs"
    if model_repo.read_class_names(version_dir) != list(problem.class_names):
        return "it has other class names"
    return None


def _request_inputs(problem: ProblemSpec, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f.key: _tensor_values(features[f.key]) for f in problem.features}


def _baseline_version(
    config: PipelineConfig, problem: ProblemSpec, notes: list[str], serving: int | None
) -> int | None:
    """The published version to compare with, or None with a note saying why there is none."""
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
    try:
        why_not = _comparable(config.model_dir / str(version), problem)
    except Exception as err:  # A broken published model must not block a good candidate.
        why_not = f"its model card cannot be read ({err})"
    if why_not:
        notes.append(f"baseline version {version} is not comparable: {why_not}")
        return None
    return version


@dataclasses.dataclass
class SplitPredictions:
    """A split's labels, the candidate's and the baseline's answers, and the slice features' values."""

    labels: np.ndarray
    outputs: dict[str, np.ndarray]
    baseline_outputs: dict[str, np.ndarray] | None
    slice_columns: dict[str, np.ndarray]


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]} if parts else {}


def predict_split(
    snapshot: Snapshot,
    split: str,
    model_path: Path,
    baseline_dir: Path | None,
    slice_keys: list[str],
    notes: list[str],
) -> SplitPredictions:
    """Streams a split once, a batch at a time: the candidate's and the baseline's answers.

    Only the answers, the labels and the slice features' values are kept, not the features.
    A baseline that fails to answer is dropped with a note (a broken published model must
    not block a good candidate).
    """
    from pipeline.training.models import load_model

    problem = snapshot.problem
    model = load_model(model_path)
    baseline = None
    if baseline_dir is not None:
        try:
            baseline = model_repo.load_signature(baseline_dir)
        except Exception as err:
            notes.append(f"baseline version {baseline_dir.name} could not be evaluated ({err}): no baseline")
            log.warning("baseline %s failed to load: %s", baseline_dir, err)
    labels, outputs, baseline_outputs = [], [], []
    slices: dict[str, list[np.ndarray]] = {key: [] for key in slice_keys}
    for features, batch_labels in snapshot.iter_batches(split, EVALUATION_BATCH):
        labels.append(batch_labels)
        outputs.append(serving_outputs(problem, model.predict_on_batch(_keras_inputs(problem, features))))
        if baseline is not None:
            try:
                baseline_outputs.append(model_repo.call_signature(baseline, _request_inputs(problem, features)))
            except Exception as err:
                notes.append(f"baseline version {baseline_dir.name} could not be evaluated ({err}): no baseline")
                log.warning("baseline %s failed to evaluate: %s", baseline_dir, err)
                baseline, baseline_outputs = None, []
        for key in slice_keys:
            slices[key].append(features[key])
    return SplitPredictions(
        labels=np.concatenate(labels) if labels else np.zeros(0),
        outputs=_concatenate(outputs),
        baseline_outputs=_concatenate(baseline_outputs) if baseline is not None else None,
        slice_columns={key: np.concatenate(values) for key, values in slices.items() if values},
    )


def baseline_figures(
    problem: ProblemSpec, version: int, labels: np.ndarray, outputs: dict[str, np.ndarray], threshold: float
) -> Baseline:
    """The baseline's metrics and per-class recall on the test rows."""
    metrics = task_metrics(problem, labels, outputs, threshold)
    recall = {name: values["recall"] for name, values in metrics.get("per_class", {}).items()}
    scores = {name: metrics[name] for name, (_, tasks) in METRICS.items() if problem.task in tasks}
    return Baseline(version, scores, recall)


def _check(rule: str, what: str, value: float, bound: float, bound_text: str, higher_better: bool) -> RuleCheck:
    passed = value >= bound if higher_better else value <= bound
    sign = (">=" if passed else "<") if higher_better else ("<=" if passed else ">")
    return RuleCheck(rule, passed, f"{what} {value:.4f} {sign} {bound_text}")


@dataclasses.dataclass(frozen=True)
class SliceResult:
    """One slice of the test split (rows where a categorical feature has one value) and its figures."""

    feature: str
    value: str
    rows: int
    metrics: dict[str, float]
    score: float | None  # the gate metric (None when it cannot be measured on the slice)
    baseline_score: float | None
    gated: bool
    note: str

    @property
    def name(self) -> str:
        return f"{self.feature}={self.value if self.value != '' else '<missing>'}"


def _outputs_where(outputs: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[mask] for name, values in outputs.items()}


def _slice_score(problem: ProblemSpec, metric: str, labels, outputs, threshold: float):
    """The slice's headline metrics and gate metric; the gate metric is None when one class only makes AUC moot."""
    metrics = task_metrics(problem, labels, outputs, threshold)
    if metric == "auc" and len(np.unique(labels)) < 2:
        return metrics["headline"], None
    return metrics["headline"], metrics[metric]


def slice_results(
    config: PipelineConfig,
    problem: ProblemSpec,
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    outputs: dict[str, np.ndarray],
    baseline_outputs: dict[str, np.ndarray] | None,
) -> list[SliceResult]:
    """The task's metrics on each slice of `slice_features`, the candidate's and the baseline's, worst first.

    Returns:
        One result per (feature, value), sorted by the gate metric from worst to best; slices
        smaller than `slice_min_size` are reported but not gated.
    """
    metric = gate_metric(config, problem)
    higher = higher_is_better(metric)
    results = []
    keys = {f.name: f.key for f in problem.features}
    for name in config.slice_features or ():
        key = keys.get(name, name)
        values = features[key]
        for value in sorted(set(values.tolist()), key=str):
            mask = values == value
            rows = int(mask.sum())
            headline, score = _slice_score(
                problem, metric, labels[mask], _outputs_where(outputs, mask), config.decision_threshold
            )
            base = None
            if baseline_outputs is not None:
                _, base = _slice_score(
                    problem, metric, labels[mask], _outputs_where(baseline_outputs, mask), config.decision_threshold
                )
            if rows < config.slice_min_size:
                gated, note = False, f"{rows} rows < slice_min_size {config.slice_min_size}: reported, not gated"
            elif score is None:
                gated, note = False, f"one class only: {metric} is not defined"
            else:
                gated, note = True, ""
            results.append(SliceResult(key, str(value), rows, headline, score, base, gated, note))
    worst_first = sorted(
        results,
        key=lambda r: (r.score is None, (r.score if higher else -r.score) if r.score is not None else 0.0),
    )
    return worst_first


def slice_rules(results: list[SliceResult], config: PipelineConfig, metric: str) -> list[RuleCheck]:
    """The slice rules on every gated slice: `slice_min_metric` and `slice_max_regression`."""
    higher = higher_is_better(metric)
    checks = []
    for result in results:
        if not result.gated:
            continue
        what = f"{metric} of {result.name} ({result.rows} rows)"
        if config.slice_min_metric is not None:
            checks.append(
                _check(
                    f"slice_min_metric[{result.name}]",
                    what,
                    result.score,
                    config.slice_min_metric,
                    f"slice_min_metric {config.slice_min_metric}",
                    higher,
                )
            )
        if config.slice_max_regression is not None and result.baseline_score is not None:
            base, allowed = result.baseline_score, config.slice_max_regression
            bound = base - allowed if higher else base + allowed
            checks.append(
                _check(
                    f"slice_max_regression[{result.name}]",
                    what,
                    result.score,
                    bound,
                    f"baseline {base:.4f} {'-' if higher else '+'} slice_max_regression {allowed} = {bound:.4f}",
                    higher,
                )
            )
    return checks


def gate_metric(config: PipelineConfig, problem: ProblemSpec) -> str:
    """The metric the gate judges: `gate_metric`, or the task's default for 'auto'.

    Raises:
        ConfigError: if the metric does not exist for the task.
    """
    metric = problem.default_metric if config.gate_metric == AUTO else config.gate_metric
    check_metric_for_task(metric, problem.task, "gate_metric")
    return metric


def gate_rules(
    metrics: dict[str, Any], baseline: Baseline | None, config: PipelineConfig, problem: ProblemSpec
) -> list[RuleCheck]:
    """Applies every configured gate rule to the candidate's metrics; one check per rule (and class).

    Args:
        metrics: The candidate's `task_metrics`.
        baseline: The published model's figures on the same rows, or None.
        config: The thresholds (see the module doc).
        problem: The problem spec (its task says which rules apply).

    Returns:
        The checks; the candidate is blessed only if all passed.
    """
    metric = gate_metric(config, problem)
    higher = higher_is_better(metric)
    checks = []
    if problem.is_classification and config.min_accuracy is not None:
        checks.append(
            _check(
                "min_accuracy",
                "accuracy",
                metrics["accuracy"],
                config.min_accuracy,
                f"min_accuracy {config.min_accuracy}",
                True,
            )
        )
    if config.gate_threshold is not None:
        checks.append(
            _check(
                "gate_threshold",
                metric,
                metrics[metric],
                config.gate_threshold,
                f"gate_threshold {config.gate_threshold}",
                higher,
            )
        )
    if baseline is not None:
        base = baseline.metrics[metric]
        bound = base - config.max_regression if higher else base + config.max_regression
        checks.append(
            _check(
                "max_regression",
                metric,
                metrics[metric],
                bound,
                f"baseline {base:.4f} {'-' if higher else '+'} max_regression {config.max_regression} = {bound:.4f}",
                higher,
            )
        )
    recall = {name: values["recall"] for name, values in metrics.get("per_class", {}).items()}
    if config.min_class_recall is not None:
        for name, value in recall.items():
            floor_text = f"min_class_recall {config.min_class_recall}"
            checks.append(
                _check(
                    f"min_class_recall[{name}]", f"recall of {name}", value, config.min_class_recall, floor_text, True
                )
            )
    if config.max_class_regression is not None and baseline is not None:
        for name, value in recall.items():
            base = baseline.class_recall.get(name, 0.0)
            floor = base - config.max_class_regression
            floor_text = f"baseline {base:.4f} - max_class_regression {config.max_class_regression} = {floor:.4f}"
            checks.append(_check(f"max_class_regression[{name}]", f"recall of {name}", value, floor, floor_text, True))
    return checks


def evaluate(
    config: PipelineConfig, snapshot: Snapshot, model_path: str | Path, serving: int | None = None
) -> EvaluationResult:
    """Runs the evaluate stage.

    Args:
        config: Uses `test_split`, the gate options and the model base path.
        snapshot: The data snapshot (its problem spec says which metrics apply).
        model_path: The trained Keras model (`model.keras`).
        serving: The version labelled `stable`, the default baseline (else the newest published
            version; `config.baseline_version` overrides both).

    Returns:
        The metrics, the gate decision and where they were written.

    Raises:
        ConfigError: if `gate_metric` does not exist for the task, or a slice feature is not categorical.
    """
    problem = snapshot.problem
    config.check_for(problem)
    metric = gate_metric(config, problem)
    out = stage_dir(config, "evaluate")
    split = snapshot.resolve_split(config.test_split, TEST)
    notes: list[str] = []
    version = _baseline_version(config, problem, notes, serving)
    keys = {f.name: f.key for f in problem.features}
    slice_keys = [keys.get(name, name) for name in config.slice_features or ()]
    baseline_dir = config.model_dir / str(version) if version is not None else None
    predicted = predict_split(snapshot, split, Path(model_path), baseline_dir, slice_keys, notes)
    labels, outputs = predicted.labels, predicted.outputs
    metrics = task_metrics(problem, labels, outputs, config.decision_threshold)
    baseline, baseline_outputs = None, predicted.baseline_outputs
    if baseline_outputs is not None:
        baseline = baseline_figures(problem, version, labels, baseline_outputs, config.decision_threshold)
    slices = slice_results(config, problem, predicted.slice_columns, labels, outputs, baseline_outputs)
    rules = gate_rules(metrics, baseline, config, problem) + slice_rules(slices, config, metric)
    blessed = all(check.passed for check in rules)
    # The failing rules first: they are what a person reads in a one-line summary.
    reasons = notes + [c.reason for c in rules if not c.passed] + [c.reason for c in rules if c.passed]
    if not rules:
        reasons.append("no gate rule is configured: blessed")
    log.info("gate: %s (%s)", "BLESSED" if blessed else "NOT blessed", "; ".join(reasons))
    baseline_score = baseline.metrics[metric] if baseline else None

    confusion_path = None
    if problem.is_classification:
        confusion_path = atomic_write_json(
            out / "confusion_matrix.json",
            {"class_names": snapshot.class_names, "matrix": metrics["confusion_matrix"]},
        )
        plot_path = plot_confusion_matrix(
            metrics["confusion_matrix"], snapshot.class_names, out / "confusion_matrix.png"
        )
    else:
        plot_path = plot_predictions(labels, outputs["predictions"], out / "predictions.png", problem.label)
    evaluation_path = atomic_write_json(
        out / "evaluation.json",
        {
            "model_path": str(model_path),
            "snapshot": snapshot.path.name,
            "fingerprint": snapshot.fingerprint,
            "split": split,
            "task": problem.task,
            "gate_metric": metric,
            "metrics": metrics,
            "baseline": {
                "version": baseline.version if baseline else None,
                "metrics": baseline.metrics if baseline else None,
                "class_recall": baseline.class_recall if baseline else None,
            },
            "thresholds": {
                "gate_metric": metric,
                "gate_threshold": config.gate_threshold,
                "min_accuracy": config.min_accuracy if problem.is_classification else None,
                "max_regression": config.max_regression,
                "min_class_recall": config.min_class_recall,
                "max_class_regression": config.max_class_regression,
                "decision_threshold": config.decision_threshold if problem.task == BINARY else None,
                "slice_features": config.slice_features,
                "slice_min_size": config.slice_min_size,
                "slice_min_metric": config.slice_min_metric,
                "slice_max_regression": config.slice_max_regression,
            },
            "slices": [{**dataclasses.asdict(result), "name": result.name} for result in slices],
            "blessed": blessed,
            "rules": [dataclasses.asdict(check) for check in rules],
            "reasons": reasons,
            "evaluated_at": utc_now(),
        },
    )
    return EvaluationResult(
        evaluation_path=evaluation_path,
        plot_path=plot_path,
        confusion_matrix_path=confusion_path,
        blessed=blessed,
        metric=metric,
        score=metrics[metric],
        headline=metrics["headline"],
        baseline_version=baseline.version if baseline else None,
        baseline_score=baseline_score,
        reasons=reasons,
    )
