"""One loaded SavedModel version: its signatures, how to run them, and warmup."""

from __future__ import annotations

import logging
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import classification_pb2, inference_pb2, prediction_log_pb2, regression_pb2

from serving import tensors
from serving.protocol import ServingError, code_from_number, invalid, tf_type_name
from serving.server.batching import BatchOptions, BatchScheduler

log = logging.getLogger("serving.server")

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000

Arrays = dict[str, np.ndarray]


def read_signature_defs(path: Path, tags: tuple[str, ...] = ("serve",)) -> dict[str, Any]:
    """Reads the SignatureDefs of the MetaGraph with `tags` from saved_model.pb (what metadata returns)."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if set(tags) == set(meta_graph.meta_info_def.tags):
            return {k: v for k, v in meta_graph.signature_def.items() if not k.startswith("__")}
    raise ValueError(f"{path}: no MetaGraph tagged {','.join(tags)!r}")


def load_saved_model(path: Path, tags: tuple[str, ...]) -> tuple[Any, tempfile.TemporaryDirectory | None]:
    """Loads a SavedModel as TF Serving would run it.

    TF Serving feeds and fetches a TF1 signature's tensors by name and lets the graph judge
    shapes. TensorFlow's Python loader of TF1 SavedModels instead sets each signature's declared
    shape on its tensor, and copies the graph into a function where an early TF1 placeholder's
    empty `shape` reads as a scalar; it refuses models that TF Serving serves (TF Serving's own
    test model saved_model_half_plus_three, written by TF 1.0, on both counts). Such a model is
    loaded from a copy of saved_model.pb whose signatures leave shapes to the graph and whose
    placeholders take the shape the graph recorded for them, beside links to the original
    variables and assets.

    Args:
        path: The version folder.
        tags: The MetaGraph's tags.

    Returns:
        The loaded object, and the folder of the copy when one was needed (kept while it is served).

    Raises:
        ValueError, OSError, tf.errors.OpError: The SavedModel cannot be loaded.
    """
    try:
        return tf.saved_model.load(str(path), tags=list(tags)), None
    except ValueError:
        saved_model = saved_model_pb2.SavedModel()
        saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
        if any(meta_graph.object_graph_def.nodes for meta_graph in saved_model.meta_graphs):
            raise  # a TF2 SavedModel: its functions' shapes are part of the graph
        relaxed = _with_graph_shapes(path, saved_model)
        try:
            return tf.saved_model.load(relaxed.name, tags=list(tags)), relaxed
        except Exception:
            relaxed.cleanup()
            raise


def _with_graph_shapes(path: Path, saved_model) -> tempfile.TemporaryDirectory:
    for meta_graph in saved_model.meta_graphs:
        for node in meta_graph.graph_def.node:
            recorded = node.attr["_output_shapes"].list.shape if "_output_shapes" in node.attr else []
            if node.op == "Placeholder" and "shape" in node.attr and recorded:
                declared = node.attr["shape"].shape
                if not declared.dim and not declared.unknown_rank and recorded[0].unknown_rank:
                    declared.unknown_rank = True
        for signature in meta_graph.signature_def.values():
            for tensor_info in (*signature.inputs.values(), *signature.outputs.values()):
                tensor_info.tensor_shape.Clear()
                tensor_info.tensor_shape.unknown_rank = True
    folder = tempfile.TemporaryDirectory(prefix="tf1-saved-model-")
    Path(folder.name, "saved_model.pb").write_bytes(saved_model.SerializeToString())
    for child in path.iterdir():
        if child.name != "saved_model.pb":
            Path(folder.name, child.name).symlink_to(child.resolve())
    return folder


# Lines TensorFlow's Python runtime adds around an op's status message ("Graph execution error:",
# where the node was defined, the node names): TF Serving answers with the op's message alone.
_WRAPPER_LINE = re.compile(r"^(Graph execution error:|Detected at node |<stack traces unavailable>|\[\[\{\{)")


def tf_error(err: tf.errors.OpError) -> ServingError:
    """Converts a TensorFlow runtime error to a ServingError with the same code and the op's own message."""
    lines = [line.strip() for line in str(err.message).splitlines() if line.strip()]
    message = next((line for line in lines if "assertion failed" in line), None)
    useful = [line for line in lines if not _WRAPPER_LINE.match(line)]
    return ServingError(code_from_number(err.error_code), message or (useful or lines or [str(err)])[0])


