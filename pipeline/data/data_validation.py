"""Stage 2, validate: statistics, schema and drift checks for a snapshot.

Statistics follow the problem spec: per split, the row count, the label's histogram
(classification) or moments (regression), rows dropped for lack of a label, and per feature:
numbers' count, missing count, mean, std, min and max; categories' missing count, number of
distinct values and most frequent values; texts' empty count and mean length in words;
images' shape, dtype and pixel moments.

On the first run for a dataset the schema (its problem spec: features, kinds, dtypes,
shapes, task, class names, splits) is inferred and stored; every later snapshot is checked
against it and against the statistics of the last accepted snapshot. An anomalies report is
always written; a severe anomaly fails the stage with a message naming the check and its numbers.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import StageResult, atomic_write_json, read_json, stage_dir, utc_now
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import DataValidationError
from pipeline.core.problem import CATEGORICAL, IMAGE, NUMERIC, FeatureSpec, ProblemSpec
from pipeline.data.snapshot import Snapshot

log = logging.getLogger(__name__)

ERROR = "error"
WARNING = "warning"


@dataclasses.dataclass(frozen=True)
class ValidationResult(StageResult):
    """Outputs of the validate stage.

    Attributes:
        report_path: anomalies.json of this run.
        statistics_path: statistics.json of this run.
        schema_path: The dataset's stored schema.
        severe: Whether a severe anomaly was found (the stage raised if so).
        anomalies: Number of failed checks, any severity.
    """

    report_path: Path
    statistics_path: Path
    schema_path: Path
    severe: bool
    anomalies: int


TOP_VALUES = 20
SCHEMA_FORMAT = 2
_WORD = re.compile(r"\w+")


def image_statistics(images: np.ndarray) -> dict[str, Any]:
    """Shape, dtype and pixel moments of uint8 images [N, H, W, C]."""
    pixels = images.astype(np.float64)
    return {
        "image_shape": list(images.shape[1:]),
        "dtype": str(images.dtype),
        "pixel_mean": float(pixels.mean()) if pixels.size else 0.0,
        "pixel_std": float(pixels.std()) if pixels.size else 0.0,
        "pixel_min": int(images.min()) if images.size else 0,
        "pixel_max": int(images.max()) if images.size else 0,
    }


def feature_statistics(feature: FeatureSpec, values: np.ndarray) -> dict[str, Any]:
    """The statistics of one feature's values in one split (see the module doc)."""
    if feature.kind == IMAGE:
        return image_statistics(values)
    if feature.kind == NUMERIC:
        numbers = values.astype(np.float64)
        present = numbers[~np.isnan(numbers)]
        return {
            "count": int(len(numbers)),
            "missing": int(len(numbers) - len(present)),
            "mean": float(present.mean()) if present.size else None,
            "std": float(present.std()) if present.size else None,
            "min": float(present.min()) if present.size else None,
            "max": float(present.max()) if present.size else None,
        }
    if feature.kind == CATEGORICAL:
        counts = collections.Counter(values.tolist())
        top = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))[:TOP_VALUES]
        return {
            "count": int(len(values)),
            "missing": int(counts.get("", 0)),
            "distinct": len(counts),
            "top": [[value if isinstance(value, str) else int(value), count] for value, count in top],
        }
    words = [len(_WORD.findall(text)) for text in values]
    return {
        "count": int(len(values)),
        "empty": int(sum(1 for text in values if not text)),
        "mean_words": float(np.mean(words)) if words else 0.0,
    }


def split_statistics(
    problem: ProblemSpec, features: dict[str, np.ndarray], labels: np.ndarray, dropped: int = 0
) -> dict[str, Any]:
    """Computes the statistics of one split.

    Args:
        problem: The problem spec.
        features: {feature key: values} of the split.
        labels: Class ids or values [N].
        dropped: Rows of the split left out at ingest because their label was missing.

    Returns:
        count, dropped_missing_label, label_histogram (classification) or label moments
        (regression), features; for a single-image problem also that image's statistics at the
        top level (image_shape, dtype, pixel_mean, pixel_std, pixel_min, pixel_max).
    """
    stats: dict[str, Any] = {"count": int(labels.shape[0]), "dropped_missing_label": int(dropped)}
    if problem.is_classification:
        stats["label_histogram"] = np.bincount(labels, minlength=problem.num_classes).astype(int).tolist()
    else:
        values = labels.astype(np.float64)
        stats["label"] = {
            "mean": float(values.mean()) if values.size else None,
            "std": float(values.std()) if values.size else None,
            "min": float(values.min()) if values.size else None,
            "max": float(values.max()) if values.size else None,
        }
    stats["features"] = {f.key: feature_statistics(f, features[f.key]) for f in problem.features}
    if problem.single_image:
        stats.update(stats["features"][problem.single_image.key])
    return stats


