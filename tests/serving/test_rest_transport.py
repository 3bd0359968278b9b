"""The REST transport (uvicorn): limits, idle and slow connections, shutdown."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from serving.client import TFServingClient
from tests.serving.conftest import local_only
from tests.support import start_test_server

X = np.array([[1, 2, 3]], np.float32)


def _start_scaler_server(folder, model_repo, *extra: str):
    """A server for the scaler alone: small body limit, short grace, plus `extra` flags."""
    config = folder / "m.config"
    config.write_text(f"model_config_list {{ config {{ name: 'scaler' base_path: '{model_repo / 'scaler'}' }} }}")
    return start_test_server(
        folder,
        folder / "server.log",
        f"--model_config_file={config}",
        "--rest_api_max_request_bytes=1000",
        "--shutdown_grace_seconds=5",
        *extra,
    )


@pytest.fixture(scope="module")
def scaler_server(tmp_path_factory, model_repo):
    """One server for the tests that leave it as they found it."""
    with _start_scaler_server(tmp_path_factory.mktemp("transport"), model_repo) as server:
        yield server


def _raw(port: int, data: bytes) -> bytes:
    """Sends raw bytes; returns everything the server answers before it closes the connection."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


@local_only
def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(scaler_server):
    head = b"POST /v1/models/scaler:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
    reply = _raw(scaler_server.rest_port, head)  # no body follows: the answer cannot wait for it
    assert reply.startswith(b"HTTP/1.1 413") and b"exceeds the limit of 1000 bytes" in reply


@local_only
@pytest.mark.parametrize("length", [b"-1", b"abc", b"1e3", b"12, 12"])
def test_a_malformed_content_length_gets_a_400(scaler_server, length):
    reply = _raw(
        scaler_server.rest_port, b"POST /v1/models/scaler:predict HTTP/1.1\r\nContent-Length: " + length + b"\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 400")


@local_only
def test_a_body_shorter_than_its_declared_length_times_out_with_408(tmp_path, model_repo):
    with _start_scaler_server(tmp_path, model_repo, "--rest_api_timeout_in_ms=1000") as server:
        head = b"POST /v1/models/scaler:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
        reply = _raw(server.rest_port, head + b'{"instances"')  # 12 of the 500 bytes, then silence
    assert reply.startswith(b"HTTP/1.1 408") and b"Request body not received within 1 s" in reply


@local_only
def test_idle_and_slow_connections_neither_block_requests_nor_shutdown(tmp_path, model_repo):
    scaler_server = _start_scaler_server(tmp_path, model_repo)
    port = scaler_server.rest_port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    for sock in slow:  # half a request line, never finished
        sock.sendall(b"POST /v1/models/scaler:pre")
    try:
        with TFServingClient(scaler_server.grpc_target, scaler_server.rest_url, "rest", retries=0, timeout=5) as client:
            assert client.predict("scaler", {"x": X})["y"].tolist() == (X * 3).tolist()
        # SIGTERM with every connection still open: 0 means it exited by itself (stop() kills after 20 s).
        assert scaler_server.stop(timeout_s=20) == 0
    finally:
        for sock in idle + slow:
            sock.close()
        scaler_server.stop()  # no-op when it has exited


@local_only
def test_grpc_on_a_unix_socket_with_the_health_service(tmp_path, model_repo):
    """The flags TF Serving's own test harness passes: --grpc_socket_path, --grpc_channel_arguments."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    socket_path = tmp_path / "grpc.sock"
    server = _start_scaler_server(
        tmp_path,
        model_repo,
        f"--grpc_socket_path={socket_path}",
        "--grpc_channel_arguments=grpc.max_concurrent_streams=64",
        "--enable_grpc_healthcheck_service",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=1",
        "--num_request_iterations_for_warmup=2",
    )
    with server, TFServingClient(f"unix:{socket_path}", timeout=30) as client:
        assert client.predict("scaler", {"x": X})["y"].tolist() == (X * 3).tolist()
        with grpc.insecure_channel(server.grpc_target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert '"warmup_requests": 3' in server.logs()  # its 3 warmup records (replayed twice each) passed
