"""A TensorFlow Serving client with the same methods over gRPC and REST.

Works against the official `tensorflow/serving` image and the local server alike:

    client = TFServingClient(grpc_target="localhost:8500", rest_url="http://localhost:8501")
    result = client.predict("fashion_mnist", {"images": images}, label="stable")
    result["class_names"], result.version
    client.predict("penguins", {"island": np.array(["Biscoe"]), "bill_length_mm": np.array([39.1], np.float32)})
    client.classify("penguins", [{"island": "Biscoe", "bill_length_mm": 39.1}], signature="classification")

CLI: `python -m serving.client predict --image shoe.png [--grpc|--rest] [--label stable]`,
`python -m serving.client predict --rows rows.csv|rows.jsonl` (one JSON line per answer),
`python -m serving.client status`, `python -m serving.client metadata`.
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import grpc
import numpy as np
import tenacity

from serving.protocol import ServingError, code_from_http, code_from_number

GRPC = "grpc"
REST = "rest"
COLUMNAR, ROWS = "columnar", "rows"  # TF Serving's two REST request formats ("inputs", "instances")
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}


@dataclasses.dataclass
class PredictResult:
    """Outputs of a predict call.

    Attributes:
        outputs: Output arrays by name (strings as bytes over gRPC, str over REST).
        version: The model version that answered (gRPC reports it; REST does not).
    """

    outputs: dict[str, np.ndarray]
    version: int | None = None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]


class TFServingClient:
    """Calls TF Serving's PredictionService/ModelService over gRPC, or its REST API.

    Args:
        grpc_target: host:port of the gRPC API.
        rest_url: Base URL of the REST API.
        protocol: Default protocol, 'grpc' or 'rest'.
        timeout: Seconds per attempt.
        retries: Extra attempts when the server is UNAVAILABLE (refused, restarting).
        backoff: First wait between attempts in seconds; doubles each time.
        management_target: gRPC address of HandleReloadConfigRequest when the server serves
            model management apart (`--model_management_address`); default `grpc_target`.
    """

    def __init__(
        self,
        grpc_target: str = "localhost:8500",
        rest_url: str = "http://localhost:8501",
        protocol: str = GRPC,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        management_target: str | None = None,
    ):
        if protocol not in (GRPC, REST):
            raise ValueError(f"protocol must be 'grpc' or 'rest', got {protocol!r}")
        self.grpc_target = grpc_target
        self.rest_url = rest_url.rstrip("/")
        self.protocol = protocol
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.management_target = management_target
        self._channel = None
        self._management_channel = None
        self._output_names: dict[tuple, str] = {}

    # --- plumbing -------------------------------------------------------------

    def _stubs(self):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if self._channel is None:
            self._channel = grpc.insecure_channel(
                self.grpc_target,
                options=[
                    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                    ("grpc.max_send_message_length", 256 * 1024 * 1024),
                ],
            )
        return (
            prediction_service_pb2_grpc.PredictionServiceStub(self._channel),
            model_service_pb2_grpc.ModelServiceStub(self._channel),
        )

    def _with_retries(self, call):
        """Calls `call`, again after `backoff`, 2 x `backoff`, ... while the server is UNAVAILABLE."""

        def attempt():
            try:
                return call()
            except grpc.RpcError as err:
                raise ServingError(err.code(), err.details() or str(err)) from None

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda err: isinstance(err, ServingError) and err.code in _RETRYABLE),
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_exponential(multiplier=self.backoff),
            reraise=True,
        )(attempt)

    def _rest(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.rest_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except (json.JSONDecodeError, AttributeError):
                message = text or err.reason
            raise ServingError(code_from_http(err.code), message) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.rest_url}: {reason}") from None
            raise ServingError(grpc.StatusCode.UNAVAILABLE, f"{self.rest_url}: {reason}") from None

    @staticmethod
    def _rest_path(model: str, version: int | None, label: str | None) -> str:
        if version is not None and label:
            raise ValueError("give a version or a label, not both")
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label:
            path += f"/labels/{urllib.parse.quote(label, safe='')}"
        return path

    @staticmethod
    def _model_spec(spec, model: str, version: int | None, label: str | None, signature: str = "") -> None:
        if version is not None and label:
            raise ValueError("give a version or a label, not both")
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        elif label:
            spec.version_label = label
        if signature:
            spec.signature_name = signature

    # --- API ------------------------------------------------------------------

    def predict(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = "",
        protocol: str | None = None,
        rest_format: str = COLUMNAR,
    ) -> PredictResult:
        """Runs a predict signature.

        Args:
            model: Model name.
            inputs: Input arrays by signature input name (text as str or bytes).
            version: A specific version (default: the latest).
            label: A version label such as 'stable' or 'canary'.
            signature: Signature name (default 'serving_default').
            protocol: 'grpc' or 'rest' for this call.
            rest_format: Over REST, 'columnar' ("inputs") or 'rows' ("instances", one object per row).

        Returns:
            The outputs (and the answering version over gRPC).

        Raises:
            ServingError: with the server's status code and message.
        """
        if (protocol or self.protocol) == REST:
            arrays = {name: np.asarray(a) for name, a in inputs.items()}
            if rest_format == ROWS:
                rows = len(next(iter(arrays.values())))
                body: dict[str, Any] = {
                    "instances": [{name: _to_json(a[index]) for name, a in arrays.items()} for index in range(rows)]
                }
            else:
                body = {"inputs": {name: _to_json(a) for name, a in arrays.items()}}
            if signature:
                body["signature_name"] = signature
            reply = self._with_retries(
                lambda: self._rest("POST", self._rest_path(model, version, label) + ":predict", body)
            )
            if rest_format == ROWS:
                predictions = reply["predictions"]
                if predictions and isinstance(predictions[0], dict):
                    return PredictResult(
                        {name: np.asarray([row[name] for row in predictions]) for name in predictions[0]}
                    )
                outputs = predictions
            else:
                outputs = reply["outputs"]
            if not isinstance(outputs, dict):  # TF Serving leaves out the name of a signature's only output
                outputs = {self._only_output(model, version, label, signature): outputs}
            return PredictResult({name: np.asarray(value) for name, value in outputs.items()})

        from tensorflow_serving.apis import predict_pb2

        from serving import tensors

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, model, version, label, signature)
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(tensors.to_tensor_proto(array))
        prediction, _ = self._stubs()
        response = self._with_retries(lambda: prediction.Predict(request, timeout=self.timeout))
        return PredictResult(
            {name: tensors.to_array(proto) for name, proto in response.outputs.items()},
            response.model_spec.version.value,
        )

    def _only_output(self, model: str, version: int | None, label: str | None, signature: str) -> str:
        """The name of a signature's only output (REST replies leave it out), from the model's metadata."""
        key = (model, version, label, signature)
        if key not in self._output_names:
            signatures = self.metadata(model, version=version, label=label, protocol=REST)["signature_def"]
            outputs = list(signatures.get(signature or "serving_default", {}).get("outputs", {}))
            self._output_names[key] = outputs[0] if len(outputs) == 1 else "output"
        return self._output_names[key]

    def classify(
        self,
        model: str,
        examples: list,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = "",
        protocol: str | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Runs a Classify signature on examples.

        Args:
            model: Model name.
            examples: `tf.train.Example`s, or dicts of feature name -> value (float, int, str or a list of them).
            version: A version number (as `predict`).
            label: A version label (as `predict`).
            signature: The signature name (as `predict`).
            protocol: grpc or rest (as `predict`).

        Returns:
            Per example, its (class label, score) pairs.

        Raises:
            ServingError: with the server's status code and message.
        """
        if (protocol or self.protocol) == REST:
            body = {"examples": [_example_json(e) for e in examples]}
            if signature:
                body["signature_name"] = signature
            reply = self._with_retries(
                lambda: self._rest("POST", self._rest_path(model, version, label) + ":classify", body)
            )
            return [[(str(name), float(score)) for name, score in result] for result in reply["results"]]
        from tensorflow_serving.apis import classification_pb2

        request = classification_pb2.ClassificationRequest()
        self._model_spec(request.model_spec, model, version, label, signature)
        request.input.example_list.examples.extend(_example_proto(e) for e in examples)
        prediction, _ = self._stubs()
        response = self._with_retries(lambda: prediction.Classify(request, timeout=self.timeout))
        return [[(c.label, c.score) for c in result.classes] for result in response.result.classifications]

    def regress(
        self,
        model: str,
        examples: list,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = "",
        protocol: str | None = None,
    ) -> list[float]:
        """Runs a Regress signature on examples (as `classify` takes them); returns one value per example."""
        if (protocol or self.protocol) == REST:
            body = {"examples": [_example_json(e) for e in examples]}
            if signature:
                body["signature_name"] = signature
            reply = self._with_retries(
                lambda: self._rest("POST", self._rest_path(model, version, label) + ":regress", body)
            )
            return [float(value) for value in reply["results"]]
        from tensorflow_serving.apis import regression_pb2

        request = regression_pb2.RegressionRequest()
        self._model_spec(request.model_spec, model, version, label, signature)
        request.input.example_list.examples.extend(_example_proto(e) for e in examples)
        prediction, _ = self._stubs()
        response = self._with_retries(lambda: prediction.Regress(request, timeout=self.timeout))
        return [r.value for r in response.result.regressions]

    def status(
        self, model: str, *, version: int | None = None, label: str | None = None, protocol: str | None = None
    ) -> list[dict[str, Any]]:
        """Returns [{version, state, error_code, error_message}] for the model's versions."""
        if (protocol or self.protocol) == REST:
            reply = self._with_retries(lambda: self._rest("GET", self._rest_path(model, version, label)))
            return [
                {
                    "version": int(entry["version"]),
                    "state": entry["state"],
                    "error_code": entry.get("status", {}).get("error_code", "OK"),
                    "error_message": entry.get("status", {}).get("error_message", ""),
                }
                for entry in reply["model_version_status"]
            ]
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, model, version, label)
        _, model_service = self._stubs()
        response = self._with_retries(lambda: model_service.GetModelStatus(request, timeout=self.timeout))
        states = get_model_status_pb2.ModelVersionStatus.State
        return [
            {
                "version": entry.version,
                "state": states.Name(entry.state),
                "error_code": grpc.StatusCode.OK.name
                if entry.status.error_code == 0
                else code_from_number(entry.status.error_code).name,
                "error_message": entry.status.error_message,
            }
            for entry in response.model_version_status
        ]

    def metadata(
        self, model: str, *, version: int | None = None, label: str | None = None, protocol: str | None = None
    ) -> dict[str, Any]:
        """Returns {'version': N, 'signature_def': {name: SignatureDef as JSON}}."""
        from google.protobuf import json_format

        if (protocol or self.protocol) == REST:
            reply = self._with_retries(lambda: self._rest("GET", self._rest_path(model, version, label) + "/metadata"))
            return {
                "version": int(reply["model_spec"]["version"]),
                "signature_def": reply["metadata"]["signature_def"]["signature_def"],
            }
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec, model, version, label)
        prediction, _ = self._stubs()
        response = self._with_retries(lambda: prediction.GetModelMetadata(request, timeout=self.timeout))
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {
            "version": response.model_spec.version.value,
            "signature_def": json_format.MessageToDict(signature_map, preserving_proto_field_name=True)[
                "signature_def"
            ],
        }

    def metrics_text(self, path: str = "/monitoring/prometheus/metrics") -> str:
        """The server's Prometheus metrics page (REST; needs a monitoring config on the server).

        Raises:
            ServingError: NOT_FOUND when the server exports no metrics there, UNAVAILABLE when down.
        """

        def fetch() -> str:
            try:
                with urllib.request.urlopen(self.rest_url + path, timeout=self.timeout) as response:
                    return response.read().decode()
            except urllib.error.HTTPError as err:
                raise ServingError(code_from_http(err.code), f"{self.rest_url}{path}: {err.reason}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                reason = getattr(err, "reason", err)
                raise ServingError(grpc.StatusCode.UNAVAILABLE, f"{self.rest_url}: {reason}") from None

        return self._with_retries(fetch)

    def reload_config(self, config: Any) -> None:
        """Replaces the server's whole model config (gRPC ModelService only).

        Args:
            config: A `ModelServerConfig` message or its text format.

        Raises:
            ServingError: if the server refuses the config (e.g. a label on an unloaded version).
        """
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2
        from tensorflow_serving.config import model_server_config_pb2

        if isinstance(config, str):
            config = text_format.Parse(config, model_server_config_pb2.ModelServerConfig())
        request = model_management_pb2.ReloadConfigRequest(config=config)
        if self.management_target:
            from tensorflow_serving.apis import model_service_pb2_grpc

            if self._management_channel is None:
                self._management_channel = grpc.insecure_channel(self.management_target)
            model_service = model_service_pb2_grpc.ModelServiceStub(self._management_channel)
        else:
            _, model_service = self._stubs()
        response = self._with_retries(lambda: model_service.HandleReloadConfigRequest(request, timeout=self.timeout))
        if response.status.error_code:
            raise ServingError(code_from_number(response.status.error_code), response.status.error_message)

    def close(self) -> None:
        for channel in (self._channel, self._management_channel):
            if channel is not None:
                channel.close()
        self._channel = self._management_channel = None

    def __enter__(self) -> TFServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _json_value(value: Any) -> Any:
    """One tensor element as TF Serving's JSON takes it: bytes as {"b64": ...}, text as a string, NaN as NaN."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, str):
        return value
    return value.item() if isinstance(value, np.generic) else value


def _to_json(array: np.ndarray) -> Any:
    array = np.asarray(array)
    if array.dtype.kind in ("O", "S", "U"):
        return np.vectorize(_json_value, otypes=[object])(array).tolist() if array.ndim else _json_value(array.item())
    return array.tolist()


def _example_proto(example):
    """A tf.train.Example from a proto or a dict (float -> float_list, int -> int64_list, text -> bytes_list)."""
    from tensorflow.core.example import example_pb2

    if not isinstance(example, dict):
        return example
    proto = example_pb2.Example()
    for name, value in example.items():
        values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        feature = proto.features.feature[name]
        if all(isinstance(v, (bytes, str)) for v in values):
            feature.bytes_list.value.extend(v if isinstance(v, bytes) else v.encode() for v in values)
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            feature.int64_list.value.extend(int(v) for v in values)
        else:
            feature.float_list.value.extend(float(v) for v in values)
    return proto


def _example_json(example) -> dict[str, Any]:
    """An example as TF Serving's REST `examples` entry: floats stay decimals (1.0, not 1), bytes as b64."""
    proto = _example_proto(example)
    entry: dict[str, Any] = {}
    for name, feature in proto.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            values = [float(v) for v in feature.float_list.value]
        elif kind == "int64_list":
            values = [int(v) for v in feature.int64_list.value]
        else:
            values = [_text_or_b64(v) for v in feature.bytes_list.value] if kind else []
        entry[name] = values[0] if len(values) == 1 else values
    return entry


def _text_or_b64(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode()}


# --- CLI ------------------------------------------------------------------------

# The serving input name of a source column, as the pipeline's problem spec derives it
# (documented there): characters outside [A-Za-z0-9_] become '_'.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_MISSING_TEXT = {"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "?"}
ROWS_PER_REQUEST = 256


DEMO_IMAGE_SHAPE = (28, 28, 1)  # Fashion-MNIST's, the default model's
_IMAGE_MODES = {1: "L", 3: "RGB"}
# The message of the pipeline's image check inside the signature (the same on TF Serving).
_EXPECTED_IMAGE = re.compile(r"must be uint8 \[N,(\d+),(\d+)(?:,(\d+))?\]")


def load_image(path: str, shape: tuple[int, int, int] = DEMO_IMAGE_SHAPE, invert: bool = False) -> np.ndarray:
    """Reads an image file as uint8 [H, W, C], converted to the shape's colour mode and resized to it.

    Args:
        path: A PNG, JPEG or any file Pillow reads.
        shape: (height, width, channels); 1 channel is grayscale, 3 RGB.
        invert: Invert the pixels (a dark item on a light background).

    Raises:
        ValueError: for channels other than 1 or 3.
        OSError: if the file cannot be read as an image.
    """
    from PIL import Image, ImageOps

    height, width, channels = shape
    if channels not in _IMAGE_MODES:
        raise ValueError(f"images of {channels} channels cannot be sent: 1 (grayscale) or 3 (RGB)")
    with Image.open(path) as image:
        converted = image.convert(_IMAGE_MODES[channels])
        if converted.size != (width, height):
            converted = converted.resize((width, height), Image.Resampling.BILINEAR)
        if invert:
            converted = ImageOps.invert(converted)
        return np.asarray(converted, dtype=np.uint8).reshape(height, width, channels)


def image_shape(text: str) -> tuple[int, int, int]:
    """Parses --image-shape: 'HEIGHT,WIDTH,CHANNELS' (or 'HEIGHT,WIDTH' for grayscale)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 2:
        values = (*values, 1)
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH,CHANNELS (e.g. 224,224,3), got {text!r}")
    return values


def _image_input(client: TFServingClient, args) -> str:
    """The name of the signature's one input, which must be an image (uint8)."""
    inputs = _signature_inputs(client, args)
    images = [name for name, dtype in inputs.items() if dtype == "DT_UINT8"]
    if len(inputs) != 1 or not images:
        listed = ", ".join(f"{name} ({dtype})" for name, dtype in sorted(inputs.items()))
        raise ValueError(f"--image needs a model whose one input is an image; {args.model} takes {listed}: use --rows")
    return images[0]


def predict_image(client: TFServingClient, args) -> int:
    """Sends `args.image` and prints the answer: the class, its probability and the version, or the prediction."""
    name = _image_input(client, args)
    image = load_image(args.image, args.image_shape, invert=args.invert)
    try:
        result = client.predict(
            args.model, {name: image[np.newaxis]}, version=args.version, label=args.label, signature=args.signature
        )
    except ServingError as err:
        expected = _EXPECTED_IMAGE.search(err.message)
        if err.code == grpc.StatusCode.INVALID_ARGUMENT and expected:
            height, width, channels = expected.group(1), expected.group(2), expected.group(3) or "1"
            raise ServingError(
                err.code,
                f"{err.message} (this model takes {height}x{width} images of {channels} channel(s): "
                f"pass --image-shape {height},{width},{channels})",
            ) from None
        raise
    version = f"{args.model} version {result.version}" if result.version else args.model
    if "probabilities" not in result.outputs:
        outputs = {name: np.asarray(values) for name, values in result.outputs.items()}
        print(f"{json.dumps(_row_answers(outputs, 0))}\t({version} via {args.protocol})")
        return 0
    probabilities = np.asarray(result["probabilities"], dtype=np.float32)[0]
    class_id = int(np.argmax(probabilities))
    class_name = result.outputs.get("class_names", np.asarray([str(class_id)]))[0]
    class_name = class_name.decode() if isinstance(class_name, bytes) else str(class_name)
    print(f"{class_name}\t{probabilities[class_id]:.4f}\t(class {class_id}, {version} via {args.protocol})")
    return 0


def read_rows(path: str) -> list[dict[str, Any]]:
    """Reads a CSV file (header row) or a JSON-lines file (one object per line) of feature rows.

    Raises:
        ValueError: naming the file and line of a malformed row.
    """
    with open(path, newline="") as handle:
        if path.endswith((".jsonl", ".ndjson", ".json")):
            rows = []
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {number}: not JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path} line {number}: expected a JSON object of features")
                rows.append(row)
            return rows
        return list(csv.DictReader(handle))


