"""Stage 6, export: a TF Serving SavedModel, published atomically as the next version.

The SavedModel's `serving_default` signature takes uint8 `images` [N,H,W] (or
[N,H,W,C]) and returns `probabilities` float32 [N,classes], `class_ids` int64 [N] and
`class_names` string [N] (the predicted class's name, so clients need no label file).
Class names travel in `assets/class_names.txt`; `assets.extra/` carries TF Serving
warmup requests and a model card with the model's lineage. Publishing (atomic rename to
the next version) and pruning belong to `pipeline.core.model_repo`.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import model_repo
from pipeline.core.artifacts import StageResult, code_revision, read_json, remove_stale_staging, staging_dir, utc_now
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ExportError
from pipeline.core.model_repo import CLASS_NAMES_ASSET, INPUT_NAME, SIGNATURE
from pipeline.data.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportResult(StageResult):
    """Outputs of the export stage."""

    version: int
    version_dir: Path
    model_card_path: Path
    removed_versions: list[int]


def _serving_module(model, image_shape: tuple[int, int, int], class_names: list[str], class_names_file: Path):
    import tensorflow as tf

    height, width, channels = image_shape
    expected = tf.constant([height, width, channels], tf.int32)

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.class_names = tf.saved_model.Asset(str(class_names_file))

        # Unknown rank so that [N,H,W] and [N,H,W,1] are both accepted.
        @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name=INPUT_NAME)])
        def serve(self, images):
            if channels == 1:
                images = tf.cond(
                    tf.equal(tf.rank(images), 3),
                    lambda: tf.expand_dims(images, -1),
                    lambda: images,
                )
            rank_ok = tf.equal(tf.rank(images), 4)
            # Padding lets the shape comparison run for any rank without a branch.
            trailing = tf.concat([tf.shape(images), tf.zeros([4], tf.int32)], 0)[1:4]
            shape_ok = tf.reduce_all(tf.equal(trailing, expected))
            check = tf.debugging.Assert(
                tf.logical_and(rank_ok, shape_ok),
                [
                    f"images must be uint8 [N,{height},{width}"
                    + ("] or [N," + f"{height},{width},1]" if channels == 1 else f",{channels}]")
                    + ", got shape",
                    tf.shape(images),
                ],
                summarize=8,
            )
            with tf.control_dependencies([check]):
                images = tf.reshape(images, [-1, height, width, channels])
            probabilities = tf.cast(self.model(tf.cast(images, tf.float32), training=False), tf.float32)
            class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {
                "probabilities": probabilities,
                "class_ids": class_ids,
                "class_names": tf.gather(tf.constant(class_names), class_ids),
            }

    return ServingModule()


def write_warmup_requests(path: Path, images: np.ndarray, model_name: str, count: int) -> Path:
    """Writes TF Serving warmup records: PredictionLogs of real images, batch sizes 1, 2, 4, ...

    Args:
        path: `<version>/assets.extra/tf_serving_warmup_requests`.
        images: uint8 example images, [N,H,W] (single channel) or [N,H,W,C].
        model_name: Model name put in each request's model_spec.
        count: Number of records (TF Serving reads at most 1000).

    Returns:
        The path written.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for index in range(count):
            batch = min(2 ** (index % 6), images.shape[0])
            start = (index * 7) % max(images.shape[0] - batch + 1, 1)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = SIGNATURE
            request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(images[start : start + batch]))
            log_record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log_record.SerializeToString())
    return path


