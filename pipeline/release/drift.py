"""Serving-time drift: what the served model sees, read from its request logs, against its training data.

The serving server writes sampled Predict calls as `PredictionLog` TFRecord files (a model's
`logging_config`, set by promotion from `request_log_sampling_rate`). The requests carry the
model's named features, so tables, text and images are all monitored. `check_drift` reads
the files published since the last check and compares them with the training split of the
stable model's snapshot, per feature, with the validate stage's statistics
(`pipeline.data.statistics`):

- every feature: the L-infinity distance of category shares, or the Jensen-Shannon divergence
  of the histogram over the training data's buckets (`max_feature_drift`, per feature
  `feature_drift_thresholds`);
- an image model's pixel mean, in training standard deviations (`drift_max_pixel_mean_shift`);
- the predictions: a classifier's predicted-class shares against the training labels' (total
  variation distance, `drift_max_class_distance`), a regression model's predictions against the
  training labels' histogram (Jensen-Shannon, `drift_max_prediction_shift`).

It writes a report under `<workdir>/monitoring/<model_name>/<time>/`: `drift.json` ranks the
drifted features first, and `drift.png` shows each feature's distributions side by side, and
remembers which log files it has read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import atomic_output, atomic_write_json, read_json
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import PipelineError
from pipeline.core.problem import IMAGE, NUMERIC, STRING, FeatureSpec, ProblemSpec, image_classification
from pipeline.data import statistics
from pipeline.data.data_validation import distribution, drift_threshold, snapshot_split_statistics
from pipeline.data.snapshot import TRAIN, Snapshot


@dataclasses.dataclass(frozen=True)
class DriftResult:
    """One drift check.

    Attributes:
        drifted: True when a threshold was passed on enough requests.
        summary: One line for people (the drift DAG run's note).
        reasons: One line per check, with its numbers.
        requests: Logged requests (images) read.
        files: Request log files read.
        report_path: The JSON report (None when nothing new was logged).
        plot_path: Its PNG.
    """

    drifted: bool
    summary: str
    reasons: list[str]
    requests: int
    files: int
    report_path: str | None = None
    plot_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def monitoring_dir(config: PipelineConfig) -> Path:
    """`<workdir>/monitoring/<model_name>/`: drift reports and the list of request logs already read."""
    return config.workdir_path / "monitoring" / config.model_name


def request_log_files(config: PipelineConfig) -> list[Path]:
    """The model's published request log files (complete ones: `.tmp` files are still being written), oldest first."""
    return sorted(Path(config.request_log_dir).glob(f"{config.model_name}.*.tfrecord"))


def new_log_files(config: PipelineConfig) -> list[Path]:
    """The model's published request log files not read by an earlier check, oldest first."""
    state = monitoring_dir(config) / "read_logs.json"
    seen = set(read_json(state)["files"]) if state.exists() else set()
    return [path for path in request_log_files(config) if path.name not in seen]


def _remember(config: PipelineConfig, files: list[Path]) -> None:
    state = monitoring_dir(config) / "read_logs.json"
    seen = read_json(state)["files"] if state.exists() else []
    atomic_write_json(state, {"files": sorted({*seen, *(p.name for p in files)})})


@dataclasses.dataclass(frozen=True)
class LoggedRequests:
    """Logged Predict calls of the serving signature, one row per input row.

    Attributes:
        inputs: {input name: values [N, ...]} as the requests sent them.
        outputs: {output name: values [N, ...]} as the model answered.
        versions: The version that answered each row.
        labels: The label each row's request named ('' when none; 'shadow' for a shadow answer).
        timestamps: When each row was answered (whole seconds since the epoch).
    """

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    versions: np.ndarray
    labels: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.versions)

    def where(self, mask: np.ndarray) -> LoggedRequests:
        """The rows where `mask` is true."""
        return LoggedRequests(
            {name: values[mask] for name, values in self.inputs.items()},
            {name: values[mask] for name, values in self.outputs.items()},
            self.versions[mask],
            self.labels[mask],
            self.timestamps[mask],
        )


