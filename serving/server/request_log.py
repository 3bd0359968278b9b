"""Request logging as TF Serving defines it: a model's `logging_config` in the model config.

    config {
      name: "fashion_mnist" ...
      logging_config {
        log_collector_config { filename_prefix: "/var/log/serving/fashion_mnist" }
        sampling_config { sampling_rate: 0.1 }
      }
    }

A sampled Predict call (gRPC or REST) is written as one `PredictionLog` record (TF Serving's
prediction_log.proto): `log_metadata` carries the model name, the version that answered, the
signature, the sampling config, the saved-model tags and the time (`timestamp_secs`);
`predict_log.request` keeps the request's model spec (so a call by label, e.g. `canary`,
says so) and its inputs; `predict_log.response` the outputs. Records go to TFRecord files
`<filename_prefix>.<UTC start>-<pid>-<n>.tfrecord`, written as `.tmp` and renamed when
rotated (by size or age) or on shutdown, so a reader only ever sees complete files.

The request path only samples and puts the arrays in a bounded queue; building the protos
and writing happen on one background thread. When the queue is full the record is dropped
and counted (`:mlops:serving:request_log_dropped`), never slowing or failing a request.
Written records are counted like TF Serving's `request_log_count` {model_name, status_code}.

The open-source TF Serving binary has no log collector and refuses any `logging_config`
("No request-logger-creator provided", tensorflow/serving#408); this server writes the
format its request logger defines. A `log_collector_config.type` other than "" is refused
as TF Serving refuses an unregistered type.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import queue
import random
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from serving.protocol import ServingError, invalid
from serving.server import metrics

log = logging.getLogger(__name__)

REQUEST_LOG_COUNT = ":tensorflow:serving:request_log_count"
# Not in TF Serving (its logger never drops): this project's own, under its own prefix.
REQUEST_LOG_DROPPED = ":mlops:serving:request_log_dropped"
SAVED_MODEL_TAGS = ("serve",)
_STOP = object()  # queued by close(): write what came before, publish the files, end the thread


def check_logging_config(model_name: str, logging_config) -> None:
    """Refuses a `logging_config` this server cannot honour (INVALID_ARGUMENT / NOT_FOUND as TF Serving)."""
    collector = logging_config.log_collector_config
    if collector.type:
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Cannot find LogCollector::Factory for type: {collector.type}")
    if not collector.filename_prefix:
        raise invalid(f"Model {model_name}: logging_config needs log_collector_config.filename_prefix")
    rate = logging_config.sampling_config.sampling_rate
    if not 0.0 <= rate <= 1.0:
        raise invalid(f"Model {model_name}: sampling_rate must be in [0, 1], got {rate}")


@dataclasses.dataclass(frozen=True)
class _Record:
    prefix: str
    sampling_config: object
    model_name: str
    version: int
    signature: str
    requested_version: int | None
    requested_label: str | None
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    timestamp: float


class _RotatingFile:
    """One filename prefix's current TFRecord file; rotated by size or age, published by rename."""

    def __init__(self, prefix: str, max_bytes: int, max_seconds: float):
        self.prefix, self.max_bytes, self.max_seconds = prefix, max_bytes, max_seconds
        self._writer = None
        self._path: Path | None = None
        self._opened = 0.0
        self._bytes = 0
        self._count = 0

    def write(self, data: bytes) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._count += 1
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            self._path = Path(f"{self.prefix}.{stamp}-{os.getpid()}-{self._count}.tfrecord")
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = tf.io.TFRecordWriter(str(self._path) + ".tmp")
            self._opened, self._bytes = time.monotonic(), 0
        self._writer.write(data)
        self._bytes += len(data) + 16  # TFRecord framing: length, its CRC, the data's CRC
        if self._bytes >= self.max_bytes:
            self.close()

    def due(self) -> bool:
        return self._writer is not None and time.monotonic() - self._opened >= self.max_seconds

    def close(self) -> Path | None:
        """Closes and publishes the current file (if any); returns its path."""
        if self._writer is None:
            return None
        self._writer.close()
        os.replace(str(self._path) + ".tmp", self._path)
        self._writer = None
        return self._path


