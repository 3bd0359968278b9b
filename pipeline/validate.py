"""Stage 2, validate: statistics, schema and drift checks for a snapshot.

On the first run for a dataset the schema is inferred and stored; every later
snapshot is checked against it and against the statistics of the last accepted
snapshot. An anomalies report is always written; a severe anomaly fails the stage
with a message naming the check and its numbers.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import StageResult, atomic_write_json, read_json, stage_dir, utc_now
from pipeline.config import PipelineConfig
from pipeline.errors import DataValidationError
from pipeline.snapshot import Snapshot

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


def split_statistics(images: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Computes the statistics of one split.

    Args:
        images: uint8 [N, H, W, C].
        labels: int [N].
        num_classes: Length of the label histogram.

    Returns:
        count, label_histogram, image_shape, dtype, pixel_mean, pixel_std, pixel_min, pixel_max.
    """
    pixels = images.astype(np.float64)
    return {
        "count": int(labels.shape[0]),
        "label_histogram": np.bincount(labels, minlength=num_classes).astype(int).tolist(),
        "image_shape": list(images.shape[1:]),
        "dtype": str(images.dtype),
        "pixel_mean": float(pixels.mean()) if pixels.size else 0.0,
        "pixel_std": float(pixels.std()) if pixels.size else 0.0,
        "pixel_min": int(images.min()) if images.size else 0,
        "pixel_max": int(images.max()) if images.size else 0,
    }


def snapshot_statistics(snapshot: Snapshot) -> dict[str, Any]:
    """Computes statistics for every split of a snapshot."""
    splits = {}
    for split in sorted(snapshot.splits):
        images, labels = snapshot.split_arrays(split)
        splits[split] = split_statistics(images, labels, snapshot.num_classes)
    return {
        "snapshot": snapshot.path.name,
        "fingerprint": snapshot.fingerprint,
        "class_names": snapshot.class_names,
        "computed_at": utc_now(),
        "splits": splits,
    }


def infer_schema(snapshot: Snapshot, statistics: dict[str, Any]) -> dict[str, Any]:
    """Infers the schema every later snapshot of the dataset must match."""
    first = next(iter(statistics["splits"].values()))
    return {
        "dataset": snapshot.name,
        "image_shape": list(snapshot.image_shape),
        "image_dtype": first["dtype"],
        "class_names": snapshot.class_names,
        "splits": sorted(snapshot.splits),
        "inferred_from": snapshot.fingerprint,
        "inferred_at": utc_now(),
    }


def _distribution(histogram: list[int]) -> np.ndarray:
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


def check_schema(schema: dict[str, Any], statistics: dict[str, Any], checks: list) -> None:
    """Appends the schema checks' results for a snapshot's statistics to `checks`."""
    for split, stats in statistics["splits"].items():
        _check(
            checks, "image_shape", split, stats["image_shape"] == schema["image_shape"], ERROR,
            f"image shape {stats['image_shape']} vs schema {schema['image_shape']}",
        )  # fmt: skip
        _check(
            checks, "image_dtype", split, stats["dtype"] == schema["image_dtype"], ERROR,
            f"image dtype {stats['dtype']} vs schema {schema['image_dtype']}",
        )  # fmt: skip
    _check(
        checks, "class_names", None, statistics["class_names"] == schema["class_names"], ERROR,
        f"class names {statistics['class_names']} vs schema {schema['class_names']}",
    )  # fmt: skip
    missing = sorted(set(schema["splits"]) - set(statistics["splits"]))
    added = sorted(set(statistics["splits"]) - set(schema["splits"]))
    _check(checks, "missing_splits", None, not missing, ERROR, f"splits missing: {missing}")
    _check(checks, "new_splits", None, not added, WARNING, f"splits not in schema: {added}")


def check_snapshot(config: PipelineConfig, statistics: dict[str, Any], checks: list) -> None:
    """Appends checks that need only this snapshot: empty splits, missing classes, train/test skew."""
    splits = statistics["splits"]
    for split, stats in splits.items():
        _check(checks, "empty_split", split, stats["count"] > 0, ERROR, f"{stats['count']} examples")
        absent = [statistics["class_names"][i] for i, n in enumerate(stats["label_histogram"]) if n == 0]
        _check(checks, "missing_classes", split, not absent, WARNING, f"classes with no examples: {absent}")
    if "train" in splits and "test" in splits:
        shift = float(
            np.abs(
                _distribution(splits["train"]["label_histogram"]) - _distribution(splits["test"]["label_histogram"])
            ).max()
        )
        _check(
            checks, "train_test_label_skew", "test", shift <= config.max_label_shift, WARNING,
            f"train vs test label distribution L-inf distance {shift:.4f} "
            f"(threshold {config.max_label_shift})",
            round(shift, 6), config.max_label_shift,
        )  # fmt: skip