class Servable:
    """A loaded SavedModel version.

    Args:
        name: Model name.
        version: Version number.
        path: The version folder.
        batch_options: Batch predict calls with these options, or None to run each alone.
        on_batch: Metrics hook called with each batch size.
        on_dequeue: Metrics hook called with each request's microseconds in the batching queue.
        method_name_check: Classify/Regress only on signatures of that method_name
            (`--enable_signature_method_name_check`; off by default, as in TF Serving).
        tags: The MetaGraph to load (`--saved_model_tags`).
        max_rows: Most rows one predict request may carry (`--max_rows_per_request`; 0: no limit).
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        batch_options: BatchOptions | None,
        on_batch=None,
        method_name_check: bool = False,
        on_dequeue=None,
        tags: tuple[str, ...] = ("serve",),
        max_rows: int = 0,
    ):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = read_signature_defs(path, tags)
        self._loaded, self._relaxed_copy = load_saved_model(path, tags)
        self._functions = dict(self._loaded.signatures)
        # Input specs sorted by name, read once: the property is rebuilt on every access.
        self._input_specs = {
            key: sorted(function.structured_input_signature[1].items()) for key, function in self._functions.items()
        }
        self._batch_options = batch_options
        self._on_batch = on_batch
        self._on_dequeue = on_dequeue
        self._batchers: dict[str, BatchScheduler] = {}
        self._batchers_lock = threading.Lock()
        self._method_name_check = method_name_check
        self._max_rows = max_rows

    # --- signatures ---------------------------------------------------------------

    def signature(self, name: str) -> tuple[str, Any]:
        """Returns (resolved name, SignatureDef); INVALID_ARGUMENT if unknown."""
        resolved = name or DEFAULT_SIGNATURE
        if resolved not in self.signature_defs or resolved not in self._functions:
            raise invalid(f'Serving signature name: "{resolved}" not found in signature def')
        return resolved, self.signature_defs[resolved]

    def input_dtypes(self, signature_name: str) -> dict[str, str]:
        """Returns {input name: dtype name} of a signature, sorted by name."""
        _, signature_def = self.signature(signature_name)
        return {k: tf.as_dtype(v.dtype).name for k, v in sorted(signature_def.inputs.items())}

    # --- predict ------------------------------------------------------------------

    def _run(self, signature_name: str, inputs: Arrays) -> Arrays:
        function = self._functions[signature_name]
        feeds = {}
        for index, (name, spec) in enumerate(self._input_specs[signature_name]):
            array = inputs[name]
            if array.dtype == object:
                if spec.dtype != tf.string:
                    raise invalid(f"Expects arg[{index}] to be {tf_type_name(spec.dtype.name)} but string is provided")
                feeds[name] = tf.constant(array.tolist() if array.ndim else array.item(), dtype=spec.dtype)
                continue
            if tf.as_dtype(array.dtype) != spec.dtype:
                raise invalid(
                    f"Expects arg[{index}] to be {tf_type_name(spec.dtype.name)} but "
                    f"{tf_type_name(tf.as_dtype(array.dtype).name)} is provided"
                )
            feeds[name] = tf.constant(array)
        try:
            outputs = function(**feeds)
        except tf.errors.OpError as err:
            raise tf_error(err) from None
        except (TypeError, ValueError) as err:
            raise invalid(str(err).splitlines()[0]) from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def predict(
        self, signature_name: str, inputs: Arrays, output_filter=(), timeout: float | None = None
    ) -> tuple[str, Arrays]:
        """Runs a predict signature.

        Args:
            signature_name: Signature key ('' for serving_default).
            inputs: Input arrays by name.
            output_filter: Output names to return (all when empty).
            timeout: Seconds to wait in the batching queue.

        Returns:
            (resolved signature name, output arrays).

        Raises:
            ServingError: INVALID_ARGUMENT for unknown signatures, missing/extra inputs or
                wrong dtypes, and the model's own errors with their codes.
        """
        resolved, signature_def = self.signature(signature_name)
        expected = set(signature_def.inputs)
        if set(inputs) != expected:
            extra, missing = sorted(set(inputs) - expected), sorted(expected - set(inputs))
            raise invalid(
                f"input size does not match signature: {len(inputs)}!={len(expected)} for inputs "
                f"{','.join(sorted(inputs))}. Sent extra: {extra}. Missing but required: {missing}."
            )
        rows = max((array.shape[0] for array in inputs.values() if array.ndim), default=0)
        if self._max_rows and rows > self._max_rows:
            raise invalid(
                f"Request has {rows} rows; this server takes at most {self._max_rows} per request "
                "(--max_rows_per_request)"
            )
        unknown = sorted(set(output_filter) - set(signature_def.outputs))
        if unknown:
            raise invalid(f"output tensor alias not found in signature: {unknown[0]}")
        if self._batch_options is not None:
            outputs = self._batcher(resolved).submit(inputs, timeout)
        else:
            outputs = self._run(resolved, inputs)
        if output_filter:
            outputs = {name: outputs[name] for name in output_filter}
        return resolved, outputs

    def _batcher(self, signature_name: str) -> BatchScheduler:
        with self._batchers_lock:
            if signature_name not in self._batchers:
                self._batchers[signature_name] = BatchScheduler(
                    lambda arrays: self._run(signature_name, arrays),
                    self._batch_options,
                    self._on_batch,
                    self._on_dequeue,
                )
            return self._batchers[signature_name]

    # --- classify / regress ---------------------------------------------------------

    def _examples_input(self, signature_name: str, method: str, model_input) -> tuple[str, Any, Arrays]:
        resolved, signature_def = self.signature(signature_name)
        self._check_examples_signature(signature_def, method)
        kind = model_input.WhichOneof("kind")
        if kind == "example_list":
            examples = list(model_input.example_list.examples)
        elif kind == "example_list_with_context":
            context = model_input.example_list_with_context.context
            examples = []
            for example in model_input.example_list_with_context.examples:
                merged = type(example)()
                merged.CopyFrom(context)
                merged.MergeFrom(example)
                examples.append(merged)
        else:
            raise invalid("Input is empty")
        if not examples:
            raise invalid("Input is empty")
        (input_name,) = signature_def.inputs
        serialized = np.empty(len(examples), dtype=object)
        serialized[:] = [e.SerializeToString() for e in examples]
        return resolved, signature_def, self._run(resolved, {input_name: serialized})

    def _check_examples_signature(self, signature_def, method: str) -> None:
        """TF Serving's PreProcessClassification/PreProcessRegression checks (classifier.cc, regressor.cc).

        With the method-name check on, only the method_name counts; off (the default), any
        signature of the right structure works, whatever its method_name (TF2 exports say predict).
        """
        kind = "classification" if method == CLASSIFY_METHOD else "regression"
        if self._method_name_check:
            if signature_def.method_name != method:
                raise invalid(f"Expected {kind} signature method_name to be {method}. Was: {signature_def.method_name}")
            return
        outputs = set(signature_def.outputs)
        if len(signature_def.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        if method == CLASSIFY_METHOD and len(outputs) not in (1, 2):
            raise invalid(f"Expected one or two output Tensors, found {len(outputs)}")
        if method == REGRESS_METHOD and len(outputs) != 1:
            raise invalid("Expected one output Tensor.")
        if "inputs" not in signature_def.inputs:
            raise invalid(f"No {kind} inputs found in SignatureDef: {signature_def}")
        if method == CLASSIFY_METHOD and not outputs & {"classes", "scores"}:
            raise invalid(
                'Expected classification signature outputs to contain at least one of "classes" or "scores". '
                f"Signature was: {signature_def}"
            )
        if method == REGRESS_METHOD and "outputs" not in outputs:
            raise invalid(f"No regression outputs found in SignatureDef: {signature_def}")

    def classify(self, signature_name: str, model_input) -> tuple[str, Any]:
        """Runs a classify signature; returns (signature name, ClassificationResult)."""
        resolved, signature_def, outputs = self._examples_input(signature_name, CLASSIFY_METHOD, model_input)
        classes = outputs.get("classes")
        scores = outputs.get("scores")
        result = classification_pb2.ClassificationResult()
        rows = (classes if classes is not None else scores).shape[0]
        for row in range(rows):
            classification = result.classifications.add()
            width = (classes if classes is not None else scores).shape[1]
            for column in range(width):
                entry = classification.classes.add()
                if classes is not None:
                    label = classes[row, column]
                    entry.label = label.decode() if isinstance(label, bytes) else str(label)
                if scores is not None:
                    entry.score = float(scores[row, column])
        return resolved, result

    def regress(self, signature_name: str, model_input) -> tuple[str, Any]:
        """Runs a regress signature; returns (signature name, RegressionResult)."""
        resolved, signature_def, outputs = self._examples_input(signature_name, REGRESS_METHOD, model_input)
        values = np.asarray(outputs["outputs"]).reshape(-1)
        result = regression_pb2.RegressionResult()
        for value in values:
            result.regressions.add(value=float(value))
        return resolved, result

    def multi_inference(self, request) -> inference_pb2.MultiInferenceResponse:
        """Runs several classify/regress tasks on one input."""
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            if task.model_spec.name != self.name:
                raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            result = response.results.add()
            result.model_spec.name = self.name
            result.model_spec.version.value = self.version
            if task.method_name == CLASSIFY_METHOD:
                name, classification = self.classify(task.model_spec.signature_name, request.input)
                result.classification_result.CopyFrom(classification)
            elif task.method_name == REGRESS_METHOD:
                name, regression = self.regress(task.model_spec.signature_name, request.input)
                result.regression_result.CopyFrom(regression)
            else:
                raise ServingError(
                    grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}"
                )
            result.model_spec.signature_name = name
        return response

    # --- warmup and lifecycle ------------------------------------------------------

    def warmup(self, iterations: int = 1) -> int:
        """Replays assets.extra/tf_serving_warmup_requests, each record `iterations` times.

        As TF Serving's saved_model_warmup_util.cc: more than 1000 records fail the load.

        Returns:
            How many records ran.

        Raises:
            ServingError: if a warmup request fails or there are too many records (the
                version then fails to load).
        """
        path = self.path / WARMUP_FILE
        if not path.exists():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)):
            try:
                entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            except DecodeError:
                raise invalid(f"Failed to parse warmup record from {path}") from None
            for _ in range(iterations):
                self._replay(entry)
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise invalid(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
        return count

    def _replay(self, entry) -> None:
        kind = entry.WhichOneof("log_type")
        if kind == "predict_log":
            request = entry.predict_log.request
            inputs = {name: tensors.to_array(proto) for name, proto in request.inputs.items()}
            self.predict(request.model_spec.signature_name, inputs, list(request.output_filter))
        elif kind == "classify_log":
            self.classify(entry.classify_log.request.model_spec.signature_name, entry.classify_log.request.input)
        elif kind == "regress_log":
            self.regress(entry.regress_log.request.model_spec.signature_name, entry.regress_log.request.input)
        elif kind == "multi_inference_log":
            self.multi_inference(entry.multi_inference_log.request)
        else:
            raise invalid(f"Unsupported log_type for warmup: {kind}")

    def queue_depth(self) -> tuple[int, int]:
        """Returns (tasks, rows) waiting in this version's batching queues."""
        depths = [batcher.queue_depth() for batcher in list(self._batchers.values())]
        return sum(d[0] for d in depths), sum(d[1] for d in depths)

    def close(self) -> None:
        """Stops this version's batch threads (queued requests still finish)."""
        for batcher in self._batchers.values():
            batcher.close()
