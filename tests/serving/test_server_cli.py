"""Starting the local server: bad flags and files fail with a clear message."""

import json
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from serving.server.app import ModelServer, ServerOptions, build_parser
from tests.support import REPO_ROOT

BAD_NAME = 'model_config_list { config { name: "a/b" base_path: "/x" } }'


def _write(folder, text):
    path = folder / "models.config"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda tmp: [], "either --model_config_file or --model_base_path must be given"),
        (lambda tmp: [f"--model_config_file={tmp / 'missing.config'}"], "cannot read"),
        (
            lambda tmp: [f"--model_config_file={_write(tmp, 'model_config_list {')}"],
            "Error parsing text-format tensorflow.serving.ModelServerConfig",
        ),
        (lambda tmp: ["--model_config_file=" + str(_write(tmp, BAD_NAME))], "Invalid model name: 'a/b'"),
    ],
)
def test_bad_startup_input_is_refused_before_any_port_opens(tmp_path, make_args, message):
    args = build_parser().parse_args(["--port=0", "--rest_api_port=0", *make_args(tmp_path)])
    with pytest.raises(Exception, match=message) as caught:
        ModelServer(ServerOptions.from_args(args)).start()
    assert not isinstance(caught.value, (AssertionError, TypeError, AttributeError)), caught.value


def test_a_refused_start_exits_non_zero_with_a_json_log_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.server",
            "--port=0",
            "--rest_api_port=0",
            f"--model_config_file={_write(tmp_path, BAD_NAME)}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any("Invalid model name: 'a/b'" in line["message"] for line in lines), result.stderr[-2000:]
    assert any(line.get("event") == "start_failed" for line in lines)


def test_help_lists_tf_serving_flags():
    text = build_parser().format_help()
    for flag in (
        "--port",
        "--rest_api_port",
        "--model_config_file",
        "--enable_batching",
        "--batching_parameters_file",
        "--monitoring_config_file",
        "--rest_api_timeout_in_ms",
        "--file_system_poll_wait_seconds",
        "--model_config_file_poll_wait_seconds",
        "--allow_version_labels_for_unavailable_models",
        "--enable_signature_method_name_check",
    ):
        assert flag in text


def test_tf_serving_harness_flags_are_accepted_and_parsed():
    from serving.server.app import parse_channel_arguments

    args = build_parser().parse_args(
        [
            "--grpc_socket_path=/tmp/x.sock",
            "--grpc_channel_arguments=grpc.max_concurrent_streams=100,grpc.primary_user_agent=a",
            "--enable_grpc_healthcheck_service",
            "--tensorflow_intra_op_parallelism=2",
            "--tensorflow_inter_op_parallelism=1",
            "--saved_model_tags=serve,gpu",
            "--num_request_iterations_for_warmup=3",
            "--rest_api_num_threads=8",
        ]
    )
    assert parse_channel_arguments(args.grpc_channel_arguments) == [
        ("grpc.max_concurrent_streams", 100),
        ("grpc.primary_user_agent", "a"),
    ]
    assert args.enable_grpc_healthcheck_service and args.saved_model_tags == "serve,gpu"
    with pytest.raises(ValueError, match="'oops' is not key=value"):
        parse_channel_arguments("oops")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--prefer_tflite_model=true"], "--prefer_tflite_model: TFLite models are not supported"),
        (["--num_request_iterations_for_warmup=0"], "--num_request_iterations_for_warmup must be at least 1"),
    ],
)
def test_unsupported_flag_values_are_refused_by_name(tmp_path, flags, message):
    args = build_parser().parse_args([f"--model_base_path={tmp_path}", *flags])
    with pytest.raises(ValueError, match=message):
        ServerOptions.from_args(args)


def test_an_unknown_flag_is_named(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model_base_path=/m", "--no_such_flag=1"])
    assert "unrecognized arguments: --no_such_flag=1" in capsys.readouterr().err


def _serve(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "serving.server", *args], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True, **kwargs
    )


def test_a_bad_model_config_prints_tf_servings_error_text(tmp_path):
    """tensorflow_model_server_test.py testBadModelConfig: its file holds the words 'improperly formatted file'."""
    config = _write(tmp_path, "improperly formatted file\n")
    process = _serve(["--port=0", "--rest_api_port=0", f"--model_config_file={config}"])
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in stderr  # what the harness greps for
    assert f"Invalid protobuf file: '{config}'" in stderr  # proto_util.h's status text


def test_a_two_model_config_comes_up_within_tf_servings_test_harness_wait(tmp_path):
    """TF Serving's harness: the server is ready once Predict for a missing model says 'Servable', polled
    once a second up to 60 times (WaitForServerReady); then both models answer (testGetModelStatus...)."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving import sample_models, tensors
    from serving.launcher import free_port

    sample_models.save_quickstart_half_plus_two(tmp_path / "half_plus_two", 123)
    sample_models.save_quickstart_half_plus_two(tmp_path / "half_plus_three", 123, offset=3.0)
    config = _write(
        tmp_path,
        "model_config_list: {\n"
        + "".join(
            f'  config: {{ name: "{name}", base_path: "{tmp_path / name}", model_platform: "tensorflow" }}\n'
            for name in ("half_plus_two", "half_plus_three")
        )
        + "}\n",
    )
    port = free_port()
    process = _serve([f"--port={port}", "--rest_api_port=0", f"--model_config_file={config}"])
    try:
        channel = grpc.insecure_channel(f"localhost:{port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        probe = predict_pb2.PredictRequest()
        probe.model_spec.name = "intentionally_missing_model"
        for _attempt in range(60):
            time.sleep(1)
            try:
                stub.Predict(probe, 5.0)
            except grpc.RpcError as error:
                if "Servable" in (error.details() or ""):
                    break
        else:
            pytest.fail("the server did not become ready within the harness's 60 attempts")
        for name, expected in (("half_plus_two", 3.0), ("half_plus_three", 4.0)):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            request.inputs["x"].CopyFrom(tensors.to_tensor_proto(np.array([[2.0]], np.float32)))
            response = stub.Predict(request, 5.0)
            assert tensors.to_array(response.outputs["y"]).tolist() == [[expected]]
            assert response.model_spec.version.value == 123
        channel.close()
    finally:
        process.terminate()
        process.communicate(timeout=60)