def snapshot_statistics(snapshot: Snapshot) -> dict[str, Any]:
    """Computes statistics for every split of a snapshot."""
    splits = {}
    for split in sorted(snapshot.splits):
        features, labels = snapshot.split_columns(split)
        splits[split] = split_statistics(snapshot.problem, features, labels, snapshot.dropped_rows.get(split, 0))
    return {
        "snapshot": snapshot.path.name,
        "fingerprint": snapshot.fingerprint,
        "task": snapshot.problem.task,
        "class_names": snapshot.class_names,
        "computed_at": utc_now(),
        "splits": splits,
    }


def infer_schema(snapshot: Snapshot, statistics: dict[str, Any]) -> dict[str, Any]:
    """Infers the schema every later snapshot of the dataset must match: its problem spec and splits."""
    schema = {
        "format": SCHEMA_FORMAT,
        "dataset": snapshot.name,
        "problem": snapshot.problem.to_dict(),
        "class_names": snapshot.class_names,
        "splits": sorted(snapshot.splits),
        "inferred_from": snapshot.fingerprint,
        "inferred_at": utc_now(),
    }
    if snapshot.image_shape:
        first = next(iter(statistics["splits"].values()))
        schema.update(image_shape=list(snapshot.image_shape), image_dtype=first["dtype"])
    return schema


def distribution(histogram: list[int]) -> np.ndarray:
    """A histogram as shares summing to 1 (all zeros when it counts nothing)."""
    counts = np.asarray(histogram, np.float64)
    return counts / counts.sum() if counts.sum() else counts


def _check(checks, name, split, passed, severity, message, value=None, threshold=None):
    checks.append(
        {
            "check": name,
            "split": split,
            "passed": bool(passed),
            "severity": severity,
            "value": value,
            "threshold": threshold,
            "message": message,
        }
    )


def check_schema(schema: dict[str, Any], statistics: dict[str, Any], problem: ProblemSpec, checks: list) -> None:
    """Appends the schema checks' results for a snapshot's problem spec and statistics to `checks`."""
    stored = ProblemSpec.from_dict(schema["problem"])
    _check(checks, "task", None, problem.task == stored.task, ERROR, f"task {problem.task} vs schema {stored.task}")
    _check(
        checks,
        "label",
        None,
        problem.label == stored.label,
        ERROR,
        f"label column {problem.label!r} vs schema {stored.label!r}",
    )
    now = {f.key: f for f in problem.features}
    before = {f.key: f for f in stored.features}
    missing, added = sorted(set(before) - set(now)), sorted(set(now) - set(before))
    _check(checks, "missing_features", None, not missing, ERROR, f"features missing: {missing}")
    _check(checks, "new_features", None, not added, ERROR, f"features not in schema: {added}")
    for key in sorted(set(now) & set(before)):
        was, new_one = before[key], now[key]
        _check(
            checks,
            "feature_type",
            None,
            (was.kind, was.dtype) == (new_one.kind, new_one.dtype),
            ERROR,
            f"feature {key!r} is {new_one.kind} {new_one.dtype} vs schema {was.kind} {was.dtype}",
        )
        if was.kind == IMAGE:
            for split, stats in statistics["splits"].items():
                image = stats["features"][key]
                _check(
                    checks,
                    "image_shape",
                    split,
                    image["image_shape"] == list(was.shape),
                    ERROR,
                    f"image shape {image['image_shape']} vs schema {list(was.shape)}",
                )
                _check(
                    checks,
                    "image_dtype",
                    split,
                    image["dtype"] == was.dtype,
                    ERROR,
                    f"image dtype {image['dtype']} vs schema {was.dtype}",
                )
    _check(
        checks,
        "class_names",
        None,
        statistics["class_names"] == schema["class_names"],
        ERROR,
        f"class names {statistics['class_names']} vs schema {schema['class_names']}",
    )
    missing_splits = sorted(set(schema["splits"]) - set(statistics["splits"]))
    new_splits = sorted(set(statistics["splits"]) - set(schema["splits"]))
    _check(checks, "missing_splits", None, not missing_splits, ERROR, f"splits missing: {missing_splits}")
    _check(checks, "new_splits", None, not new_splits, WARNING, f"splits not in schema: {new_splits}")


