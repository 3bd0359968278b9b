"""Request logging (a model's `logging_config`): sampled Predict calls as TF Serving's PredictionLog TFRecords.

The open-source TF Serving refuses any logging_config (no log collector in its build), so
these tests run on the local server only.
"""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving import sample_models
from serving.client import TFServingClient
from serving.protocol import ServingError
from serving.server import metrics
from serving.server.request_log import REQUEST_LOG_COUNT, REQUEST_LOG_DROPPED, RequestLogger
from tests.support import start_test_server, wait_for

X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)


def _config(base, prefix, rate: float = 1.0, extra: str = "") -> str:
    return f"""model_config_list {{ config {{
  name: 'scaler' base_path: '{base}/scaler' model_platform: 'tensorflow'
  model_version_policy {{ all {{}} }}
  version_labels {{ key: 'stable' value: 1 }} version_labels {{ key: 'canary' value: 2 }}
  logging_config {{
    log_collector_config {{ filename_prefix: '{prefix}' {extra} }}
    sampling_config {{ sampling_rate: {rate} }}
  }}
}} }}
"""


def read_logs(folder) -> list[prediction_log_pb2.PredictionLog]:
    """Every record of the published (complete) request log files in `folder`, oldest file first."""
    records = []
    for path in sorted(folder.glob("*.tfrecord")):
        for data in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            records.append(prediction_log_pb2.PredictionLog.FromString(data))
    return records


@pytest.fixture(scope="module")
def logging_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("request-log")
    sample_models.save_scaler(root / "scaler", 1, 2.0)
    sample_models.save_scaler(root / "scaler", 2, 3.0)
    config = root / "logging.config"
    config.write_text(_config(root, root / "logs" / "scaler"))
    local = start_test_server(
        root,
        root / "server.log",
        f"--model_config_file={config}",
        "--allow_version_labels_for_unavailable_models",
        "--request_log_rotate_seconds=1",
    )
    yield {"local": local, "root": root}
    local.stop()


def test_sampled_predictions_are_prediction_logs_with_model_version_label_and_time(logging_server):
    local, logs = logging_server["local"], logging_server["root"] / "logs"
    started = tf.timestamp().numpy()
    with TFServingClient(local.grpc_target, local.rest_url) as client:
        assert client.predict("scaler", {"x": X}, label="canary").version == 2
        rest = client.predict("scaler", {"x": X}, version=1, protocol="rest")
    np.testing.assert_allclose(rest["y"], X * 2)
    records = wait_for(lambda: len(read_logs(logs)) >= 2 and read_logs(logs), 30, "two published request logs")
    assert not list(logs.glob("*.tmp"))  # published by rename after the rotation age: complete files only
    by_version = {record.log_metadata.model_spec.version.value: record for record in records}
    canary, pinned = by_version[2], by_version[1]
    for record in (canary, pinned):
        metadata = record.log_metadata
        assert (metadata.model_spec.name, metadata.model_spec.signature_name) == ("scaler", "serving_default")
        assert metadata.sampling_config.sampling_rate == 1.0 and list(metadata.saved_model_tags) == ["serve"]
        assert started - 5 <= metadata.timestamp_secs <= started + 60
        np.testing.assert_array_equal(tf.make_ndarray(record.predict_log.request.inputs["x"]), X)
    assert canary.predict_log.request.model_spec.version_label == "canary"  # what the caller asked for
    assert pinned.predict_log.request.model_spec.version.value == 1
    np.testing.assert_allclose(tf.make_ndarray(canary.predict_log.response.outputs["y"]), X * 3)
    assert canary.predict_log.response.model_spec.version.value == 2


def test_a_reload_cannot_log_outside_the_roots_or_with_an_unknown_collector(logging_server):
    local, root = logging_server["local"], logging_server["root"]
    with TFServingClient(local.grpc_target, local.rest_url) as client:
        for config, code, message in (
            (_config(root, "/tmp/elsewhere/scaler"), grpc.StatusCode.PERMISSION_DENIED, "outside the allowed request"),
            (_config(root, root / "logs" / "s", extra="type: 'kafka'"), grpc.StatusCode.NOT_FOUND, "type: kafka"),
            (_config(root, root / "logs" / "s", rate=2.0), grpc.StatusCode.INVALID_ARGUMENT, "sampling_rate"),
        ):
            with pytest.raises(ServingError) as refused:
                client.reload_config(config)
            assert refused.value.code == code and message in refused.value.message, refused.value.message
        client.reload_config(_config(root, root / "logs" / "scaler", rate=0.0))  # allowed: logging paused
        before = len(read_logs(root / "logs"))
        for _ in range(5):
            client.predict("scaler", {"x": X}, label="stable")
    assert len(read_logs(root / "logs")) == before  # sampling_rate 0: nothing written (nothing left open)
    assert not list((root / "logs").glob("*.tmp"))


def test_a_full_queue_drops_and_counts_instead_of_waiting():
    class Servable:
        name, version = "m", 1

    class Config:  # a LoggingConfig's fields this logger reads
        class log_collector_config:  # noqa: N801
            filename_prefix = "/nonexistent/never-written"

        class sampling_config:  # noqa: N801
            sampling_rate = 1.0

    registry = metrics.Registry()
    writer_busy, release = threading.Event(), threading.Event()
    logger = RequestLogger(registry, lambda name: Config, queue_size=2)

    def blocked_write(record):
        writer_busy.set()
        release.wait(30)

    logger._write = blocked_write  # the disk stalls: the writer thread is stuck on one record
    logger.log_predict(Servable, "serving_default", (None, None), {"x": X}, {"y": X})
    assert writer_busy.wait(10)
    for _ in range(5):  # two fit in the queue, three are dropped; none of the calls waits
        logger.log_predict(Servable, "serving_default", (None, None), {"x": X}, {"y": X})
    release.set()
    assert registry._counters[REQUEST_LOG_DROPPED] == {(("model_name", "m"),): 3.0}
    assert logger.flush(10)
    logger.close()
    assert REQUEST_LOG_COUNT not in registry._counters  # the stub writer counted nothing
