"""Model management kept apart: reloads only on their own address, base paths only under allowed roots."""

from __future__ import annotations

import numpy as np
import pytest

from serving.client import TFServingClient
from serving.launcher import free_port
from serving.protocol import ServingError
from serving.server.app import build_parser, management_address
from tests.serving.conftest import local_only
from tests.support import start_test_server

X = np.array([[1, 2, 3]], np.float32)


def _config(name: str, base_path) -> str:
    return f"model_config_list {{ config {{ name: '{name}' base_path: '{base_path}' model_platform: 'tensorflow' }} }}"


@local_only
def test_reloads_only_on_the_management_address_and_only_under_the_allowed_roots(tmp_path, model_repo):
    config = tmp_path / "m.config"
    config.write_text(_config("scaler", model_repo / "scaler"))
    port = free_port()
    server = start_test_server(
        tmp_path, tmp_path / "server.log", f"--model_config_file={config}", f"--model_management_address={port}"
    )
    try:
        with TFServingClient(server.grpc_target, retries=0) as client, pytest.raises(ServingError) as caught:
            client.reload_config(_config("scaler", model_repo / "scaler"))
        assert caught.value.code.name == "PERMISSION_DENIED" and "--model_management_address" in caught.value.message

        with TFServingClient(server.grpc_target, retries=0, management_target=f"127.0.0.1:{port}") as client:
            client.reload_config(_config("again", model_repo / "scaler"))  # the starting base path: allowed
            assert client.predict("again", {"x": X})["y"].tolist() == (X * 3).tolist()
            for outside in ("/etc", "/proc", model_repo / "scaler" / ".." / "examples"):
                with pytest.raises(ServingError) as caught:
                    client.reload_config(_config("evil", outside))
                assert caught.value.code.name == "PERMISSION_DENIED"
                assert "outside the allowed model roots" in caught.value.message
            assert client.predict("again", {"x": X})["y"].tolist() == (X * 3).tolist()  # nothing changed
    finally:
        server.stop()


@local_only
def test_explicit_roots_and_a_unix_socket_for_management(tmp_path, model_repo):
    socket_path = tmp_path / "management.sock"
    server = start_test_server(
        tmp_path,
        tmp_path / "server.log",
        f"--model_base_path_roots={model_repo}",
        f"--model_management_address=unix:{socket_path}",
    )
    try:
        with TFServingClient(server.grpc_target, retries=0, management_target=f"unix:{socket_path}") as client:
            client.reload_config(_config("examples", model_repo / "examples"))
            assert [s["state"] for s in client.status("examples")] == ["AVAILABLE"]
            with pytest.raises(ServingError, match="outside the allowed model roots"):
                client.reload_config(_config("other", tmp_path))
    finally:
        server.stop()


def test_management_address_forms():
    assert management_address("8505") == "127.0.0.1:8505"  # a bare port stays on loopback
    assert management_address("0.0.0.0:8505") == "0.0.0.0:8505"
    assert management_address("unix:/run/serving.sock") == "unix:/run/serving.sock"
    for bad in ("", "localhost", "unix:", ":x"):
        with pytest.raises(ValueError, match="--model_management_address"):
            management_address(bad)
    assert build_parser().parse_args([]).model_management_address == ""  # TF Serving's default: one port