def build_model_card(config: PipelineConfig, snapshot: Snapshot, evaluation: dict[str, Any]) -> dict[str, Any]:
    """Returns the model card of a new version: lineage (data, config, code), metrics, gate, signature.

    `publish_version` adds the version number when it is known.
    """
    return {
        "model_name": config.model_name,
        "created_at": utc_now(),
        "code_revision": code_revision(),
        "data": {
            "source": snapshot.source,
            "snapshot": snapshot.path.name,
            "fingerprint": snapshot.fingerprint,
            "splits": snapshot.splits,
            "class_names": snapshot.class_names,
        },
        "config": config.to_dict(),
        "metrics": {k: evaluation["metrics"][k] for k in ("accuracy", "loss", "macro_f1", "examples")},
        "gate": {"blessed": True, "reasons": evaluation.get("reasons", [])},
        "baseline": evaluation.get("baseline"),
        "signature": {
            "name": SIGNATURE,
            "inputs": {INPUT_NAME: {"dtype": "uint8", "shape": ["N", *snapshot.image_shape]}},
            "outputs": {
                "probabilities": {"dtype": "float32", "shape": ["N", snapshot.num_classes]},
                "class_ids": {"dtype": "int64", "shape": ["N"]},
                "class_names": {"dtype": "string", "shape": ["N"]},
            },
        },
    }


def write_saved_model(model_path: str | Path, snapshot: Snapshot, destination: Path) -> None:
    """Saves the Keras model wrapped in the serving signature, with its class-names asset."""
    import tensorflow as tf

    from pipeline.training.models import load_model

    model = load_model(model_path)
    with tempfile.TemporaryDirectory() as scratch:
        class_names_file = Path(scratch) / CLASS_NAMES_ASSET
        class_names_file.write_text("\n".join(snapshot.class_names) + "\n")
        module = _serving_module(model, snapshot.image_shape, snapshot.class_names, class_names_file)
        tf.saved_model.save(module, str(destination), signatures={SIGNATURE: module.serve})


def _disk_reason(err: BaseException) -> str:
    """The one line that says why a write failed (TensorFlow's errors carry an op trace)."""
    text = getattr(err, "message", None) or str(err)
    for known in ("No space left on device", "Read-only file system", "Permission denied", "Disk quota exceeded"):
        if known in text:
            return f"{known} ({type(err).__name__})"
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def export(
    config: PipelineConfig,
    snapshot: Snapshot,
    model_path: str | Path,
    evaluation_path: str | Path,
    protected_versions: Iterable[int] = (),
) -> ExportResult:
    """Runs the export stage: builds the SavedModel and publishes it atomically.

    Args:
        config: Uses `model_base_path`, `model_name`, `keep_versions`, `warmup_requests`.
        snapshot: The data snapshot (class names, image shape, warmup images, lineage).
        model_path: The trained Keras model.
        evaluation_path: evaluation.json of the same model; it must say blessed.
        protected_versions: Versions retention must keep (e.g. ones serving labels point at).

    Returns:
        The new version and where it is.

    Raises:
        ExportError: if the model is not blessed, the base path is not writable, or
            publishing fails. Nothing numeric is left behind on failure.
    """
    evaluation = read_json(evaluation_path)
    if not evaluation.get("blessed"):
        raise ExportError(
            f"model {model_path} is not blessed ({'; '.join(evaluation.get('reasons', []))}); not exporting"
        )
    model_dir = config.model_dir
    model_repo.ensure_writable(model_dir)
    for leftover in remove_stale_staging(model_dir):
        log.warning("removed leftover of an interrupted export: %s", leftover)

    images = snapshot.request_images(config.test_split, 64)
    with staging_dir(model_dir, "export") as staging:
        try:
            write_saved_model(model_path, snapshot, staging)
            write_warmup_requests(model_repo.warmup_path(staging), images, config.model_name, config.warmup_requests)
        except Exception as err:
            raise ExportError(f"writing the SavedModel under {model_dir} failed: {_disk_reason(err)}") from err
        model_repo.verify_saved_model(staging, images[:2])  # publish only what loads and answers
        card = build_model_card(config, snapshot, evaluation)
        version, version_dir = model_repo.publish_version(staging, model_dir, card)
    removed = model_repo.prune_versions(model_dir, config.keep_versions, protected_versions)
    return ExportResult(version, version_dir, model_repo.model_card_path(version_dir), removed)
