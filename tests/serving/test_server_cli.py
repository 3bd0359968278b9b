"""Starting the local server: bad flags and files fail with a clear message."""

import json
import subprocess
import sys

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
            "invalid ModelServerConfig text proto",
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
