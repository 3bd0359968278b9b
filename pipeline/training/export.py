"""Stage 6, export: a TF Serving SavedModel, published atomically as the next version.

The serving contract follows the problem spec (`pipeline.core.problem`):

- `serving_default` takes one input per feature, named by its key: float32 or int64 [N] for
  numbers, string [N] for categories and text, uint8 [N,H,W,C] for images (single-channel
  images also as [N,H,W]). Classification answers `probabilities` float32 [N,K], `class_ids`
  int64 [N] and `class_names` string [N] (the predicted class's name, so clients need no
  label file); regression answers `predictions` float32 [N].
- Without image features, `classification` (or `regression`) takes serialized `tf.Example`s
  (input `inputs`, features named by key, missing numbers NaN and missing text ''): TF Serving's
  Classify API answers `classes`/`scores` [N,K], its Regress API `outputs` [N]. Requests name
  the signature (`signature_name: "classification"`).

Preprocessing is inside the model, so all of them take raw features. Class names travel in
`assets/class_names.txt`; `assets.extra/` carries TF Serving warmup requests (real rows of the
snapshot) and a model card with the model's lineage, problem spec and column mapping.
Publishing (atomic rename to the next version) and pruning belong to `pipeline.core.model_repo`.
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
from pipeline.core.model_repo import (
    CLASS_NAMES_ASSET,
    CLASSIFY_SIGNATURE,
    EXAMPLES_INPUT,
    REGRESS_SIGNATURE,
    SIGNATURE,
)
from pipeline.core.problem import BINARY, FLOAT, IMAGE, INT, REGRESSION, STRING, FeatureSpec, ProblemSpec
from pipeline.core.user_code import model_code_digest
from pipeline.data.snapshot import TEST, Snapshot

log = logging.getLogger(__name__)

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


@dataclasses.dataclass(frozen=True)
class ExportResult(StageResult):
    """Outputs of the export stage."""

    version: int
    version_dir: Path
    model_card_path: Path
    removed_versions: list[int]


def _input_spec(feature: FeatureSpec):
    import tensorflow as tf

    if feature.kind == IMAGE:
        return tf.TensorSpec(None, tf.uint8, name=feature.key)  # any rank: checked with a clear message
    dtype = {FLOAT: tf.float32, INT: tf.int64, STRING: tf.string}[feature.dtype]
    return tf.TensorSpec([None], dtype, name=feature.key)


def _checked_image(images, feature: FeatureSpec):
    """Images [N,H,W,C] (single-channel also [N,H,W]) or an INVALID_ARGUMENT naming the expected shape."""
    import tensorflow as tf

    height, width, channels = feature.shape
    expected = tf.constant([height, width, channels], tf.int32)
    if channels == 1:
        images = tf.cond(tf.equal(tf.rank(images), 3), lambda: tf.expand_dims(images, -1), lambda: images)
    rank_ok = tf.equal(tf.rank(images), 4)
    # Padding lets the shape comparison run for any rank without a branch.
    trailing = tf.concat([tf.shape(images), tf.zeros([4], tf.int32)], 0)[1:4]
    shape_ok = tf.reduce_all(tf.equal(trailing, expected))
    check = tf.debugging.Assert(
        tf.logical_and(rank_ok, shape_ok),
        [
            f"{feature.key} must be uint8 [N,{height},{width}"
            + ("] or [N," + f"{height},{width},1]" if channels == 1 else f",{channels}]")
            + ", got shape",
            tf.shape(images),
        ],
        summarize=8,
    )
    with tf.control_dependencies([check]):
        return tf.reshape(images, [-1, height, width, channels])


def _example_parsing_spec(problem: ProblemSpec) -> dict[str, Any]:
    """tf.io.parse_example's features: one per feature key; missing numbers NaN, missing text ''."""
    import tensorflow as tf

    spec = {}
    for feature in problem.features:
        if feature.dtype == FLOAT:
            spec[feature.key] = tf.io.FixedLenFeature([], tf.float32, default_value=float("nan"))
        elif feature.dtype == INT:
            spec[feature.key] = tf.io.FixedLenFeature([], tf.int64)
        else:
            spec[feature.key] = tf.io.FixedLenFeature([], tf.string, default_value="")
    return spec


