"""Stage 2, validate: statistics, schema, anomalies and drift of a snapshot, per feature.

Statistics follow the problem spec (`pipeline.data.statistics`): per split, the row count,
rows dropped for lack of a label, the label's histogram (classification) or summary
(regression), and a summary of every feature with its histogram.

On the first run for a dataset the schema is inferred from the training split and stored:
the problem spec and, per feature, its constraints (a number's range and missing rate, a
category's vocabulary and missing rate, a text's empty rate, an image's shape). Every later
snapshot is checked against it, per feature and split: missing values above the schema's
rate (`max_missing_rate_increase`, severe), unseen categories (`max_unseen_share`, severe),
numbers out of range (`max_out_of_range_share`, warning), more empty texts
(`max_empty_text_increase`, warning), images of another size (severe); and against the last
accepted snapshot: each feature's drift (L-infinity of category shares, Jensen-Shannon of
histograms; `max_feature_drift` or its `feature_drift_thresholds`, severe), the label's,
pixel moments and split sizes. The anomalies report (every check, with its feature, split,
severity, value and threshold; grouped per feature) is always written; a severe anomaly
fails the stage with a message naming the check and its numbers. `update_schema` accepts a
deliberate change. On splits smaller than `min_rows_to_judge` the statistical checks (drift,
missing values, range, empty texts) are warnings: on few rows they mostly measure chance.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import StageResult, atomic_write_json, read_json, stage_dir, utc_now
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import DataValidationError
from pipeline.core.problem import CATEGORICAL, FLOAT, IMAGE, NUMERIC, TEXT, FeatureSpec, ProblemSpec
from pipeline.data import statistics
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


SCHEMA_FORMAT = 3
SCHEMA_VOCABULARY_LIMIT = 10_000  # a categorical with more distinct values gets no vocabulary check
SCHEMA_SPLIT = "train"


class SplitStatistics:
    """One split's statistics, accumulated batch by batch and mergeable across parts of the split.

    Args:
        problem: The problem spec (which features, which label).
    """

    def __init__(self, problem: ProblemSpec):
        self.problem = problem
        self.count = 0
        self.label_histogram = np.zeros(problem.num_classes if problem.is_classification else 0, np.int64)
        self.label = statistics.NumericAccumulator()
        self.features = {f.key: statistics.accumulator(f.kind) for f in problem.features}

    def add(self, features: dict[str, np.ndarray], labels: np.ndarray) -> SplitStatistics:
        """Adds one batch: {feature key: values} and its labels."""
        self.count += int(labels.shape[0])
        if self.problem.is_classification:
            self.label_histogram += np.bincount(labels, minlength=self.problem.num_classes)[: self.problem.num_classes]
        else:
            self.label.add(labels)
        for key, accumulated in self.features.items():
            accumulated.add(features[key])
        return self

    def merge(self, other: SplitStatistics) -> SplitStatistics:
        """Folds in the statistics of another part of the split."""
        self.count += other.count
        self.label_histogram += other.label_histogram
        self.label.merge(other.label)
        for key, accumulated in self.features.items():
            accumulated.merge(other.features[key])
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "label_histogram": self.label_histogram.tolist(),
            "label": self.label.to_dict(),
            "features": {key: accumulated.to_dict() for key, accumulated in self.features.items()},
        }

    @classmethod
    def from_dict(cls, problem: ProblemSpec, state: dict[str, Any]) -> SplitStatistics:
        restored = cls(problem)
        restored.count = state["count"]
        restored.label_histogram = np.asarray(state["label_histogram"], np.int64)
        restored.label = statistics.NumericAccumulator.from_dict(state["label"])
        kinds = {f.key: f.kind for f in problem.features}
        restored.features = {key: statistics.accumulator(kinds[key], value) for key, value in state["features"].items()}
        return restored

    def summary(self, dropped: int = 0) -> dict[str, Any]:
        """The statistics document of the split (see `split_statistics`)."""
        stats: dict[str, Any] = {"count": self.count, "dropped_missing_label": int(dropped)}
        if self.problem.is_classification:
            stats["label_histogram"] = self.label_histogram.astype(int).tolist()
        else:
            stats["label"] = self.label.summary()
        stats["features"] = {key: accumulated.summary() for key, accumulated in self.features.items()}
        if self.problem.single_image:
            stats.update(stats["features"][self.problem.single_image.key])
        return stats


def split_statistics(
    problem: ProblemSpec, features: dict[str, np.ndarray], labels: np.ndarray, dropped: int = 0
) -> dict[str, Any]:
    """Computes the statistics of one split held in memory.

    Args:
        problem: The problem spec.
        features: {feature key: values} of the split.
        labels: Class ids or values [N].
        dropped: Rows of the split left out at ingest because their label was missing.

    Returns:
        count, dropped_missing_label, label_histogram (classification) or label (a numeric
        summary, regression), features {key: summary}; for a single-image problem also that
        image's statistics at the top level (image_shape, dtype, pixel_mean, pixel_std, ...).
    """
    return SplitStatistics(problem).add(features, labels).summary(dropped)


def snapshot_split_statistics(snapshot: Snapshot, split: str) -> SplitStatistics:
    """Reads a snapshot's split once, batch by batch, into its statistics."""
    accumulated = SplitStatistics(snapshot.problem)
    for features, labels in snapshot.iter_batches(split):
        accumulated.add(features, labels)
    return accumulated


