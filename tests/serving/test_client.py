"""TFServingClient behaviour (retries, errors) and the client CLI against the server under test."""

from __future__ import annotations

import argparse
import subprocess
import sys

import grpc
import numpy as np
import pytest
from PIL import Image

from serving.client import TFServingClient, image_shape, load_image
from serving.launcher import free_port
from serving.protocol import ServingError
from tests.support import REPO_ROOT


def test_retries_unavailable_with_backoff_but_not_other_errors():
    client = TFServingClient(retries=3, backoff=0.001)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "restarting")
        return "answer"

    assert client._with_retries(flaky) == "answer" and len(calls) == 3

    calls.clear()

    def missing():
        calls.append(1)
        raise ServingError(grpc.StatusCode.NOT_FOUND, "no such model")

    with pytest.raises(ServingError, match="no such model"):
        client._with_retries(missing)
    assert len(calls) == 1


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_nothing_listening_is_unavailable_after_retries(protocol):
    port = free_port()
    client = TFServingClient(
        f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", protocol, timeout=2, retries=2, backoff=0.01
    )
    with pytest.raises(ServingError) as caught:
        client.status("anything")
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_version_and_label_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        TFServingClient().predict("m", {"x": np.zeros(1)}, version=1, label="stable", protocol="rest")


def _client_cli(server, *args):
    command = [
        sys.executable,
        "-m",
        "serving.client",
        "--grpc-target",
        server.grpc_target,
        "--rest-url",
        server.rest_url,
        "--model",
        "fashion",
        *args,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("protocol", ["--grpc", "--rest"])
def test_cli_predicts_an_image_file(standard_config, trained_run, tmp_path, protocol):
    images = trained_run["snapshot"].split_columns("test[:1]")[0]["images"]
    path = tmp_path / "item.png"
    Image.fromarray(images[0, ..., 0]).save(path)
    result = _client_cli(standard_config, protocol, "predict", "--image", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    name, probability, detail = result.stdout.strip().split("\t")
    assert name in trained_run["snapshot"].class_names
    assert 0.0 < float(probability) <= 1.0
    assert f"via {protocol[2:]}" in detail


def test_cli_names_the_image_shape_a_model_takes(standard_config, tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    result = _client_cli(standard_config, "predict", "--image", str(path), "--image-shape", "32,32,3")
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "pass --image-shape 28,28,1" in result.stderr
    assert _client_cli(standard_config, "predict", "--image", str(path)).returncode == 0  # 28,28,1 by default


def test_load_image_converts_and_resizes_to_the_shape(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    colour = load_image(str(path), (33, 20, 3))
    assert colour.shape == (33, 20, 3) and colour.dtype == np.uint8 and colour[0, 0].tolist() == [200, 30, 30]
    gray = load_image(str(path), (28, 28, 1), invert=True)
    red_as_gray = Image.new("RGB", (1, 1), (200, 30, 30)).convert("L").getpixel((0, 0))
    assert gray.shape == (28, 28, 1) and gray[0, 0, 0] == 255 - red_as_gray
    with pytest.raises(ValueError, match="images of 4 channels cannot be sent"):
        load_image(str(path), (8, 8, 4))
    assert image_shape("224,224,3") == (224, 224, 3) and image_shape("28,28") == (28, 28, 1)
    with pytest.raises(argparse.ArgumentTypeError, match="expected HEIGHT,WIDTH,CHANNELS"):
        image_shape("28,x")


def test_cli_status_metadata_and_errors(standard_config):
    status = _client_cli(standard_config, "status")
    assert status.returncode == 0 and '"state": "AVAILABLE"' in status.stdout
    metadata = _client_cli(standard_config, "--rest", "metadata")
    assert metadata.returncode == 0 and '"serving_default"' in metadata.stdout
    missing = _client_cli(standard_config, "predict", "--image", "/no/such.png")
    assert missing.returncode == 2 and "error:" in missing.stderr
    unknown = _client_cli(standard_config, "metadata", "--label", "nope")
    assert unknown.returncode == 1 and "INVALID_ARGUMENT: Unrecognized servable version label: nope" in unknown.stderr