def check_drift(config: PipelineConfig, statistics: dict[str, Any], previous: dict[str, Any], checks: list) -> None:
    """Appends the checks of this snapshot against the previous accepted one."""
    for split, stats in statistics["splits"].items():
        before = previous["splits"].get(split)
        if before is None:
            continue
        if len(before["label_histogram"]) == len(stats["label_histogram"]):
            shift = float(
                np.abs(_distribution(stats["label_histogram"]) - _distribution(before["label_histogram"])).max()
            )
            _check(
                checks, "label_distribution_shift", split, shift <= config.max_label_shift, ERROR,
                f"label distribution L-inf distance {shift:.4f} from snapshot "
                f"{previous['snapshot']} (threshold {config.max_label_shift})",
                round(shift, 6), config.max_label_shift,
            )  # fmt: skip
        scale = max(before["pixel_std"], 1e-6)
        mean_drift = abs(stats["pixel_mean"] - before["pixel_mean"]) / scale
        _check(
            checks, "pixel_mean_drift", split, mean_drift <= config.max_pixel_drift, ERROR,
            f"pixel mean {stats['pixel_mean']:.3f} vs {before['pixel_mean']:.3f}: "
            f"{mean_drift:.4f} previous stds (threshold {config.max_pixel_drift})",
            round(mean_drift, 6), config.max_pixel_drift,
        )  # fmt: skip
        std_drift = abs(stats["pixel_std"] - before["pixel_std"]) / scale
        _check(
            checks, "pixel_std_drift", split, std_drift <= config.max_pixel_drift, ERROR,
            f"pixel std {stats['pixel_std']:.3f} vs {before['pixel_std']:.3f}: relative change "
            f"{std_drift:.4f} (threshold {config.max_pixel_drift})",
            round(std_drift, 6), config.max_pixel_drift,
        )  # fmt: skip
        size_change = abs(stats["count"] - before["count"]) / max(before["count"], 1)
        _check(
            checks, "split_size_change", split, size_change <= config.max_split_size_change, ERROR,
            f"{stats['count']} examples vs {before['count']}: relative change {size_change:.4f} "
            f"(threshold {config.max_split_size_change})",
            round(size_change, 6), config.max_split_size_change,
        )  # fmt: skip


def validation_state_dir(config: PipelineConfig, snapshot: Snapshot) -> Path:
    """Returns the folder holding a dataset's schema and last accepted statistics."""
    return config.workdir_path / "validation" / snapshot.name.replace("/", "_")


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

    checks: list[dict[str, Any]] = []
    if schema_path.exists() and not config.update_schema:
        schema = read_json(schema_path)
        check_schema(schema, statistics, checks)
    else:
        schema = infer_schema(snapshot, statistics)
        atomic_write_json(schema_path, schema)
        log.info("stored schema %s", schema_path)
    check_snapshot(config, statistics, checks)
    previous = read_json(reference_path) if reference_path.exists() else None
    if previous is not None:
        check_drift(config, statistics, previous, checks)

    anomalies = [c for c in checks if not c["passed"]]
    if config.update_schema:
        for anomaly in anomalies:
            if anomaly["severity"] == ERROR:
                anomaly["severity"] = WARNING
                anomaly["message"] += " [accepted: update_schema]"
    severe = [a for a in anomalies if a["severity"] == ERROR]
    report_path = atomic_write_json(
        out / "anomalies.json",
        {
            "snapshot": snapshot.path.name,
            "fingerprint": snapshot.fingerprint,
            "schema": str(schema_path),
            "previous_snapshot": previous["snapshot"] if previous else None,
            "severe": bool(severe),
            "anomalies": anomalies,
            "checks": checks,
            "checked_at": utc_now(),
        },
    )
    for anomaly in anomalies:
        log.warning("data anomaly (%s) %s[%s]: %s", anomaly["severity"], anomaly["check"],
                    anomaly["split"], anomaly["message"])  # fmt: skip
    if severe:
        details = "; ".join(
            f"{a['check']}" + (f" [{a['split']}]" if a["split"] else "") + f": {a['message']}" for a in severe
        )
        raise DataValidationError(
            f"snapshot {snapshot.path.name} failed {len(severe)} severe data check(s): {details} "
            f"(report: {report_path})"
        )
    atomic_write_json(reference_path, statistics)
    return ValidationResult(report_path, statistics_path, schema_path, False, len(anomalies))
