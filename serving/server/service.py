"""The operations both front ends (REST and gRPC) offer, with metrics around each."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import any_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    regression_pb2,
)

from serving.protocol import SHADOW_LABEL, ServingError, invalid
from serving.server import metrics
from serving.server.manager import ModelManager, VersionState
from serving.server.memory import HeapTrimmer
from serving.server.request_log import RequestLogger
from serving.server.servable import Servable

_STATE_ENUM = get_model_status_pb2.ModelVersionStatus.State


# The API label TF Serving puts on request_latency, by the service call that observes it.
_TIMED_APIS = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}


class ServingService:
    """Predict, classify, regress, status, metadata and reload over a ModelManager.

    Args:
        manager: The model manager.
        registry: Metrics registry.
        request_timeout_s: Longest a request may wait in a batching queue.
        base_path_roots: Folders a reloaded config's base paths must lie under (empty: any).
        request_logger: Writes sampled Predict calls of models with a `logging_config` (None: off).
        request_log_roots: Folders a reloaded config's request-log prefixes must lie under
            (empty: a reloaded config may not turn request logging on).
        shadow_queue_size: Shadow requests waiting or running at most; more are dropped and counted.
        heap_trimmer: Gives memory back after large Predict calls (None: never).
    """

    def __init__(
        self,
        manager: ModelManager,
        registry: metrics.Registry,
        request_timeout_s: float | None,
        base_path_roots: tuple[Path, ...] = (),
        request_logger: RequestLogger | None = None,
        request_log_roots: tuple[Path, ...] = (),
        shadow_queue_size: int = 100,
        heap_trimmer: HeapTrimmer | None = None,
    ):
        self.manager = manager
        self.registry = registry
        self.request_timeout_s = request_timeout_s
        self.base_path_roots = base_path_roots
        self.request_logger = request_logger
        self.request_log_roots = request_log_roots
        # One thread: a shadow answer must never take CPU from live requests beyond one core's worth.
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self._shadow_slots = threading.BoundedSemaphore(shadow_queue_size)
        self.heap_trimmer = heap_trimmer

    def reload_config(self, config) -> None:
        """HandleReloadConfigRequest: the whole config, its base paths inside the allowed roots.

        Raises:
            ServingError: PERMISSION_DENIED for a base path outside `base_path_roots` (when any
                are set), and whatever the manager refuses.
        """
        if self.base_path_roots:
            for model in config.model_config_list.config:
                if not _inside(model.base_path, self.base_path_roots):
                    raise ServingError(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"base_path {model.base_path} of model {model.name} is outside the allowed model roots "
                        f"{[str(root) for root in self.base_path_roots]} (--model_base_path_roots)",
                    )
        for model in config.model_config_list.config:
            if model.HasField("logging_config"):
                # A reload must not make the server write files anywhere it names.
                prefix = Path(model.logging_config.log_collector_config.filename_prefix).resolve()
                if not _inside(prefix, self.request_log_roots):
                    raise ServingError(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"request log filename_prefix {prefix} of model {model.name} is outside the allowed request "
                        f"log roots {[str(root) for root in self.request_log_roots]} (--request_log_roots)",
                    )
        self.manager.reload_config(config)

    @contextlib.contextmanager
    def observe(self, api: str, entrypoint: str, model_name: str):
        """Counts the request and times it, with the names and labels of TF Serving's exporter.

        `:tensorflow:serving:request_count` {model_name, status} for every request;
        `:tensorflow:serving:request_latency` {model_name, API, entrypoint} for successful
        Predict, Classify and Regress calls only (prometheus_exporter.cc), so dashboards
        built for TF Serving work unchanged.
        """
        started = time.monotonic()
        status = _CallStatus()
        try:
            with status:
                yield
        finally:
            # Only configured models get their own series: a request naming a model that does not
            # exist would otherwise add one that lives forever (1,000 made-up names: +1 GB).
            if not self.manager.is_configured(model_name):
                model_name = metrics.UNKNOWN_MODEL
            self.registry.inc(metrics.REQUEST_COUNT, model_name=model_name, status=status.name)
            if status.name == "OK" and api in _TIMED_APIS:
                self.registry.observe(
                    metrics.REQUEST_LATENCY,
                    metrics.LATENCY_BUCKETS_US,
                    (time.monotonic() - started) * 1e6,
                    model_name=model_name,
                    API=_TIMED_APIS[api],
                    entrypoint=entrypoint,
                )

    def resolve(self, name: str, version: int | None, label: str | None) -> Servable:
        return self.manager.resolve(name, version, label)

    def predict(
        self,
        servable: Servable,
        signature: str,
        inputs: dict[str, np.ndarray],
        output_filter=(),
        requested: tuple[int | None, str | None] = (None, None),
    ) -> tuple[str, dict[str, np.ndarray]]:
        """Runs a predict signature (through the batcher when batching is on) and samples it for the request log.

        Args:
            requested: The (version, label) the request asked for, as the request log keeps them.
        """
        name, outputs = self._timed_predict(servable, signature, inputs, output_filter)
        if self.heap_trimmer is not None:
            self.heap_trimmer.note(sum(a.nbytes for a in (*inputs.values(), *outputs.values())))
        if self.request_logger is not None:
            sampled = self.request_logger.log_predict(servable, name, requested, inputs, outputs)
            if sampled and requested == (None, None):
                self._mirror_to_shadow(servable.name, signature, inputs)
        return name, outputs

    def _timed_predict(self, servable: Servable, signature: str, inputs, output_filter=()):
        """servable.predict, counted and timed per answering version (what a canary watch compares)."""
        started = time.monotonic()
        status = _CallStatus()
        try:
            with status:
                return servable.predict(signature, inputs, output_filter, self.request_timeout_s)
        finally:
            labels = {"model_name": servable.name, "version": servable.version}
            self.registry.inc(metrics.VERSION_REQUEST_COUNT, status=status.name, **labels)
            if status.name == "OK":
                micros = (time.monotonic() - started) * 1e6
                self.registry.observe(metrics.VERSION_REQUEST_LATENCY, metrics.LATENCY_BUCKETS_US, micros, **labels)

    def _mirror_to_shadow(self, model_name: str, signature: str, inputs: dict[str, np.ndarray]) -> None:
        """Runs a sampled request on the model's `shadow` version off the request path and logs the answer."""
        shadow = self.manager.shadow_servable(model_name, SHADOW_LABEL)
        if shadow is None:
            return
        if not self._shadow_slots.acquire(blocking=False):
            self.registry.inc(metrics.SHADOW_DROPPED, model_name=model_name)
            return

        def run() -> None:
            try:
                name, outputs = self._timed_predict(shadow, signature, inputs)
                self.request_logger.log_predict(shadow, name, (None, SHADOW_LABEL), inputs, outputs, sampled=True)
            except Exception:  # noqa: BLE001  (counted per version as an error; never reaches a client)
                pass
            finally:
                self._shadow_slots.release()

        self._shadow_pool.submit(run)

    def close(self) -> None:
        """Finishes the shadow requests under way (server shutdown)."""
        self._shadow_pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def classify(servable: Servable, signature: str, model_input) -> classification_pb2.ClassificationResponse:
        name, result = servable.classify(signature, model_input)
        response = classification_pb2.ClassificationResponse(result=result)
        _fill_spec(response.model_spec, servable, name)
        return response

    @staticmethod
    def regress(servable: Servable, signature: str, model_input) -> regression_pb2.RegressionResponse:
        name, result = servable.regress(signature, model_input)
        response = regression_pb2.RegressionResponse(result=result)
        _fill_spec(response.model_spec, servable, name)
        return response

    def status(self, name: str, version: int | None) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus: every known version of `name` (or one), labels play no part (as in TF Serving)."""
        response = get_model_status_pb2.GetModelStatusResponse()
        for state in self.manager.status(name, version):
            _fill_version_status(response.model_version_status.add(), state)
        return response

    def metadata(
        self, servable: Servable, fields: list[str] | None = None
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """Returns the servable's SignatureDefMap, as GetModelMetadata does."""
        fields = ["signature_def"] if fields is None else fields
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise invalid(f"Metadata field {field} is not supported")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        packed = any_pb2.Any()
        packed.Pack(signature_map)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, servable, "")
        response.metadata["signature_def"].CopyFrom(packed)
        return response


def _inside(path: str | Path, roots: tuple[Path, ...]) -> bool:
    """True if `path`, with symlinks and '..' resolved, lies in one of `roots` (a root itself included)."""
    resolved = Path(path).resolve()
    return any(resolved.is_relative_to(root) for root in roots)


class _CallStatus:
    """A call's status as the metrics name it: OK, a ServingError's code, or INTERNAL (set when it raises)."""

    def __init__(self):
        self.name = "OK"

    def __enter__(self) -> _CallStatus:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is not None:
            self.name = error.code.name if isinstance(error, ServingError) else "INTERNAL"
        return False  # the error goes on to the caller


def _fill_spec(spec, servable: Servable, signature_name: str) -> None:
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name


def _fill_version_status(message, state: VersionState) -> None:
    message.version = state.version
    message.state = _STATE_ENUM.Value(state.state)
    if state.error is not None:
        message.status.error_code = state.error.code.value[0]
        message.status.error_message = state.error.message
    else:
        message.status.error_code = grpc.StatusCode.OK.value[0]