def _serving_module(model, problem: ProblemSpec, class_names_file: Path | None, decision_threshold: float):
    import tensorflow as tf

    class_names = list(problem.class_names)
    parsing_spec = _example_parsing_spec(problem) if problem.takes_examples() else None

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            if class_names_file is not None:
                self.class_names = tf.saved_model.Asset(str(class_names_file))

        def _outputs(self, features):
            inputs = {}
            for feature in problem.features:
                value = features[feature.key]
                inputs[feature.key] = (
                    tf.cast(_checked_image(value, feature), tf.float32) if feature.kind == IMAGE else value
                )
            raw = tf.cast(self.model(inputs, training=False), tf.float32)
            if problem.task == REGRESSION:
                return {"predictions": tf.reshape(raw, [-1])}
            if problem.task == BINARY:
                positive = tf.reshape(raw, [-1, 1])
                probabilities = tf.concat([1.0 - positive, positive], axis=1)
                class_ids = tf.cast(positive[:, 0] >= decision_threshold, tf.int64)
            else:
                probabilities = raw
                class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {
                "probabilities": probabilities,
                "class_ids": class_ids,
                "class_names": tf.gather(tf.constant(class_names), class_ids),
            }

        @tf.function(input_signature=[{f.key: _input_spec(f) for f in problem.features}])
        def serve(self, features):
            return self._outputs(features)

        # Only the signature that fits is defined: saving traces every tf.function of the module.
        if parsing_spec is not None and problem.is_classification:

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
            def classify(self, serialized):
                outputs = self._outputs(tf.io.parse_example(serialized, parsing_spec))
                rows = tf.shape(outputs["probabilities"])[0]
                return {
                    "classes": tf.tile(tf.constant([class_names]), [rows, 1]),
                    "scores": outputs["probabilities"],
                }

        if parsing_spec is not None and not problem.is_classification:

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
            def regress(self, serialized):
                return {"outputs": self._outputs(tf.io.parse_example(serialized, parsing_spec))["predictions"]}

    return ServingModule()


def example_signatures(module, problem: ProblemSpec) -> dict[str, Any]:
    """The Classify or Regress signature of a table model (none for image models)."""
    if not problem.takes_examples():
        return {}
    if problem.task == REGRESSION:
        return {REGRESS_SIGNATURE: module.regress}
    return {CLASSIFY_SIGNATURE: module.classify}


def set_method_names(version_dir: Path) -> None:
    """Marks the Classify/Regress signatures with TF Serving's method names.

    TF2's `tf.saved_model.save` marks every signature 'predict'; TF Serving with
    `--enable_signature_method_name_check` accepts Classify/Regress only on signatures whose
    method_name says so, so saved_model.pb is rewritten with them.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = version_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    methods = {CLASSIFY_SIGNATURE: CLASSIFY_METHOD, REGRESS_SIGNATURE: REGRESS_METHOD}
    changed = False
    for meta_graph in saved_model.meta_graphs:
        for name, method in methods.items():
            if name in meta_graph.signature_def:
                meta_graph.signature_def[name].method_name = method
                changed = True
    if changed:
        path.write_bytes(saved_model.SerializeToString())


def _feature_value(feature: FeatureSpec, value) -> Any:
    from tensorflow.core.example import feature_pb2

    if feature.dtype == FLOAT:
        return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[float(value)]))
    if feature.dtype == INT:
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(value)]))
    text = value if isinstance(value, bytes) else str(value).encode()
    return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[text]))


def rows_to_examples(problem: ProblemSpec, rows: dict[str, np.ndarray]) -> list:
    """Request rows as `tf.train.Example`s, features named by key (what Classify/Regress take)."""
    from tensorflow.core.example import example_pb2

    count = len(next(iter(rows.values())))
    examples = []
    for index in range(count):
        example = example_pb2.Example()
        for feature in problem.features:
            example.features.feature[feature.key].CopyFrom(_feature_value(feature, rows[feature.key][index]))
        examples.append(example)
    return examples


def write_warmup_requests(
    path: Path, rows: dict[str, np.ndarray], model_name: str, count: int, problem: ProblemSpec | None = None
) -> Path:
    """Writes TF Serving warmup records: PredictionLogs of real rows, batch sizes 1, 2, 4, ...

    Table models also get a Classify or Regress record, so those signatures are warm too.

    Args:
        path: `<version>/assets.extra/tf_serving_warmup_requests`.
        rows: {input name: values} of real rows, as clients send them.
        model_name: Model name put in each request's model_spec.
        count: Number of records (TF Serving reads at most 1000).
        problem: The problem spec (for the Classify/Regress records); None: Predict records only.

    Returns:
        The path written.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2, regression_pb2

    total = len(next(iter(rows.values())))
    path.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        batch = min(2 ** (index % 6), total)
        start = (index * 7) % max(total - batch + 1, 1)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = SIGNATURE
        for name, values in rows.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(_as_request_values(values[start : start + batch])))
        records.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    if problem is not None and problem.takes_examples() and count > 1:
        examples = rows_to_examples(problem, {k: v[: min(4, total)] for k, v in rows.items()})
        if problem.task == REGRESSION:
            request = regression_pb2.RegressionRequest()
            request.model_spec.signature_name = REGRESS_SIGNATURE
            request.input.example_list.examples.extend(examples)
            log_record = prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request))
        else:
            request = classification_pb2.ClassificationRequest()
            request.model_spec.signature_name = CLASSIFY_SIGNATURE
            request.input.example_list.examples.extend(examples)
            log_record = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))
        request.model_spec.name = model_name
        records[-1] = log_record
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    return path