def feature_constraints(feature: FeatureSpec, accumulated, summary: dict[str, Any]) -> dict[str, Any]:
    """What later snapshots of a feature must keep: inferred from the schema split's accumulated statistics."""
    count = max(summary.get("count", 0), 1)
    if feature.kind == NUMERIC:
        return {"min": summary["min"], "max": summary["max"], "missing_rate": summary["missing"] / count}
    if feature.kind == CATEGORICAL:
        vocabulary = sorted((v if isinstance(v, str) else int(v) for v in accumulated.counts), key=str)
        complete = not accumulated.overflow and len(vocabulary) <= SCHEMA_VOCABULARY_LIMIT
        return {"vocabulary": vocabulary if complete else None, "missing_rate": summary["missing"] / count}
    if feature.kind == TEXT:
        return {"empty_rate": summary["empty"] / count}
    return {"shape": list(feature.shape)}


def infer_schema(snapshot: Snapshot, constraints: dict[str, dict[str, Any]], source_split: str) -> dict[str, Any]:
    """The schema every later snapshot of the dataset must match: its problem spec, splits and feature constraints."""
    schema = {
        "format": SCHEMA_FORMAT,
        "dataset": snapshot.name,
        "problem": snapshot.problem.to_dict(),
        "class_names": snapshot.class_names,
        "splits": sorted(snapshot.splits),
        "features": constraints,
        "inferred_from": f"{snapshot.fingerprint} [{source_split}]",
        "inferred_at": utc_now(),
    }
    if snapshot.image_shape:
        schema.update(image_shape=list(snapshot.image_shape), image_dtype="uint8")
    return schema


def distribution(histogram: list[int]) -> np.ndarray:
    """A histogram as shares summing to 1 (all zeros when it counts nothing)."""
    counts = np.asarray(histogram, np.float64)
    return counts / counts.sum() if counts.sum() else counts