def _typed(value: Any, dtype: str, where: str) -> Any:
    """A row's value as the signature's dtype takes it; missing text and None are NaN / ''."""
    missing = value is None or (isinstance(value, str) and value.strip() in _MISSING_TEXT)
    if dtype == "DT_STRING":
        return "" if missing else str(value)
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        if missing:
            return float("nan")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {value!r} is not a number") from None
    if dtype in ("DT_INT64", "DT_INT32"):
        try:
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {value!r} is not a whole number") from None
    raise ValueError(f"{where}: inputs of type {dtype} cannot come from a rows file")


def rows_to_inputs(rows: list[dict[str, Any]], inputs: dict[str, str], path: str) -> dict[str, np.ndarray]:
    """Converts rows to one array per signature input.

    Args:
        rows: Rows from `read_rows`; columns are matched to inputs by name or by the input-name rule.
        inputs: {input name: dtype name} of the signature (from its metadata).
        path: The file, for messages.

    Raises:
        ValueError: naming the row and feature, for a missing feature or a value of the wrong type.
    """
    numpy_types = {"DT_STRING": object, "DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_INT64": np.int64}
    columns: dict[str, list] = {name: [] for name in inputs}
    for number, row in enumerate(rows, 1):
        named = {_NAME_UNSAFE.sub("_", str(key)): value for key, value in row.items()}
        named.update(row)
        for name, dtype in inputs.items():
            if name not in named:
                raise ValueError(f"{path} row {number} has no value for feature {name!r}")
            columns[name].append(_typed(named[name], dtype, f"{path} row {number}, feature {name!r}"))
    arrays = {}
    for name, values in columns.items():
        dtype = numpy_types.get(inputs[name], np.int32)
        array = np.empty(len(values), dtype=object) if dtype is object else np.asarray(values, dtype)
        if dtype is object:
            array[:] = values
        arrays[name] = array
    return arrays


