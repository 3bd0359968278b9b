"""The production container files parse with TF Serving's protos and agree with the project."""

import re
from pathlib import Path

import numpy as np

from serving.server import protos
from serving.server.app import build_parser
from serving.server.batching import BatchOptions

SERVING = Path(__file__).resolve().parents[2] / "serving"


def _flags() -> dict[str, str]:
    text = (SERVING / "Dockerfile").read_text()
    return dict(re.findall(r'"--([a-z_]+)=([^"]*)"', text))


def test_dockerfile_uses_the_official_image_with_a_gpu_variant():
    text = (SERVING / "Dockerfile").read_text()
    assert "FROM tensorflow/serving:${TF_SERVING_VERSION}${TF_SERVING_VARIANT}" in text
    assert "ARG TF_SERVING_VARIANT=" in text and "--build-arg TF_SERVING_VARIANT=-gpu" in text
    assert "EXPOSE 8500 8501" in text
    assert 'ENTRYPOINT ["tensorflow_model_server"]' in text
    for name in ("models.config", "batching.config", "monitoring.config"):
        assert name in text


def test_run_flags_agree_with_the_config_files_and_local_defaults():
    flags = _flags()
    defaults = build_parser().parse_args([])
    assert int(flags["port"]) == defaults.port == 8500
    assert int(flags["rest_api_port"]) == defaults.rest_api_port == 8501
    assert flags["model_config_file"] == "/config/models.config"
    assert flags["batching_parameters_file"] == "/config/batching.config"
    assert flags["monitoring_config_file"] == "/config/monitoring.config"
    known = {action.dest for action in build_parser()._actions}
    assert set(flags) <= known  # the local server accepts every production flag


def test_models_config_parses_and_points_at_the_pipeline_model():
    from pipeline.core.config import PipelineConfig

    config = protos.parse_text((SERVING / "models.config").read_text(), protos.ModelServerConfig)
    (model,) = config.model_config_list.config
    assert model.name == PipelineConfig().validate().model_name
    assert model.base_path == f"/models/{model.name}"
    assert dict(model.version_labels).keys() == {"stable", "canary"}
    loaded = set(model.model_version_policy.specific.versions)
    assert set(model.version_labels.values()) <= loaded  # labels only on loaded versions


def test_batching_and_monitoring_configs_parse():
    batching = protos.parse_text((SERVING / "batching.config").read_text(), protos.BatchingParameters)
    options = BatchOptions.from_proto(batching)
    assert options.max_batch_size == 64 and options.allowed_batch_sizes[-1] == 64
    # The queue holds 64 concurrent batch-32 requests (measured: the online default refused most of them).
    assert options.max_enqueued_batches * options.max_batch_size >= 64 * 32
    monitoring = protos.parse_text((SERVING / "monitoring.config").read_text(), protos.MonitoringConfig)
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_the_image_pins_a_released_tf_serving():
    text = (SERVING / "Dockerfile").read_text()
    assert re.search(r"^ARG TF_SERVING_VERSION=2\.20\.0$", text, re.M)  # the newest release tag (2.21 does not exist)


def test_the_shipped_labelled_config_starts_with_the_image_flags(tmp_path, model_repo):
    """TF Serving checks labels before loading: the image's flags must let models.config start a fresh server."""
    from serving import sample_models
    from serving.client import TFServingClient
    from tests.support import start_test_server

    flags = _flags()
    assert flags["allow_version_labels_for_unavailable_models"] == "true"
    sample_models.copy_version(model_repo / "scaler" / "1", tmp_path / "fashion_mnist", 1)
    config = tmp_path / "models.config"
    config.write_text((SERVING / "models.config").read_text().replace("/models/", f"{tmp_path}/"))
    refused = start_test_server(tmp_path, tmp_path / "refused.log", f"--model_config_file={config}", wait=False)
    assert refused.process.wait(timeout=120) != 0, "TF Serving refuses labels on versions not loaded yet"
    server = start_test_server(
        tmp_path,
        tmp_path / "image.log",
        f"--model_config_file={config}",
        "--allow_version_labels_for_unavailable_models=" + flags["allow_version_labels_for_unavailable_models"],
    )
    with server, TFServingClient(server.grpc_target, server.rest_url) as client:
        assert (
            client.predict("fashion_mnist", {"x": np.array([[1.0, 2.0, 3.0]], np.float32)}, label="stable").version == 1
        )