def check_snapshot(config: PipelineConfig, statistics: dict[str, Any], checks: list) -> None:
    """Appends checks that need only this snapshot: empty splits, missing classes, train/test skew."""
    splits = statistics["splits"]
    for split, stats in splits.items():
        _check(checks, "empty_split", split, stats["count"] > 0, ERROR, f"{stats['count']} examples")
        dropped = stats.get("dropped_missing_label", 0)
        _check(
            checks,
            "missing_labels",
            split,
            dropped == 0,
            WARNING,
            f"{dropped} rows had no label and were left out at ingest",
            dropped,
            0,
        )
        if "label_histogram" in stats:
            absent = [statistics["class_names"][i] for i, n in enumerate(stats["label_histogram"]) if n == 0]
            _check(checks, "missing_classes", split, not absent, WARNING, f"classes with no examples: {absent}")
    if "train" in splits and "test" in splits and "label_histogram" in splits["train"]:
        shift = float(
            np.abs(
                distribution(splits["train"]["label_histogram"]) - distribution(splits["test"]["label_histogram"])
            ).max()
        )
        _check(
            checks,
            "train_test_label_skew",
            "test",
            shift <= config.max_label_shift,
            WARNING,
            f"train vs test label distribution L-inf distance {shift:.4f} (threshold {config.max_label_shift})",
            round(shift, 6),
            config.max_label_shift,
        )


def _label_shift(stats: dict[str, Any], before: dict[str, Any]) -> float | None:
    if "label_histogram" not in stats or "label_histogram" not in before:
        return None  # Regression: no classes.
    if len(before["label_histogram"]) != len(stats["label_histogram"]):
        return None  # Other classes: the schema check reports it.
    return float(np.abs(distribution(stats["label_histogram"]) - distribution(before["label_histogram"])).max())


def _pixel_scale(before: dict[str, Any]) -> float:
    return max(before["pixel_std"], 1e-6)


def _pixel_mean_drift(stats: dict[str, Any], before: dict[str, Any]) -> float | None:
    if "pixel_mean" not in stats or "pixel_mean" not in before:
        return None  # Not a single-image problem.
    return abs(stats["pixel_mean"] - before["pixel_mean"]) / _pixel_scale(before)


def _pixel_std_drift(stats: dict[str, Any], before: dict[str, Any]) -> float | None:
    if "pixel_std" not in stats or "pixel_std" not in before:
        return None
    return abs(stats["pixel_std"] - before["pixel_std"]) / _pixel_scale(before)


# Drift of one split against the previous accepted snapshot, one row per check:
# (check, threshold option, measure(stats, before), description(stats, before, value, previous snapshot)).
DRIFT_CHECKS = (
    (
        "label_distribution_shift",
        "max_label_shift",
        _label_shift,
        lambda stats, before, value, previous: (
            f"label distribution L-inf distance {value:.4f} from snapshot {previous}"
        ),
    ),
    (
        "pixel_mean_drift",
        "max_pixel_drift",
        _pixel_mean_drift,
        lambda stats, before, value, previous: (
            f"pixel mean {stats['pixel_mean']:.3f} vs {before['pixel_mean']:.3f}: {value:.4f} previous stds"
        ),
    ),
    (
        "pixel_std_drift",
        "max_pixel_drift",
        _pixel_std_drift,
        lambda stats, before, value, previous: (
            f"pixel std {stats['pixel_std']:.3f} vs {before['pixel_std']:.3f}: relative change {value:.4f}"
        ),
    ),
    (
        "split_size_change",
        "max_split_size_change",
        lambda stats, before: abs(stats["count"] - before["count"]) / max(before["count"], 1),
        lambda stats, before, value, previous: (
            f"{stats['count']} examples vs {before['count']}: relative change {value:.4f}"
        ),
    ),
)


def check_drift(config: PipelineConfig, statistics: dict[str, Any], previous: dict[str, Any], checks: list) -> None:
    """Appends the checks of this snapshot against the previous accepted one (`DRIFT_CHECKS`)."""
    for split, stats in statistics["splits"].items():
        before = previous["splits"].get(split)
        if before is None:
            continue
        for name, option, measure, describe in DRIFT_CHECKS:
            value = measure(stats, before)
            if value is None:
                continue
            threshold = getattr(config, option)
            message = f"{describe(stats, before, value, previous['snapshot'])} (threshold {threshold})"
            _check(checks, name, split, value <= threshold, ERROR, message, round(value, 6), threshold)