def _signature_inputs(client: TFServingClient, args) -> dict[str, str]:
    metadata = client.metadata(args.model, version=args.version, label=args.label)
    signature = metadata["signature_def"].get(args.signature or "serving_default")
    if signature is None:
        raise ValueError(f"model {args.model} has no signature {args.signature or 'serving_default'!r}")
    return {name: spec["dtype"] for name, spec in signature["inputs"].items()}


def predict_rows(client: TFServingClient, args) -> int:
    """Predicts every row of `args.rows`, printing one JSON line per row (its answers)."""
    inputs = _signature_inputs(client, args)
    rows = read_rows(args.rows)
    if not rows:
        raise ValueError(f"{args.rows} holds no rows")
    arrays = rows_to_inputs(rows, inputs, args.rows)
    for start in range(0, len(rows), ROWS_PER_REQUEST):
        batch = {name: values[start : start + ROWS_PER_REQUEST] for name, values in arrays.items()}
        result = client.predict(
            args.model, batch, version=args.version, label=args.label, signature=args.signature or ""
        )
        outputs = {name: np.asarray(values) for name, values in result.outputs.items()}
        for offset in range(len(next(iter(batch.values())))):
            print(json.dumps({"row": start + offset + 1, **_row_answers(outputs, offset)}))
    return 0