def _check(checks, name, split, passed, severity, message, value=None, threshold=None, feature=None):
    checks.append(
        {
            "check": name,
            "feature": feature,
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


@dataclasses.dataclass
class _FeatureTally:
    rows: int = 0
    missing: int = 0
    present: int = 0
    outside: int = 0
    outside_example: float | None = None
    unseen: int = 0
    unseen_examples: set = dataclasses.field(default_factory=set)
    empty: int = 0


def _rate(count: int, total: int) -> float:
    return count / total if total else 0.0


class ConstraintTally:
    """Counts, batch by batch, how one split's feature values break the schema's constraints (see the module doc)."""

    def __init__(self, schema: dict[str, Any], problem: ProblemSpec):
        self.rules = schema.get("features", {})
        self.features = [f for f in problem.features if f.key in self.rules and f.kind != IMAGE]
        self.vocabularies = {
            f.key: set(self.rules[f.key]["vocabulary"])
            for f in self.features
            if f.kind == CATEGORICAL and self.rules[f.key].get("vocabulary") is not None
        }
        self.tallies = {f.key: _FeatureTally() for f in self.features}

    def add(self, columns: dict[str, np.ndarray]) -> None:
        for feature in self.features:
            rule, tally, values = self.rules[feature.key], self.tallies[feature.key], columns[feature.key]
            tally.rows += len(values)
            if feature.kind in (NUMERIC, CATEGORICAL):
                missing = np.isnan(values.astype(np.float64)) if feature.dtype == FLOAT else values == ""
                tally.missing += int(np.count_nonzero(missing))
            if feature.kind == NUMERIC and rule["min"] is not None:
                numbers = values.astype(np.float64)
                present = numbers[~np.isnan(numbers)]
                outside = (present < rule["min"]) | (present > rule["max"])
                tally.present += len(present)
                tally.outside += int(outside.sum())
                if tally.outside_example is None and outside.any():
                    tally.outside_example = float(present[outside][0])
            if feature.key in self.vocabularies:
                known = self.vocabularies[feature.key]
                unseen = np.fromiter((v not in known for v in values.tolist()), bool, len(values))
                tally.unseen += int(unseen.sum())
                if len(tally.unseen_examples) < 1000:
                    tally.unseen_examples.update(str(v) for v in values[unseen][:1000].tolist())
            if feature.kind == TEXT:
                tally.empty += sum(1 for text in values if not text)

    def merge(self, other: ConstraintTally) -> ConstraintTally:
        for key, tally in self.tallies.items():
            theirs = other.tallies[key]
            for name in ("rows", "missing", "present", "outside", "unseen", "empty"):
                setattr(tally, name, getattr(tally, name) + getattr(theirs, name))
            if tally.outside_example is None:
                tally.outside_example = theirs.outside_example
            if len(tally.unseen_examples) < 1000:
                tally.unseen_examples.update(sorted(theirs.unseen_examples)[: 1000 - len(tally.unseen_examples)])
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            key: {**dataclasses.asdict(tally), "unseen_examples": sorted(tally.unseen_examples)}
            for key, tally in self.tallies.items()
        }

    def restore(self, state: dict[str, Any]) -> ConstraintTally:
        for key, values in state.items():
            self.tallies[key] = _FeatureTally(**{**values, "unseen_examples": set(values["unseen_examples"])})
        return self

    def checks(self, config: PipelineConfig, split: str, checks: list) -> None:
        """Appends the split's constraint checks."""
        for feature in self.features:
            rule, tally = self.rules[feature.key], self.tallies[feature.key]
            if feature.kind in (NUMERIC, CATEGORICAL):
                rate = _rate(tally.missing, tally.rows)
                allowed = rule["missing_rate"] + config.max_missing_rate_increase
                _check(
                    checks,
                    "missing_values",
                    split,
                    rate <= allowed,
                    ERROR,
                    f"{feature.key}: {rate:.2%} missing vs schema {rule['missing_rate']:.2%} "
                    f"(max_missing_rate_increase {config.max_missing_rate_increase})",
                    round(rate, 6),
                    round(allowed, 6),
                    feature.key,
                )
            if feature.kind == NUMERIC and rule["min"] is not None:
                share = _rate(tally.outside, tally.present)
                _check(
                    checks,
                    "out_of_range",
                    split,
                    share <= config.max_out_of_range_share,
                    WARNING,
                    f"{feature.key}: {share:.2%} of values outside the schema's range [{rule['min']:.6g}, "
                    f"{rule['max']:.6g}]"
                    + (f" (e.g. {tally.outside_example:.6g})" if tally.outside_example is not None else ""),
                    round(share, 6),
                    config.max_out_of_range_share,
                    feature.key,
                )
            if feature.key in self.vocabularies:
                share = _rate(tally.unseen, tally.rows)
                examples = sorted(tally.unseen_examples)[:5]
                _check(
                    checks,
                    "unseen_categories",
                    split,
                    share <= config.max_unseen_share,
                    ERROR,
                    f"{feature.key}: {share:.2%} of values not in the schema's vocabulary"
                    + (f" (e.g. {examples})" if examples else ""),
                    round(share, 6),
                    config.max_unseen_share,
                    feature.key,
                )
            if feature.kind == TEXT:
                rate, allowed = _rate(tally.empty, tally.rows), rule["empty_rate"] + config.max_empty_text_increase
                _check(
                    checks,
                    "empty_text",
                    split,
                    rate <= allowed,
                    WARNING,
                    f"{feature.key}: {rate:.2%} empty vs schema {rule['empty_rate']:.2%} "
                    f"(max_empty_text_increase {config.max_empty_text_increase})",
                    round(rate, 6),
                    round(allowed, 6),
                    feature.key,
                )


@dataclasses.dataclass
class SplitMeasure:
    """Everything validation measures of (a part of) a split in its one pass: statistics and tallies."""

    statistics: SplitStatistics
    constraints: ConstraintTally | None
    drift: DriftTally | None

    @classmethod
    def empty(cls, problem: ProblemSpec, schema: dict[str, Any] | None, before: dict[str, Any] | None) -> SplitMeasure:
        return cls(
            SplitStatistics(problem),
            ConstraintTally(schema, problem) if schema is not None else None,
            DriftTally(problem, before) if before is not None else None,
        )

    def add(self, columns: dict[str, np.ndarray], labels: np.ndarray) -> None:
        self.statistics.add(columns, labels)
        if self.constraints is not None:
            self.constraints.add(columns)
        if self.drift is not None:
            self.drift.add(columns, labels)

    def merge(self, other: SplitMeasure) -> SplitMeasure:
        self.statistics.merge(other.statistics)
        if self.constraints is not None:
            self.constraints.merge(other.constraints)
        if self.drift is not None:
            self.drift.merge(other.drift)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistics": self.statistics.to_dict(),
            "constraints": self.constraints.to_dict() if self.constraints is not None else None,
            "drift": self.drift.to_dict() if self.drift is not None else None,
        }

    @classmethod
    def from_dict(
        cls, problem: ProblemSpec, schema: dict[str, Any] | None, before: dict[str, Any] | None, state: dict[str, Any]
    ) -> SplitMeasure:
        measure = cls.empty(problem, schema, before)
        measure.statistics = SplitStatistics.from_dict(problem, state["statistics"])
        if measure.constraints is not None:
            measure.constraints.restore(state["constraints"])
        if measure.drift is not None:
            measure.drift.restore(state["drift"])
        return measure