class RequestLogger:
    """Samples Predict calls of models with a `logging_config` and writes them off the request path.

    Args:
        registry: Where the written and dropped counts go.
        logging_config_of: model name -> its LoggingConfig, or None when it has none.
        queue_size: Records waiting to be written at most; more are dropped and counted.
        max_file_bytes: A file is rotated when it reaches this size.
        max_file_seconds: ... or this age.
    """

    def __init__(
        self,
        registry: metrics.Registry,
        logging_config_of,
        queue_size: int = 1000,
        max_file_bytes: int = 64 << 20,
        max_file_seconds: float = 300.0,
    ):
        self.registry = registry
        self.logging_config_of = logging_config_of
        self.max_file_bytes, self.max_file_seconds = max_file_bytes, max_file_seconds
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._files: dict[str, _RotatingFile] = {}
        self._random = random.Random()
        self._thread = threading.Thread(target=self._run, name="request-logger", daemon=True)
        self._thread.start()

    def log_predict(
        self,
        servable,
        signature: str,
        requested: tuple[int | None, str | None],
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        *,
        sampled: bool = False,
    ) -> bool:
        """Samples one answered Predict call; never blocks and never raises into the request.

        Args:
            sampled: Log it without drawing (a shadow answer to a request already sampled).

        Returns:
            True when the call was sampled (whether or not the full queue then dropped it).
        """
        config = self.logging_config_of(servable.name)
        if config is None:
            return False
        rate = config.sampling_config.sampling_rate
        if not sampled and (rate <= 0.0 or (rate < 1.0 and self._random.random() >= rate)):
            return False
        record = _Record(
            config.log_collector_config.filename_prefix,
            config.sampling_config,
            servable.name,
            servable.version,
            signature,
            requested[0],
            requested[1],
            inputs,
            outputs,
            time.time(),
        )
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.registry.inc(REQUEST_LOG_DROPPED, model_name=servable.name)
        return True

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if isinstance(item, _Record):
                self._write(item)
            for file in self._files.values():
                if isinstance(item, threading.Event) or file.due():
                    self._publish(file)
            if isinstance(item, threading.Event):
                item.set()
        for file in self._files.values():
            self._publish(file)

    @staticmethod
    def _publish(file: _RotatingFile) -> None:
        try:
            path = file.close()
        except Exception as err:  # noqa: BLE001  (as for writes: log it, keep serving)
            log.error("request log rotation failed: %s", err, extra={"event": "request_log_failed"})
            return
        if path is not None:
            log.info("request log %s", path, extra={"event": "request_log_published", "path": str(path)})

    def _write(self, record: _Record) -> None:
        try:
            data = prediction_log(record).SerializeToString()
            file = self._files.get(record.prefix)
            if file is None:
                file = self._files[record.prefix] = _RotatingFile(
                    record.prefix, self.max_file_bytes, self.max_file_seconds
                )
            file.write(data)
            status = "OK"
        except Exception as err:  # noqa: BLE001  (a full disk must not stop the logger or serving)
            log.error("request log write failed: %s", err, extra={"event": "request_log_failed", "error": str(err)})
            status = "INTERNAL"
        self.registry.inc(REQUEST_LOG_COUNT, model_name=record.model_name, status_code=status)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Writes every record queued so far and publishes the open files; True when done in time."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def close(self) -> None:
        """Writes what is queued and publishes every file (server shutdown)."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)


def prediction_log(record: _Record):
    """The `PredictionLog` of one answered Predict call."""
    from tensorflow_serving.apis import prediction_log_pb2

    from serving import tensors

    entry = prediction_log_pb2.PredictionLog()
    metadata = entry.log_metadata
    metadata.model_spec.name = record.model_name
    metadata.model_spec.version.value = record.version
    metadata.model_spec.signature_name = record.signature
    metadata.sampling_config.CopyFrom(record.sampling_config)
    metadata.saved_model_tags.extend(SAVED_MODEL_TAGS)
    metadata.timestamp_secs = int(record.timestamp)
    request, response = entry.predict_log.request, entry.predict_log.response
    request.model_spec.name = record.model_name
    request.model_spec.signature_name = record.signature
    if record.requested_label:
        request.model_spec.version_label = record.requested_label
    elif record.requested_version is not None:
        request.model_spec.version.value = record.requested_version
    for key, array in record.inputs.items():
        request.inputs[key].CopyFrom(tensors.to_tensor_proto(array))
    response.model_spec.CopyFrom(metadata.model_spec)
    for key, array in record.outputs.items():
        response.outputs[key].CopyFrom(tensors.to_tensor_proto(array))
    return entry
