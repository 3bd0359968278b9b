"""TF Serving's gRPC services (PredictionService, ModelService) with the package's protos."""

from __future__ import annotations

import functools
import logging

import grpc
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import tensors
from serving.protocol import ServingError, cap_message, invalid
from serving.server.service import ServingService
from serving.tensors import TensorContentError

log = logging.getLogger("serving.server")

MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def _spec(model_spec) -> tuple[str, int | None, str | None]:
    choice = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if choice == "version" else None
    label = model_spec.version_label if choice == "version_label" else None
    return model_spec.name, version, label


def _abort(context, err: ServingError):
    context.abort(err.code, err.message)


def parse_tensor(name: str, proto):
    """Converts a request TensorProto to an array; INVALID_ARGUMENT if its shape and content disagree."""
    try:
        return tensors.to_array(proto)
    except TensorContentError as err:
        raise invalid(f"tensor parsing error: {name} ({err})") from None
    except (ValueError, TypeError, KeyError, OverflowError, MemoryError) as err:
        # TensorFlow's converter: unknown or non-data dtypes (DT_RESOURCE, DT_VARIANT, the _REF
        # types), values out of the dtype's range (int_val -270 for uint8), allocation failures.
        declared = [d.size for d in proto.tensor_shape.dim]
        raise invalid(
            f"tensor parsing error: {name} (declared shape {declared}: {type(err).__name__}: {err})"
        ) from None


def _guard_methods(cls):
    """Wraps every RPC method so an unexpected exception answers INTERNAL with a capped message.

    Without it gRPC answers UNKNOWN with the exception's whole text, which can be too large
    for gRPC's metadata and then reaches the client as a transport error instead.
    """

    def guard(method):
        @functools.wraps(method)
        def guarded(self, request, context):
            try:
                return method(self, request, context)
            except Exception as err:
                if context.code() is not None:  # context.abort() raises to end the call: already answered
                    raise
                log.exception("unhandled error in %s", method.__name__, extra={"event": "internal_error"})
                context.abort(grpc.StatusCode.INTERNAL, cap_message(f"{type(err).__name__}: {err}"))

        return guarded

    for name, member in list(vars(cls).items()):
        if name[:1].isupper() and callable(member):
            setattr(cls, name, guard(member))
    return cls


@_guard_methods
class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: ServingService, response_encoding: str = tensors.FIELD):
        self.service = service
        self.response_encoding = response_encoding

    def Predict(self, request, context):  # noqa: N802  (gRPC method names)
        name, version, label = _spec(request.model_spec)
        try:
            with self.service.observe("predict", "GRPC", name):
                servable = self.service.resolve(name, version, label)
                inputs = {key: parse_tensor(key, proto) for key, proto in request.inputs.items()}
                signature, outputs = self.service.predict(
                    servable,
                    request.model_spec.signature_name,
                    inputs,
                    list(request.output_filter),
                    requested=(version, label),
                )
        except ServingError as err:
            return _abort(context, err)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature
        for key, array in outputs.items():
            response.outputs[key].CopyFrom(tensors.to_tensor_proto(array, self.response_encoding))
        return response

    def _examples(self, api: str, model_spec, context, run):
        name, version, label = _spec(model_spec)
        try:
            with self.service.observe(api, "GRPC", name):
                servable = self.service.resolve(name, version, label)
                return run(servable)
        except ServingError as err:
            return _abort(context, err)

    def Classify(self, request, context):  # noqa: N802
        return self._examples(
            "classify",
            request.model_spec,
            context,
            lambda s: self.service.classify(s, request.model_spec.signature_name, request.input),
        )

    def Regress(self, request, context):  # noqa: N802
        return self._examples(
            "regress",
            request.model_spec,
            context,
            lambda s: self.service.regress(s, request.model_spec.signature_name, request.input),
        )

    def MultiInference(self, request, context):  # noqa: N802
        if not request.tasks:
            return _abort(context, invalid("Expects at least one task in MultiInferenceRequest."))
        return self._examples(
            "multi_inference", request.tasks[0].model_spec, context, lambda s: s.multi_inference(request)
        )

    def GetModelMetadata(self, request, context):  # noqa: N802
        name, version, label = _spec(request.model_spec)
        try:
            with self.service.observe("get_model_metadata", "GRPC", name):
                servable = self.service.resolve(name, version, label)
                return self.service.metadata(servable, list(request.metadata_field))
        except ServingError as err:
            return _abort(context, err)


@_guard_methods
class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest.

    Args:
        service: The serving logic.
        serve_reload: False on the main port when `--model_management_address` serves reloads apart.
    """

    def __init__(self, service: ServingService, serve_reload: bool = True):
        self.service = service
        self.serve_reload = serve_reload

    def GetModelStatus(self, request, context):  # noqa: N802
        if not request.HasField("model_spec"):
            return _abort(context, invalid("Missing ModelSpec"))
        name, version, _ = _spec(request.model_spec)  # get_model_status_impl.cc ignores a version label
        try:
            with self.service.observe("get_model_status", "GRPC", name):
                return self.service.status(name, version)
        except ServingError as err:
            return _abort(context, err)

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if not self.serve_reload:
                raise ServingError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "HandleReloadConfigRequest is served on the model-management address only "
                    "(--model_management_address)",
                )
            with self.service.observe("reload_config", "GRPC", ""):
                self.service.reload_config(request.config)
        except ServingError as err:
            response.status.error_code = err.code.value[0]
            response.status.error_message = err.message
            log.warning("config reload refused: %s", err.message, extra={"event": "reload_failed"})
            context.set_code(err.code)
            context.set_details(err.message)
            return response
        log.info("config reloaded over gRPC", extra={"event": "reload"})
        return response


def make_grpc_server(
    service: ServingService,
    host: str,
    port: int,
    max_workers: int = 32,
    *,
    socket_path: str = "",
    channel_arguments: list[tuple[str, int | str]] = (),
    health_check: bool = False,
    serve_reload: bool = True,
    tensor_content: bool = False,
) -> tuple[grpc.Server, int]:
    """Builds and binds (does not start) the gRPC server; returns it and the bound TCP port.

    Args:
        service: The serving logic.
        host: Address to bind; `port` 0 picks a free port.
        max_workers: Requests handled at once.
        socket_path: Also serve on this Unix domain socket (`--grpc_socket_path`).
        channel_arguments: gRPC server options (`--grpc_channel_arguments`), after the defaults.
        health_check: Add the standard grpc.health.v1.Health service, reporting SERVING.
        serve_reload: Answer HandleReloadConfigRequest here (False: PERMISSION_DENIED, served apart).
        tensor_content: Answer Predict with numeric outputs as `tensor_content`
            (`--enable_serialization_as_tensor_content`); by default each output fills its
            typed `*_val` field, as TF Serving answers.
    """
    from concurrent import futures

    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
        *channel_arguments,
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"), options=options
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(service, tensors.CONTENT if tensor_content else tensors.FIELD), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(service, serve_reload), server)
    if health_check:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    if socket_path and server.add_insecure_port(f"unix:{socket_path}") == 0:
        raise OSError(f"cannot bind gRPC socket {socket_path}")
    return server, bound


def make_management_server(service: ServingService, address: str) -> grpc.Server:
    """Builds and binds (does not start) a gRPC server with ModelService alone, on `address`.

    Raises:
        OSError: if the address cannot be bound.
    """
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="management"))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(service), server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind the model-management address {address}")
    return server