@dataclasses.dataclass(frozen=True)
class ValidationPart:
    """One shard file of one split: the unit validation measures, in one process or one mapped task each."""

    split: str
    shard: int
    shards: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.shard:05d}-of-{self.shards:05d}"


def validation_parts(snapshot: Snapshot) -> list[ValidationPart]:
    """Every (split, shard file) of a snapshot, splits in name order, shards in file order."""
    parts = []
    for split in sorted(snapshot.splits):
        shards = snapshot.shard_count(split)
        parts += [ValidationPart(split, shard, shards) for shard in range(shards)]
    return parts


def _references(config: PipelineConfig, snapshot: Snapshot) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the stored schema, or None when this run infers it; the last accepted statistics, or None)."""
    state = validation_state_dir(config, snapshot)
    schema = None if config.update_schema else _stored_schema(state / "schema.json")
    reference_path = state / "latest_statistics.json"
    return schema, read_json(reference_path) if reference_path.exists() else None


def _reference_key(schema: dict[str, Any] | None, previous: dict[str, Any] | None) -> str:
    """Which schema and reference statistics a part was measured against."""
    return f"{(schema or {}).get('inferred_from')}|{(previous or {}).get('fingerprint')}"


def measure_part(config: PipelineConfig, snapshot: Snapshot, part: ValidationPart) -> SplitMeasure:
    """Reads one shard file of a split once, batch by batch, into its `SplitMeasure`."""
    schema, previous = _references(config, snapshot)
    before = (previous or {}).get("splits", {}).get(part.split)
    measure = SplitMeasure.empty(snapshot.problem, schema, before)
    for columns, labels in snapshot.iter_batches(part.split, shard=(part.shard, part.shards)):
        measure.add(columns, labels)
    return measure


def write_part(config: PipelineConfig, snapshot: Snapshot, part: ValidationPart) -> str:
    """Measures one part and writes it under the run's validate/parts folder (atomically).

    A part already written for this snapshot and these references is reused, so a retried
    or re-run task does not read its shard again.

    Returns:
        The part file's path.
    """
    path = stage_dir(config, "validate") / "parts" / f"{part.name}.json"
    schema, previous = _references(config, snapshot)
    key = _reference_key(schema, previous)
    if path.exists():
        found = read_json(path)
        if found.get("fingerprint") == snapshot.fingerprint and found.get("references") == key:
            log.info("validation part %s already measured: reusing it", part.name)
            return str(path)
    measure = measure_part(config, snapshot, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        path,
        {
            "fingerprint": snapshot.fingerprint,
            "references": key,
            "split": part.split,
            "shard": part.shard,
            "measure": measure.to_dict(),
        },
    )
    return str(path)


def _split_measures(
    config: PipelineConfig,
    snapshot: Snapshot,
    schema: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    part_files: list[str] | None,
) -> dict[str, SplitMeasure]:
    """Each split's measure: the parts merged in shard order, read from `part_files` or measured here."""
    written = {}
    key = _reference_key(schema, previous)
    for path in part_files or ():
        found = read_json(path)
        if found["fingerprint"] != snapshot.fingerprint or found["references"] != key:
            raise DataValidationError(
                f"validation part {path} was measured for another snapshot or schema: validate again"
            )
        written[(found["split"], found["shard"])] = found["measure"]
    measures = {}
    for part in validation_parts(snapshot):
        before = (previous or {}).get("splits", {}).get(part.split)
        if part_files is not None:
            if (part.split, part.shard) not in written:
                raise DataValidationError(f"validation part {part.name} is missing: validate again")
            measure = SplitMeasure.from_dict(snapshot.problem, schema, before, written[(part.split, part.shard)])
        else:
            measure = measure_part(config, snapshot, part)
        measures[part.split] = measures[part.split].merge(measure) if part.split in measures else measure
    return measures


