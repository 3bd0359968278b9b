"""Starting the local server: bad flags and files fail with a clear message."""

import json
import subprocess
import sys

import pytest

from tests.serving.conftest import REPO_ROOT

BAD_NAME = 'model_config_list { config { name: "a/b" base_path: "/x" } }'


def _start(*args):
    return subprocess.run([sys.executable, "-m", "serving.server", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda tmp: [], "either --model_config_file or --model_base_path must be given"),
        (lambda tmp: [f"--model_config_file={tmp / 'missing.config'}"], "cannot read"),
        (
            lambda tmp: [f"--model_config_file={_write(tmp, 'model_config_list {')}"],
            "invalid ModelServerConfig text proto",
        ),
        (
            lambda tmp: ["--model_config_file=" + str(_write(tmp, BAD_NAME))],
            "Invalid model name: 'a/b'",
        ),
    ],
)
def test_bad_startup_input(tmp_path, make_args, message):
    result = _start("--port=0", "--rest_api_port=0", *make_args(tmp_path))
    assert result.returncode != 0
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(message in line["message"] for line in lines), result.stderr[-2000:]


def _write(folder, text):
    path = folder / "models.config"
    path.write_text(text)
    return path


def test_help_lists_tf_serving_flags():
    result = _start("--help")
    for flag in ("--port", "--rest_api_port", "--model_config_file", "--enable_batching",
                 "--batching_parameters_file", "--monitoring_config_file", "--rest_api_timeout_in_ms",
                 "--file_system_poll_wait_seconds", "--model_config_file_poll_wait_seconds"):  # fmt: skip
        assert flag in result.stdout