def _as_request_values(values: np.ndarray) -> np.ndarray:
    """Text as bytes (what a TensorProto of strings holds); other values as they are."""
    if values.dtype == object:
        encoded = np.empty(len(values), dtype=object)
        encoded[:] = [v.encode() if isinstance(v, str) else v for v in values]
        return encoded
    return values


def build_model_card(
    config: PipelineConfig, snapshot: Snapshot, evaluation: dict[str, Any], model_builder: str | None = None
) -> dict[str, Any]:
    """Returns the model card of a new version: lineage (data, config, code), problem, metrics, gate, signature.

    `publish_version` adds the version number when it is known.
    """
    problem = snapshot.problem
    signatures = {
        SIGNATURE: {"inputs": problem.serving_inputs(), "outputs": problem.serving_outputs()},
    }
    if problem.takes_examples():
        name = REGRESS_SIGNATURE if problem.task == REGRESSION else CLASSIFY_SIGNATURE
        signatures[name] = {"inputs": {EXAMPLES_INPUT: {"dtype": "string", "shape": ["N"]}}, "api": name}
    return {
        "model_name": config.model_name,
        "created_at": utc_now(),
        "code_revision": code_revision(),
        "model_builder": model_builder or resolved_builder_name(config.model, problem),
        "model_code": model_code_digest(config.model),
        "data": {
            "source": snapshot.source,
            "snapshot": snapshot.path.name,
            "fingerprint": snapshot.fingerprint,
            "splits": snapshot.splits,
            "dropped_rows": snapshot.dropped_rows,
            "class_names": snapshot.class_names,
        },
        "problem": problem.to_dict(),
        # Source columns whose serving input name differs (characters outside [A-Za-z0-9_] become '_').
        "column_mapping": problem.renamed_columns(),
        "config": config.to_dict(),
        "metrics": evaluation["metrics"]["headline"],
        "gate_metric": evaluation.get("gate_metric"),
        "gate": {"blessed": True, "reasons": evaluation.get("reasons", [])},
        "baseline": evaluation.get("baseline"),
        "signature": {"name": SIGNATURE, **signatures[SIGNATURE]},
        "signatures": signatures,
    }


def resolved_builder_name(model: str, problem: ProblemSpec) -> str:
    """The builder a config's `model` stands for ('auto' resolved for the problem)."""
    from pipeline.training.models import default_builder

    return default_builder(problem) if model == "auto" else model


def write_saved_model(
    model_path: str | Path, problem: ProblemSpec, destination: Path, decision_threshold: float
) -> None:
    """Saves the Keras model wrapped in the serving signatures, with the class-names asset."""
    import tensorflow as tf

    from pipeline.training.models import load_model

    model = load_model(model_path)
    with tempfile.TemporaryDirectory() as scratch:
        class_names_file = None
        if problem.is_classification:
            class_names_file = Path(scratch) / CLASS_NAMES_ASSET
            class_names_file.write_text("\n".join(problem.class_names) + "\n")
        module = _serving_module(model, problem, class_names_file, decision_threshold)
        signatures = {SIGNATURE: module.serve, **example_signatures(module, problem)}
        tf.saved_model.save(module, str(destination), signatures=signatures)
    set_method_names(destination)


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
    model_builder: str | None = None,
) -> ExportResult:
    """Runs the export stage: builds the SavedModel and publishes it atomically.

    Args:
        config: Uses `model_base_path`, `model_name`, `keep_versions`, `warmup_requests`,
            `decision_threshold`.
        snapshot: The data snapshot (problem spec, warmup rows, lineage).
        model_path: The trained Keras model.
        evaluation_path: evaluation.json of the same model; it must say blessed.
        protected_versions: Versions retention must keep (e.g. ones serving labels point at).
        model_builder: The builder that made the model (for the model card).

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

    rows = snapshot.request_rows(snapshot.resolve_split(config.test_split, TEST), 64)
    with staging_dir(model_dir, "export") as staging:
        try:
            write_saved_model(model_path, snapshot.problem, staging, config.decision_threshold)
            write_warmup_requests(
                model_repo.warmup_path(staging), rows, config.model_name, config.warmup_requests, snapshot.problem
            )
        except Exception as err:
            raise ExportError(f"writing the SavedModel under {model_dir} failed: {_disk_reason(err)}") from err
        model_repo.verify_saved_model(staging, {k: v[:2] for k, v in rows.items()})  # publish only what answers
        card = build_model_card(config, snapshot, evaluation, model_builder)
        version, version_dir = model_repo.publish_version(staging, model_dir, card)
    removed = model_repo.prune_versions(model_dir, config.keep_versions, protected_versions)
    return ExportResult(version, version_dir, model_repo.model_card_path(version_dir), removed)