def drift_threshold(config: PipelineConfig, feature: FeatureSpec) -> float:
    """The feature's drift threshold: `feature_drift_thresholds` by key or column name, else `max_feature_drift`."""
    overrides = config.feature_drift_thresholds or {}
    return overrides.get(feature.key, overrides.get(feature.name, config.max_feature_drift))


class DriftTally:
    """Counts, batch by batch, one split's numbers and texts in the previous snapshot's histogram buckets."""

    def __init__(self, problem: ProblemSpec, before: dict[str, Any]):
        self.problem = problem
        self.before = before
        self.edges: dict[str, list[float]] = {}
        for feature in problem.features:
            reference = before.get("features", {}).get(feature.key)
            if feature.kind in (NUMERIC, TEXT) and reference is not None and "histogram" in reference:
                self.edges[feature.key] = reference["histogram"]["edges"]
        if not problem.is_classification and "histogram" in before.get("label", {}):
            self.edges[problem.label_key] = before["label"]["histogram"]["edges"]
        self.counts = {key: np.zeros(len(edges) + 1, np.int64) for key, edges in self.edges.items()}

    def add(self, columns: dict[str, np.ndarray], labels: np.ndarray) -> None:
        for key, edges in self.edges.items():
            if key == self.problem.label_key and key not in columns:
                values = labels.astype(np.float64)
            else:
                kind = next(f.kind for f in self.problem.features if f.key == key)
                values = statistics.words_per_value(columns[key]) if kind == TEXT else columns[key].astype(np.float64)
            self.counts[key] += statistics.bucket_counts(values[~np.isnan(values)], edges)

    def merge(self, other: DriftTally) -> DriftTally:
        for key in self.counts:
            self.counts[key] += other.counts[key]
        return self

    def to_dict(self) -> dict[str, Any]:
        return {key: counts.tolist() for key, counts in self.counts.items()}

    def restore(self, state: dict[str, Any]) -> DriftTally:
        self.counts = {key: np.asarray(counts, np.int64) for key, counts in state.items()}
        return self

    def distances(self, current: dict[str, Any]) -> tuple[dict[str, tuple[str, float]], tuple[str, float] | None]:
        """Each feature's (measure, distance) from the previous split, and the regression label's (or None)."""
        found = {}
        for feature in self.problem.features:
            reference = self.before.get("features", {}).get(feature.key)
            if reference is None or (feature.kind == IMAGE and "pixel_histogram" not in reference):
                continue
            if feature.kind == CATEGORICAL:
                summary = current["features"][feature.key]
                found[feature.key] = (
                    statistics.L_INFINITY,
                    statistics.l_infinity(
                        statistics.shares(reference["top"], reference.get("other", 0)),
                        statistics.shares(summary["top"], summary["other"]),
                    ),
                )
            elif feature.kind == IMAGE:
                now = current["features"][feature.key]["pixel_histogram"]
                found[feature.key] = (
                    statistics.JENSEN_SHANNON,
                    statistics.jensen_shannon(reference["pixel_histogram"], now),
                )
            elif feature.key in self.counts:
                found[feature.key] = (
                    statistics.JENSEN_SHANNON,
                    statistics.jensen_shannon(reference["histogram"]["counts"], self.counts[feature.key].tolist()),
                )
        label = None
        if self.problem.label_key in self.counts and self.problem.label_key not in found:
            label = (
                statistics.JENSEN_SHANNON,
                statistics.jensen_shannon(
                    self.before["label"]["histogram"]["counts"], self.counts[self.problem.label_key].tolist()
                ),
            )
        return found, label