def _row_answers(outputs: dict[str, np.ndarray], offset: int) -> dict[str, Any]:
    """One row's answers from a Predict reply's outputs, as JSON values (text decoded), by output name."""
    answers = {}
    for name, values in sorted(outputs.items()):
        value = values[offset]
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        answers[name] = value.tolist() if isinstance(value, np.ndarray | np.generic) else value
    return answers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.client", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--grpc-target", default="localhost:8500")
    parser.add_argument("--rest-url", default="http://localhost:8501")
    parser.add_argument("--model", default="fashion_mnist", help="Model name (default fashion_mnist).")
    parser.add_argument("--timeout", type=float, default=10.0)
    protocol = parser.add_mutually_exclusive_group()
    protocol.add_argument("--grpc", dest="protocol", action="store_const", const=GRPC, help="Use gRPC (default).")
    protocol.add_argument("--rest", dest="protocol", action="store_const", const=REST, help="Use REST.")
    parser.set_defaults(protocol=GRPC)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("predict", "Classify an image, or predict every row of a CSV or JSON-lines file."),
        ("status", "Model version states."),
        ("metadata", "Signature definitions."),
    ):
        sub = commands.add_parser(name, help=text, allow_abbrev=False)
        choice = sub.add_mutually_exclusive_group()
        choice.add_argument("--version", type=int)
        choice.add_argument("--label")
        if name == "predict":
            what = sub.add_mutually_exclusive_group(required=True)
            what.add_argument(
                "--image",
                help="An image file (PNG, JPEG...), converted and resized to --image-shape; the model's one input.",
            )
            what.add_argument(
                "--rows",
                help="A CSV file (header row) or JSON-lines file (.jsonl) of feature rows; missing values: empty, "
                "NA or null. Prints one JSON line of answers per row.",
            )
            sub.add_argument(
                "--image-shape",
                type=image_shape,
                default=DEMO_IMAGE_SHAPE,
                help="HEIGHT,WIDTH,CHANNELS the model takes (1 channel: grayscale, 3: RGB); default 28,28,1 "
                "(Fashion-MNIST). A wrong shape is answered with the right one.",
            )
            sub.add_argument("--invert", action="store_true", help="Invert (dark item on light background).")
            sub.add_argument("--signature", default="", help="Signature name (default serving_default).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = TFServingClient(args.grpc_target, args.rest_url, args.protocol, timeout=args.timeout)
    try:
        if args.command == "predict" and args.rows:
            return predict_rows(client, args)
        if args.command == "predict":
            return predict_image(client, args)
        if args.command == "status":
            print(json.dumps(client.status(args.model, version=args.version, label=args.label), indent=2))
        else:
            print(json.dumps(client.metadata(args.model, version=args.version, label=args.label), indent=2))
    except ServingError as err:
        print(f"error: {err.code.name}: {err.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
