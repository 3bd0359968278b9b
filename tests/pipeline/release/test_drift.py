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


def _logging_every_request(config, root, **changes):
    """`config` publishing under `root` with every request logged there (no serving server to push to)."""
    return config.replace(
        model_base_path=str(root / "models"),
        serving_config_file=str(root / "serving" / "models.config"),
        serving_grpc_target=None,
        request_log_sampling_rate=1.0,
        request_log_dir=str(root / "request_logs"),
        drift_min_requests=100,
        **changes,
    )


@pytest.fixture(scope="module")
def logged_server(trained_run, tmp_path_factory):
    """The stable model served with request logging at 100%, its logs rotated every second."""
    root = tmp_path_factory.mktemp("drift")
    config = _logging_every_request(trained_run["config"], root)
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


def test_a_table_models_requests_are_judged_per_feature_and_the_planted_drift_is_found(table_run, tmp_path):
    """Named features in the request logs: the training rows do not drift; shifted incomes and a new state do."""
    run = table_run("binary")
    config = _logging_every_request(run["config"], tmp_path, model_name="loans_drift")
    export_candidate(run, config)
    apply_state(config, ServingState(stable=1, canary=1))
    server = start_test_server(
        tmp_path,
        tmp_path / "server.log",
        f"--model_config_file={config.serving_config_file}",
        "--allow_version_labels_for_unavailable_models",
        "--request_log_rotate_seconds=1",
    )
    rows = run["snapshot"].request_rows("train", 400)  # the training rows themselves
    shifted = {k: v.copy() for k, v in rows.items()}
    shifted["annual_income"] = shifted["annual_income"] * 3
    shifted["state"][::3] = "ZZ"
    try:
        with TFServingClient(server.grpc_target, server.rest_url) as client:
            wait_for(lambda: client.status(config.model_name)[0]["state"] == "AVAILABLE", what="the model")
            client.predict(config.model_name, rows, label="stable")
            wait_for(_published(config, 1), what="a published request log")
            calm = check_drift(config)
            client.predict(config.model_name, shifted, label="stable")
            wait_for(_published(config, 1), what="the shifted requests' log")
            drifted = check_drift(config)
    finally:
        server.stop()
    assert not calm.drifted and calm.summary.startswith(f"no drift in {len(rows['state'])} requests (4 checks")
    assert drifted.drifted and drifted.requests == len(rows["state"])
    report = json.loads(Path(drifted.report_path).read_text())
    assert set(report["drifted_features"]) == {"annual_income", "state"}  # exactly the planted ones
    assert [c["drifted"] for c in report["checks"]][:2] == [True, True]  # ranked: drifted first
    state = next(c for c in report["checks"] if c["name"] == "state")
    assert state["measure"] == "l_infinity" and "ZZ" in state["distributions"]["buckets"]
    assert "annual_income: jensen shannon" in drifted.summary
    assert Path(drifted.plot_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