def check_feature_drift(
    config: PipelineConfig,
    problem: ProblemSpec,
    split: str,
    distances: dict[str, tuple[str, float]],
    label_distance: tuple[str, float] | None,
    previous_name: str,
    checks: list,
) -> None:
    """Appends each feature's (and a regression label's) drift from the previous accepted snapshot's split."""
    for feature in problem.features:
        if feature.key not in distances:
            continue
        measure, value = distances[feature.key]
        threshold = drift_threshold(config, feature)
        _check(
            checks,
            "feature_drift",
            split,
            value <= threshold,
            ERROR,
            f"{feature.key}: {measure.replace('_', ' ')} {value:.4f} from snapshot {previous_name} "
            f"(threshold {threshold})",
            round(value, 6),
            threshold,
            feature.key,
        )
    if label_distance is not None:
        measure, value = label_distance
        _check(
            checks,
            "label_drift",
            split,
            value <= config.max_feature_drift,
            ERROR,
            f"label {problem.label!r}: {measure.replace('_', ' ')} {value:.4f} from snapshot {previous_name} "
            f"(threshold {config.max_feature_drift})",
            round(value, 6),
            config.max_feature_drift,
        )


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
            "features": _per_feature(checks),
            "checks": checks,
            "checked_at": utc_now(),
        },
    )


def _per_feature(checks: list) -> dict[str, dict[str, Any]]:
    """The feature checks grouped by feature: how many ran, and the failed ones."""
    grouped: dict[str, dict[str, Any]] = {}
    for check in checks:
        if check["feature"]:
            entry = grouped.setdefault(check["feature"], {"checks": 0, "anomalies": []})
            entry["checks"] += 1
            if not check["passed"]:
                entry["anomalies"].append(check)
    return grouped


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


# Checks that estimate a rate or a distribution from a split: on few rows they mostly measure chance.
STATISTICAL_CHECKS = ("feature_drift", "label_drift", "missing_values", "out_of_range", "empty_text")


def _soften_small_splits(config: PipelineConfig, splits: dict[str, Any], checks: list) -> None:
    """Turns the statistical checks of splits with fewer than `min_rows_to_judge` rows into warnings."""
    for check in checks:
        count = splits.get(check["split"], {}).get("count", config.min_rows_to_judge)
        if check["check"] in STATISTICAL_CHECKS and count < config.min_rows_to_judge and check["severity"] == ERROR:
            check["severity"] = WARNING
            if not check["passed"]:
                check["message"] += f" [a warning: {count} rows < min_rows_to_judge {config.min_rows_to_judge}]"