def write_report(
    path: Path, snapshot: Snapshot, schema_path: Path, previous: dict[str, Any] | None, checks: list
) -> Path:
    """Writes the anomalies report (every check, the failed ones, severity) and logs each anomaly."""
    anomalies = [c for c in checks if not c["passed"]]
    for anomaly in anomalies:
        log.warning(
            "data anomaly (%s) %s[%s]: %s", anomaly["severity"], anomaly["check"], anomaly["split"], anomaly["message"]
        )
    return atomic_write_json(
        path,
        {
            "snapshot": snapshot.path.name,
            "fingerprint": snapshot.fingerprint,
            "schema": str(schema_path),
            "previous_snapshot": previous["snapshot"] if previous else None,
            "severe": any(a["severity"] == ERROR for a in anomalies),
            "anomalies": anomalies,
            "checks": checks,
            "checked_at": utc_now(),
        },
    )


def raise_if_severe(snapshot: Snapshot, anomalies: list[dict[str, Any]], report_path: Path) -> None:
    """Raises DataValidationError naming each severe anomaly and its numbers, if there is one."""
    severe = [a for a in anomalies if a["severity"] == ERROR]
    if severe:
        details = "; ".join(
            f"{a['check']}" + (f" [{a['split']}]" if a["split"] else "") + f": {a['message']}" for a in severe
        )
        raise DataValidationError(
            f"snapshot {snapshot.path.name} failed {len(severe)} severe data check(s): {details} "
            f"(report: {report_path})"
        )


def validation_state_dir(config: PipelineConfig, snapshot: Snapshot) -> Path:
    """Returns the folder holding a dataset's schema and last accepted statistics."""
    return config.workdir_path / "validation" / snapshot.name.replace("/", "_")


def run_checks(
    config: PipelineConfig, snapshot: Snapshot, statistics: dict[str, Any], schema_path: Path, reference_path: Path
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Checks the statistics against the stored schema (storing one on a first run or with
    `update_schema`), on their own, and against the last accepted snapshot's.

    Returns:
        (every check's result, the previous accepted statistics or None).
    """
    checks: list[dict[str, Any]] = []
    stored = read_json(schema_path) if schema_path.exists() else None
    if stored is not None and stored.get("format") != SCHEMA_FORMAT:
        log.warning("schema %s is of an older layout (no problem spec): storing this snapshot's instead", schema_path)
        stored = None
    if stored is not None and not config.update_schema:
        check_schema(stored, statistics, snapshot.problem, checks)
    else:
        atomic_write_json(schema_path, infer_schema(snapshot, statistics))
        log.info("stored schema %s", schema_path)
    check_snapshot(config, statistics, checks)
    previous = read_json(reference_path) if reference_path.exists() else None
    if previous is not None:
        check_drift(config, statistics, previous, checks)
    return checks, previous


def validate(config: PipelineConfig, snapshot: Snapshot) -> ValidationResult:
    """Runs the validate stage.

    Args:
        config: The pipeline config (thresholds, `update_schema`, run folder).
        snapshot: The snapshot to check.

    Returns:
        Where the report, statistics and schema are, and what was found.

    Raises:
        DataValidationError: naming each severe check and its numbers; the report is
            written first, and the snapshot is not accepted as the new reference.
    """
    out = stage_dir(config, "validate")
    state = validation_state_dir(config, snapshot)
    schema_path = state / "schema.json"
    reference_path = state / "latest_statistics.json"

    statistics = snapshot_statistics(snapshot)
    statistics_path = atomic_write_json(out / "statistics.json", statistics)

    checks, previous = run_checks(config, snapshot, statistics, schema_path, reference_path)
    anomalies = [c for c in checks if not c["passed"]]
    if config.update_schema:
        for anomaly in anomalies:
            if anomaly["severity"] == ERROR:
                anomaly["severity"] = WARNING
                anomaly["message"] += " [accepted: update_schema]"
    report_path = write_report(out / "anomalies.json", snapshot, schema_path, previous, checks)
    raise_if_severe(snapshot, anomalies, report_path)
    atomic_write_json(reference_path, statistics)
    return ValidationResult(report_path, statistics_path, schema_path, False, len(anomalies))
