"""A TensorFlow Serving client with the same methods over gRPC and REST.

Works against the official `tensorflow/serving` image and the local server alike:

    client = TFServingClient(grpc_target="localhost:8500", rest_url="http://localhost:8501")
    result = client.predict("fashion_mnist", {"images": images}, label="stable")
    result["class_names"], result.version

CLI: `python -m serving.client predict --image shoe.png [--grpc|--rest] [--label stable]`,
`python -m serving.client status`, `python -m serving.client metadata`.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
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
    ) -> PredictResult:
        """Runs a predict signature.

        Args:
            model: Model name.
            inputs: Input arrays by signature input name.
            version: A specific version (default: the latest).
            label: A version label such as 'stable' or 'canary'.
            signature: Signature name (default 'serving_default').
            protocol: 'grpc' or 'rest' for this call.

        Returns:
            The outputs (and the answering version over gRPC).

        Raises:
            ServingError: with the server's status code and message.
        """
        if (protocol or self.protocol) == REST:
            body: dict[str, Any] = {"inputs": {name: _to_json(np.asarray(a)) for name, a in inputs.items()}}
            if signature:
                body["signature_name"] = signature
            reply = self._with_retries(
                lambda: self._rest("POST", self._rest_path(model, version, label) + ":predict", body)
            )
            outputs = reply["outputs"]
            if not isinstance(outputs, dict):
                outputs = {"output": outputs}
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

    def reload_config(self, config) -> None:
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


def _to_json(array: np.ndarray) -> Any:
    if array.dtype.kind in ("O", "S"):
        return np.vectorize(
            lambda v: {"b64": base64.b64encode(v if isinstance(v, bytes) else str(v).encode()).decode()},
            otypes=[object],
        )(array).tolist()
    return array.tolist()


# --- CLI ------------------------------------------------------------------------


def load_image(path: str, size: tuple[int, int] = (28, 28), invert: bool = False) -> np.ndarray:
    """Reads an image file as grayscale uint8 [H, W], resized to `size`."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        gray = image.convert("L")
        if gray.size != size:
            gray = gray.resize(size, Image.Resampling.BILINEAR)
        if invert:
            gray = ImageOps.invert(gray)
        return np.asarray(gray, dtype=np.uint8)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__.splitlines()[0])
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
        ("predict", "Classify an image."),
        ("status", "Model version states."),
        ("metadata", "Signature definitions."),
    ):
        sub = commands.add_parser(name, help=text)
        choice = sub.add_mutually_exclusive_group()
        choice.add_argument("--version", type=int)
        choice.add_argument("--label")
        if name == "predict":
            sub.add_argument("--image", required=True, help="An image file (PNG, JPEG...), resized to 28x28.")
            sub.add_argument("--invert", action="store_true", help="Invert (dark item on light background).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = TFServingClient(args.grpc_target, args.rest_url, args.protocol, timeout=args.timeout)
    try:
        if args.command == "predict":
            image = load_image(args.image, invert=args.invert)
            result = client.predict(args.model, {"images": image[np.newaxis]}, version=args.version, label=args.label)
            probabilities = np.asarray(result["probabilities"], dtype=np.float32)[0]
            class_id = int(np.argmax(probabilities))
            name = result.outputs.get("class_names", np.asarray([str(class_id)]))[0]
            name = name.decode() if isinstance(name, bytes) else str(name)
            version = f" version {result.version}" if result.version else ""
            print(
                f"{name}\t{probabilities[class_id]:.4f}\t(class {class_id}, {args.model}{version} via {args.protocol})"
            )
        elif args.command == "status":
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