def _stored_schema(schema_path: Path) -> dict[str, Any] | None:
    stored = read_json(schema_path) if schema_path.exists() else None
    if stored is not None and stored.get("format") != SCHEMA_FORMAT:
        log.warning("schema %s is of an older layout (no feature constraints): storing this snapshot's", schema_path)
        return None
    return stored


def validate(config: PipelineConfig, snapshot: Snapshot, part_files: list[str] | None = None) -> ValidationResult:
    """Runs the validate stage.

    Each split is read once, shard file by shard file (`validation_parts`); each part's
    measure merges into the split's in shard order, so the outcome is the same whether the
    parts were measured here or by mapped tasks (`write_part`) whose files are given.

    Args:
        config: The pipeline config (thresholds, `update_schema`, run folder).
        snapshot: The snapshot to check.
        part_files: The parts' files written by `write_part`, one per `validation_parts`
            entry; None to measure every part here, one after the other.

    Returns:
        Where the report, statistics and schema are, and what was found.

    Raises:
        DataValidationError: naming each severe check and its numbers; the report is
            written first, and the snapshot is not accepted as the new reference. Also when a
            part file is missing or was measured against another snapshot or schema.
        ConfigError: if `feature_drift_thresholds` names features the data does not have.
    """
    problem = snapshot.problem
    config.check_for(problem)
    out = stage_dir(config, "validate")
    state = validation_state_dir(config, snapshot)
    schema_path = state / "schema.json"
    reference_path = state / "latest_statistics.json"
    schema, previous = _references(config, snapshot)

    checks: list[dict[str, Any]] = []
    splits: dict[str, Any] = {}
    source_split = SCHEMA_SPLIT if SCHEMA_SPLIT in snapshot.splits else sorted(snapshot.splits)[0]
    constraints: dict[str, dict[str, Any]] = {}
    measures = _split_measures(config, snapshot, schema, previous, part_files)
    for split in sorted(snapshot.splits):
        measure = measures[split]
        splits[split] = measure.statistics.summary(snapshot.dropped_rows.get(split, 0))
        if measure.constraints is not None:
            measure.constraints.checks(config, split, checks)
        elif split == source_split:
            constraints = {
                f.key: feature_constraints(f, measure.statistics.features[f.key], splits[split]["features"][f.key])
                for f in problem.features
            }
        if measure.drift is not None:
            distances, label_distance = measure.drift.distances(splits[split])
            check_feature_drift(config, problem, split, distances, label_distance, previous["snapshot"], checks)
    statistics_doc = {
        "snapshot": snapshot.path.name,
        "fingerprint": snapshot.fingerprint,
        "task": problem.task,
        "class_names": snapshot.class_names,
        "computed_at": utc_now(),
        "splits": splits,
    }
    statistics_path = atomic_write_json(out / "statistics.json", statistics_doc)
    if schema is not None:
        check_schema(schema, statistics_doc, problem, checks)
    else:
        atomic_write_json(schema_path, infer_schema(snapshot, constraints, source_split))
        log.info("stored schema %s", schema_path)
    check_snapshot(config, statistics_doc, checks)
    if previous is not None:
        check_drift(config, statistics_doc, previous, checks)
    _soften_small_splits(config, splits, checks)
    anomalies = [c for c in checks if not c["passed"]]
    if config.update_schema:
        for anomaly in anomalies:
            if anomaly["severity"] == ERROR:
                anomaly["severity"] = WARNING
                anomaly["message"] += " [accepted: update_schema]"
    report_path = write_report(out / "anomalies.json", snapshot, schema_path, previous, checks)
    raise_if_severe(snapshot, anomalies, report_path)
    atomic_write_json(reference_path, statistics_doc)
    return ValidationResult(report_path, statistics_path, schema_path, False, len(anomalies))