def read_request_logs(files: list[Path]) -> LoggedRequests:
    """The logged Predict calls of `files`.

    Only calls with the inputs of the first call kept and an answer (`probabilities` or
    `predictions`) count: the model's serving signature, not other signatures.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving import tensors

    inputs: dict[str, list[np.ndarray]] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    versions, labels, timestamps = [], [], []
    for path in files:
        for data in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            record = prediction_log_pb2.PredictionLog.FromString(data)
            if not record.HasField("predict_log"):
                continue
            request, response = record.predict_log.request, record.predict_log.response
            answer = "probabilities" if "probabilities" in response.outputs else "predictions"
            if answer not in response.outputs or not request.inputs:
                continue
            if not inputs:
                inputs = {name: [] for name in request.inputs}
                outputs = {name: [] for name in response.outputs}
            if set(request.inputs) != set(inputs) or not set(outputs) <= set(response.outputs):
                continue
            batch = {name: tensors.to_array(proto) for name, proto in request.inputs.items()}
            rows = len(next(iter(batch.values())))
            for name, values in batch.items():
                inputs[name].append(values)
            for name in outputs:
                outputs[name].append(tensors.to_array(response.outputs[name]))
            versions.append(np.full(rows, record.log_metadata.model_spec.version.value, np.int64))
            labels.append(np.full(rows, request.model_spec.version_label, object))
            timestamps.append(np.full(rows, record.log_metadata.timestamp_secs, np.int64))
    if not versions:
        empty = np.zeros(0, np.int64)
        return LoggedRequests({}, {}, empty, np.zeros(0, object), empty)
    return LoggedRequests(
        {name: np.concatenate(parts) for name, parts in inputs.items()},
        {name: np.concatenate(parts) for name, parts in outputs.items()},
        np.concatenate(versions),
        np.concatenate(labels),
        np.concatenate(timestamps),
    )


def _request_values(feature: FeatureSpec, values: np.ndarray) -> np.ndarray:
    """Logged request values as the snapshot holds them: text as str, single-channel images [N,H,W,1]."""
    if feature.dtype == STRING:
        decoded = np.empty(len(values), dtype=object)
        decoded[:] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
        return decoded
    if feature.kind == IMAGE and values.ndim == 3:
        return values[..., np.newaxis]
    return np.asarray(values)


def card_problem(card: dict[str, Any]) -> ProblemSpec:
    """The problem a published version solves (versions exported before problem specs: an image classifier)."""
    if "problem" in card:
        return ProblemSpec.from_dict(card["problem"])
    shape = card.get("signature", {}).get("inputs", {}).get("images", {}).get("shape", ["N", 28, 28, 1])[1:]
    return image_classification(tuple(shape), card["data"]["class_names"])


def training_statistics(config: PipelineConfig, card: dict[str, Any]) -> dict[str, Any]:
    """The statistics of the stable model's training split (computed once per snapshot, then read back)."""
    cache = monitoring_dir(config) / f"training-{card['data']['fingerprint'][:12]}.json"
    if cache.exists():
        return read_json(cache)
    snapshot_dir = config.workdir_path / "snapshots" / card["data"]["snapshot"]
    if not snapshot_dir.exists():
        raise PipelineError(f"the stable model's training snapshot {snapshot_dir} is gone: cannot compare")
    snapshot = Snapshot.load(snapshot_dir)
    split = snapshot.resolve_split(card.get("config", {}).get("train_split", "auto"), TRAIN)
    statistics_doc = snapshot_split_statistics(snapshot, split).summary()
    atomic_write_json(cache, statistics_doc)
    return statistics_doc


@dataclasses.dataclass(frozen=True)
class Check:
    """One drift check: which feature (or 'predictions'), how it was measured, and its distributions."""

    name: str
    measure: str
    value: float
    threshold: float
    drifted: bool
    reason: str
    distributions: dict[str, Any] | None = None

    @property
    def severity(self) -> float:
        """How far past (or short of) its threshold: the report's ranking."""
        return self.value / self.threshold if self.threshold else float("inf") * self.value


def _verdict(drifted: bool) -> str:
    return ">" if drifted else "<="


def feature_checks(
    config: PipelineConfig, problem: ProblemSpec, logged: LoggedRequests, training: dict[str, Any]
) -> list[Check]:
    """Each logged feature's distance from its training distribution (and an image model's pixel mean)."""
    checks = []
    for feature in problem.features:
        reference = training["features"].get(feature.key)
        if reference is None or feature.key not in logged.inputs:
            continue
        values = _request_values(feature, logged.inputs[feature.key])
        if feature.kind == IMAGE:
            scale = max(reference["pixel_std"], 1e-6)
            mean = float(values.astype(np.float64).mean())
            shift = abs(mean - reference["pixel_mean"]) / scale
            drifted = shift > config.drift_max_pixel_mean_shift
            checks.append(
                Check(
                    f"{feature.key} pixel mean",
                    "pixel_mean_shift",
                    shift,
                    config.drift_max_pixel_mean_shift,
                    drifted,
                    f"pixel mean {mean:.1f} vs training {reference['pixel_mean']:.1f}: shift {shift:.2f} training "
                    f"stds ({_verdict(drifted)} drift_max_pixel_mean_shift {config.drift_max_pixel_mean_shift})",
                )
            )
        measure, value, distributions = statistics.distance(feature.kind, reference, values)
        threshold = drift_threshold(config, feature)
        drifted = value > threshold
        checks.append(
            Check(
                feature.key,
                measure,
                value,
                threshold,
                drifted,
                f"{feature.key}: {measure.replace('_', ' ')} {value:.3f} from training "
                f"({_verdict(drifted)} {threshold})",
                distributions,
            )
        )
    return checks


