"""Serving-time drift: what the served model sees, read from its request logs, against its training data.

The serving server writes sampled Predict calls as `PredictionLog` TFRecord files (a model's
`logging_config`, set by promotion from `request_log_sampling_rate`). `check_drift` reads the
files published since the last check, computes the statistics the validate stage computes
for training data (pixel mean and standard deviation) plus the predicted-class distribution
and a confidence histogram, compares them with the stable model's training split, and says
whether the requests drifted past the configured thresholds. It writes a report (JSON and a
PNG) under `<workdir>/monitoring/<model_name>/` and remembers which files it has read.

These statistics are an image classifier's: for any other model (tables, text, regression) the
check reads and remembers the logs but answers "not judged", saying why (per-feature drift is
not built yet).
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
from pipeline.data.data_validation import distribution, image_statistics, split_statistics
from pipeline.data.snapshot import TRAIN, Snapshot

CONFIDENCE_BINS = np.linspace(0.0, 1.0, 11)


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


def request_statistics(images: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Pixel statistics (as the validate stage computes them), predicted classes and confidences."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    pixels = image_statistics(images[..., None])
    return {
        "count": int(images.shape[0]),
        "pixel_mean": pixels["pixel_mean"],
        "pixel_std": pixels["pixel_std"],
        "predicted_histogram": np.bincount(predicted, minlength=probabilities.shape[1]).astype(int).tolist(),
        "confidence_histogram": np.histogram(confidence, CONFIDENCE_BINS)[0].astype(int).tolist(),
        "mean_confidence": float(confidence.mean()),
    }


def training_statistics(config: PipelineConfig, card: dict[str, Any]) -> dict[str, Any]:
    """The training split's statistics of the snapshot the stable model was trained on."""
    snapshot_dir = config.workdir_path / "snapshots" / card["data"]["snapshot"]
    if not snapshot_dir.exists():
        raise PipelineError(f"the stable model's training snapshot {snapshot_dir} is gone: cannot compare")
    snapshot = Snapshot.load(snapshot_dir)
    columns, labels = snapshot.split_columns(snapshot.resolve_split(config.train_split, TRAIN))
    return split_statistics(snapshot.problem, columns, labels)


def compare(requests: dict[str, Any], training: dict[str, Any], config: PipelineConfig) -> list[tuple[bool, str]]:
    """Applies the drift thresholds; returns (threshold passed?, reason with the numbers) per check."""
    shift = abs(requests["pixel_mean"] - training["pixel_mean"]) / max(training["pixel_std"], 1e-6)
    distance = 0.5 * float(
        np.abs(distribution(requests["predicted_histogram"]) - distribution(training["label_histogram"])).sum()
    )
    checks = [
        (
            shift > config.drift_max_pixel_mean_shift,
            f"pixel mean {requests['pixel_mean']:.1f} vs training {training['pixel_mean']:.1f}: shift {shift:.2f} "
            f"training stds ({'>' if shift > config.drift_max_pixel_mean_shift else '<='} "
            f"drift_max_pixel_mean_shift {config.drift_max_pixel_mean_shift})",
        ),
        (
            distance > config.drift_max_class_distance,
            f"predicted-class distribution vs training labels: total variation distance {distance:.3f} "
            f"({'>' if distance > config.drift_max_class_distance else '<='} "
            f"drift_max_class_distance {config.drift_max_class_distance})",
        ),
    ]
    return checks


def plot_drift(requests: dict[str, Any], training: dict[str, Any], class_names: list[str], path: Path) -> Path:
    """Predicted classes against the training labels, and the confidence histogram, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (classes, confidence) = plt.subplots(1, 2, figsize=(12, 4.5))
    positions = np.arange(len(class_names))
    classes.bar(positions - 0.2, distribution(training["label_histogram"]), 0.4, label="training labels")
    classes.bar(positions + 0.2, distribution(requests["predicted_histogram"]), 0.4, label="requests: predicted")
    classes.set_xticks(positions, class_names, rotation=45, ha="right")
    classes.set_ylabel("share")
    classes.legend()
    classes.set_title(f"classes ({requests['count']} requests)")
    centers = (CONFIDENCE_BINS[:-1] + CONFIDENCE_BINS[1:]) / 2
    confidence.bar(centers, distribution(requests["confidence_histogram"]), 0.09)
    confidence.set_xlabel("confidence (highest probability)")
    confidence.set_ylabel("share of requests")
    confidence.set_title(f"confidence (mean {requests['mean_confidence']:.3f})")
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
    problem = card.get("problem") or {}
    features = problem.get("features") or [{"key": "images", "kind": "image"}]
    if problem.get("task", "multiclass") == "regression" or [f["kind"] for f in features] != ["image"]:
        # Serving-time drift of tables and text needs per-feature statistics: not judged, and said so.
        _remember(config, files)
        summary = (
            f"not judged: serving-time drift is checked for image classifiers; {config.model_name} is a "
            f"{problem.get('task')} model on {', '.join(f['kind'] for f in features)} features"
        )
        return DriftResult(False, summary, [], count, len(files))
    key = features[0]["key"]
    images, probabilities = logged.inputs[key], logged.outputs["probabilities"]
    if images.ndim == 4:
        images = images[..., 0] if images.shape[-1] == 1 else images.mean(axis=-1)
    requests = request_statistics(images, probabilities)
    training = training_statistics(config, card)
    checks = compare(requests, training, config)
    drifted, reasons = any(failed for failed, _ in checks), [reason for _, reason in checks]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = monitoring_dir(config) / stamp
    report = {
        "model_name": config.model_name,
        "checked_at": stamp,
        "stable_version": card.get("version"),
        "answering_versions": sorted({int(v) for v in logged.versions}),
        "files": [p.name for p in files],
        "requests": requests,
        "training": {k: training[k] for k in ("count", "pixel_mean", "pixel_std", "label_histogram")},
        "drifted": drifted,
        "reasons": reasons,
    }
    report_path = atomic_write_json(out / "drift.json", report)
    plot_path = plot_drift(requests, training, card["data"]["class_names"], out / "drift.png")
    _remember(config, files)
    summary = (
        f"drift in {count} requests: " + "; ".join(reason for failed, reason in checks if failed)
        if drifted
        else f"no drift in {count} requests (pixel shift and class distance within limits)"
    )
    return DriftResult(drifted, summary, reasons, count, len(files), str(report_path), str(plot_path))
