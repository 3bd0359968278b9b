"""deploy/local.py: the serving server's pid file tells a live server from a zombie or a reused pid."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from deploy import local
from tests.support import wait_for


@pytest.fixture
def pid_file(tmp_path, monkeypatch):
    path = tmp_path / "server.pid"
    monkeypatch.setattr(local, "PID_FILE", path)
    return path


def _fake_server() -> subprocess.Popen:
    # Named like the server in its command line; this process never reaps it, as a container's init may not.
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "serving.server"])
    # Until the child has exec'd, its command line is still this process's (seen under load).
    wait_for(lambda: "serving.server" in psutil.Process(server.pid).cmdline(), 30, "the fake server's exec")
    return server


def test_a_live_server_is_running_and_a_reused_pid_is_not(pid_file):
    server = _fake_server()
    try:
        pid_file.write_text(str(server.pid))
        assert local.serving_running() == server.pid
        pid_file.write_text(str(os.getpid()))  # a live process, but another program (pid reused)
        assert local.serving_running() is None and not pid_file.exists()
    finally:
        server.kill()
        server.wait()


def test_serving_stop_returns_once_the_server_exited_even_as_an_unreaped_zombie(pid_file, capsys):
    server = _fake_server()
    pid_file.write_text(str(server.pid))
    try:
        local.serving_stop()  # signal 0 still reaches the zombie: waiting for it used to take the full 60 s
        assert f"serving: stopped (pid {server.pid}) in " in capsys.readouterr().out
        assert not pid_file.exists()
        assert server.poll() is not None  # it did exit (reaped only now)
    finally:
        server.kill()
        server.wait()


def test_tensorboard_serves_every_runs_training_logs(tmp_path):
    import json
    import urllib.request

    import tensorflow as tf

    from serving.launcher import free_port

    logdir = tmp_path / "runs"
    for run_id in ("run-a", "run-b"):  # the layout the train stage's TensorBoard callback writes
        with tf.summary.create_file_writer(str(logdir / run_id / "train" / "tensorboard" / "train")).as_default():
            for step in range(3):
                tf.summary.scalar("epoch_accuracy", 0.5 + step / 10, step=step)
    port = free_port()
    server = subprocess.Popen(
        local.tensorboard_command(logdir, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def runs():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as reply:
                return json.loads(reply.read()) or None
        except OSError:
            return None

    try:
        assert sorted(wait_for(runs, 120, "TensorBoard's run list")) == [
            "run-a/train/tensorboard/train",
            "run-b/train/tensorboard/train",
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_demo_prints_a_few_rows_and_the_accuracy_over_its_whole_sample():
    truth = ["Bag", "Coat", "Shirt", "Bag"] * 250
    answered = ["Bag", "Coat", "T-shirt/top", "Bag"] * 250
    probabilities = [[0.1, 0.9]] * 1000
    lines = local.sample_lines(truth, answered, list(answered), probabilities)
    assert len(lines) == 1 + local.DEMO_SHOWN + 1 and "every 100th image" in lines[0]
    assert lines[1].split() == ["Bag", "Bag", "0.900", "ok"]
    assert lines[-1].endswith(
        "750 of 1000 test images spread over the test set answered right over gRPC (75.0%); REST gave the same answers"
    )
    assert "DIFFERENT" in local.sample_lines(truth, answered, truth, probabilities)[-1]
