"""Drift from the request logs: real Predict calls through a real server, logged, read back, judged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.release.drift import check_drift, new_log_files
from pipeline.release.promotion import ServingState, apply_state
from serving.client import TFServingClient
from tests.support import export_candidate, start_test_server, wait_for


@pytest.fixture(scope="module")
def logged_server(trained_run, tmp_path_factory):
    """The stable model served with request logging at 100%, its logs rotated every second."""
    root = tmp_path_factory.mktemp("drift")
    config = trained_run["config"].replace(
        model_base_path=str(root / "models"),
        serving_config_file=str(root / "serving" / "models.config"),
        serving_grpc_target=None,
        request_log_sampling_rate=1.0,
        request_log_dir=str(root / "request_logs"),
        drift_min_requests=100,
    )
    export_candidate(trained_run, config)
    apply_state(config, ServingState(stable=1, canary=1))  # writes the config file, logging_config included
    assert "sampling_rate: 1.0" in (root / "serving" / "models.config").read_text()
    server = start_test_server(
        root,
        root / "server.log",
        f"--model_config_file={config.serving_config_file}",
        "--allow_version_labels_for_unavailable_models",
        "--request_log_rotate_seconds=1",
    )
    yield config, server
    server.stop()


def _send(server, images: np.ndarray) -> None:
    with TFServingClient(server.grpc_target, server.rest_url) as client:
        for start in range(0, len(images), 40):
            client.predict("fashion_mnist", {"images": images[start : start + 40]}, label="stable")


def _published(config, count):
    return lambda: len(new_log_files(config)) >= count and new_log_files(config)


def test_test_images_do_not_drift_and_inverted_images_do(logged_server, fashion_subset):
    config, server = logged_server
    images = fashion_subset["t10k"][0][:120].reshape(120, 28, 28)

    _send(server, images[:60])
    wait_for(_published(config, 1), 30, "a published request log")
    too_few = check_drift(config)
    assert not too_few.drifted and too_few.summary.startswith("not judged: 60 logged requests")

    _send(server, images[60:])
    wait_for(lambda: check_drift(config).requests == 120 or None, 30, "all 120 requests in published logs")
    # (the check above judged them: the files are now read; the next check sees only new ones)
    assert new_log_files(config) == []
    report_dirs = sorted((config.workdir_path / "monitoring" / "fashion_mnist").glob("*/drift.json"))
    calm = json.loads(report_dirs[-1].read_text())
    assert calm["drifted"] is False and calm["requests"]["count"] == 120 and calm["answering_versions"] == [1]

    _send(server, 255 - images)  # inverted: the same clothes, white on black turned black on white
    result = wait_for(lambda: (r := check_drift(config)).requests >= 100 and r, 30, "the inverted requests")
    assert result.drifted and result.summary.startswith(f"drift in {result.requests} requests: pixel mean")
    assert "> drift_max_pixel_mean_shift 0.5" in result.summary
    assert json.loads(Path(result.report_path).read_text())["drifted"] is True
    assert Path(result.plot_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_table_models_requests_are_read_but_not_judged_and_the_check_says_why(table_run, tmp_path):
    """Serving-time drift statistics are an image classifier's: a table model's check says so, never crashes."""
    run = table_run("binary")
    config = run["config"].replace(
        model_base_path=str(tmp_path / "models"),
        serving_config_file=str(tmp_path / "serving" / "models.config"),
        serving_grpc_target=None,
        request_log_sampling_rate=1.0,
        request_log_dir=str(tmp_path / "request_logs"),
        drift_min_requests=5,
        workdir=str(tmp_path / "work"),
    )
    export_candidate(run, config)
    apply_state(config, ServingState(stable=1, canary=1))
    server = start_test_server(
        tmp_path,
        tmp_path / "server.log",
        f"--model_config_file={config.serving_config_file}",
        "--allow_version_labels_for_unavailable_models",
        "--request_log_rotate_seconds=1",
    )
    try:
        rows = run["snapshot"].request_rows("test", 10)
        with TFServingClient(server.grpc_target, server.rest_url) as client:
            wait_for(lambda: client.status(config.model_name)[0]["state"] == "AVAILABLE", what="the model")
            client.predict(config.model_name, rows, label="stable")
        wait_for(_published(config, 1), what="a published request log")
    finally:
        server.stop()
    result = check_drift(config)
    assert not result.drifted and result.requests == 10
    assert result.summary == (
        f"not judged: serving-time drift is checked for image classifiers; {config.model_name} is a binary model "
        "on numeric, numeric, categorical features"
    )
    assert new_log_files(config) == []  # read and remembered: the next check starts after them