def prediction_check(
    config: PipelineConfig, problem: ProblemSpec, logged: LoggedRequests, training: dict[str, Any]
) -> Check | None:
    """The predictions' distance from the training labels' distribution (classes or values)."""
    if problem.is_classification:
        if "class_ids" in logged.outputs:
            predicted = np.asarray(logged.outputs["class_ids"], np.int64)
        elif "probabilities" in logged.outputs:
            predicted = np.asarray(logged.outputs["probabilities"]).argmax(axis=1)
        else:
            return None
        now = np.bincount(predicted, minlength=problem.num_classes)[: problem.num_classes]
        before = distribution(training["label_histogram"])
        current = distribution(now.tolist())
        distance_tv = 0.5 * float(np.abs(current - before).sum())
        drifted = distance_tv > config.drift_max_class_distance
        return Check(
            "predictions",
            "total_variation",
            distance_tv,
            config.drift_max_class_distance,
            drifted,
            f"predicted-class distribution vs training labels: total variation distance {distance_tv:.3f} "
            f"({_verdict(drifted)} drift_max_class_distance {config.drift_max_class_distance})",
            {"buckets": list(problem.class_names), "reference": before.tolist(), "current": current.tolist()},
        )
    if "predictions" not in logged.outputs or "histogram" not in training.get("label", {}):
        return None
    measure, value, distributions = statistics.distance(NUMERIC, training["label"], logged.outputs["predictions"])
    drifted = value > config.drift_max_prediction_shift
    return Check(
        "predictions",
        measure,
        value,
        config.drift_max_prediction_shift,
        drifted,
        f"predictions vs training labels: {measure.replace('_', ' ')} {value:.3f} "
        f"({_verdict(drifted)} drift_max_prediction_shift {config.drift_max_prediction_shift})",
        distributions,
    )


def ranked(checks: list[Check]) -> list[Check]:
    """Drifted checks first, then the rest; each group the furthest past its threshold first."""
    return sorted(checks, key=lambda check: (not check.drifted, -check.severity))


def plot_drift(checks: list[Check], count: int, path: Path, panels: int = 9) -> Path:
    """Each check's distributions (training vs requests) side by side, drifted first, as a PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [check for check in checks if check.distributions][:panels]
    columns = min(3, max(len(shown), 1))
    rows = max(1, -(-len(shown) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for axis, check in zip(axes.ravel(), shown, strict=False):
        buckets = check.distributions["buckets"]
        positions = np.arange(len(buckets))
        axis.bar(positions - 0.2, check.distributions["reference"], 0.4, label="training")
        axis.bar(positions + 0.2, check.distributions["current"], 0.4, label=f"requests ({count})")
        axis.set_xticks(positions, buckets, rotation=60, ha="right", fontsize=7)
        axis.set_title(
            f"{'DRIFT ' if check.drifted else ''}{check.name}: {check.value:.3f} (limit {check.threshold:g})",
            color="#c53030" if check.drifted else "black",
            fontsize=9,
        )
        axis.set_ylabel("share")
        axis.legend(fontsize=7)
    for axis in axes.ravel()[len(shown) :]:
        axis.axis("off")
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=90)
    plt.close(figure)
    return path


def check_drift(config: PipelineConfig) -> DriftResult:
    """Reads the request logs published since the last check and judges drift against the training data.

    Args:
        config: Names the model, the request log folder, the workdir and the thresholds.

    Returns:
        The decision, with its reasons and report.

    Raises:
        PipelineError: if no stable model (or its training snapshot) is there to compare with.
    """
    from pipeline.release.promotion import stable_model_card
    from serving.protocol import SHADOW_LABEL

    files = new_log_files(config)
    logged = read_request_logs(files)
    logged = logged.where(logged.labels != SHADOW_LABEL)  # a shadow's answers were never returned to anyone
    count = len(logged)
    if count < config.drift_min_requests:
        # Not judged: the files stay unread, so their requests count toward the next check.
        summary = f"not judged: {count} logged requests since the last check (drift_min_requests "
        return DriftResult(False, summary + f"{config.drift_min_requests})", [], count, len(files))
    card = stable_model_card(config)
    if card is None:
        raise PipelineError(f"no stable {config.model_name} model to compare the requests with")
    problem = card_problem(card)
    training = training_statistics(config, card)
    checks = feature_checks(config, problem, logged, training)
    prediction = prediction_check(config, problem, logged, training)
    checks += [prediction] if prediction else []
    drifted = any(check.drifted for check in checks)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = monitoring_dir(config) / stamp
    order = ranked(checks)
    report = {
        "model_name": config.model_name,
        "checked_at": stamp,
        "stable_version": card.get("version"),
        "answering_versions": sorted({int(v) for v in logged.versions}),
        "files": [p.name for p in files],
        "requests": {"count": count},
        "training": {"count": training["count"], "snapshot": card["data"]["snapshot"]},
        "drifted": drifted,
        "drifted_features": [c.name for c in order if c.drifted and c.name != "predictions"],
        "checks": [dataclasses.asdict(c) for c in order],
        "reasons": [c.reason for c in checks],
    }
    report_path = atomic_write_json(out / "drift.json", report)
    plot_path = plot_drift(order, count, out / "drift.png")
    _remember(config, files)
    failed = [c.reason for c in checks if c.drifted]
    summary = (
        f"drift in {count} requests: " + "; ".join(failed)
        if drifted
        else f"no drift in {count} requests ({len(checks)} checks within their limits)"
    )
    return DriftResult(drifted, summary, report["reasons"], count, len(files), str(report_path), str(plot_path))
