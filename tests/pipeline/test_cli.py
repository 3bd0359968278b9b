"""The command line, end to end, as a user runs it (real subprocesses)."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.cli import COMMAND_HELP
from pipeline.core.model_repo import published_versions
from pipeline.data.snapshot import Snapshot
from pipeline.runner import STEP_NAMES
from tests.support import REPO_ROOT


def pipeline_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def _small_run_flags(small_idx_dir, tmp_path, run_id):
    """A small, 1-epoch run whose promotion only writes the serving config file (no serving endpoint)."""
    values = {
        "data-source": f"idx:{small_idx_dir}",
        "workdir": tmp_path / "work",
        "model-base-path": tmp_path / "models",
        "serving-config-file": tmp_path / "serving" / "models.config",
        "serving-grpc-target": "none",
        "run-id": run_id,
        "epochs": 1,
        "batch-size": 64,
        "min-accuracy": 0.5,
        "warmup-requests": 3,
        "smoke-test-examples": 16,
    }
    return [f"--{name}={value}" for name, value in values.items()]


@pytest.mark.parametrize("command", sorted(COMMAND_HELP))
def test_every_command_has_help(command):
    result = pipeline_cli(command, "--help")
    assert result.returncode == 0
    assert "--epochs" in result.stdout and "--data-source" in result.stdout


def test_run_end_to_end_then_a_stricter_gate_publishes_nothing(small_idx_dir, tmp_path):
    result = pipeline_cli("run", *_small_run_flags(small_idx_dir, tmp_path, "e2e"))
    assert result.returncode == 0, result.stderr[-3000:]
    for step in STEP_NAMES:
        status = "skipped" if step in ("smoke_test", "watch_canary") else "ok"  # no serving endpoint, no watch
        assert f"\n{step:<14} {status}" in result.stdout, result.stdout
    assert "version 1 at" in result.stdout and "stable -> 1" in result.stdout
    assert "\nreport         ok            0.0  promoted version 1 to stable (test accuracy 0." in result.stdout

    run_dir = tmp_path / "work" / "runs" / "e2e"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest) == {*STEP_NAMES, "report"}
    assert manifest["report"]["outcome"] == "promoted" and (run_dir / "report.html").is_file()
    assert manifest["export"]["version"] == 1 and manifest["mark_stable"]["stable"] == 1
    for artifact in (
        "validate/anomalies.json",
        "train/history.json",
        "train/training_curves.png",
        "evaluate/evaluation.json",
        "evaluate/confusion_matrix.png",
    ):
        assert (run_dir / artifact).is_file(), artifact
    assert 'key: "stable"' in (tmp_path / "serving" / "models.config").read_text()
    events = [json.loads(line)["event"] for line in (tmp_path / "work" / "lineage.jsonl").read_text().splitlines()]
    assert events == ["gate", "exported", "label_moved", "label_moved"]  # the same records the DAG writes
    history_flags = ["--workdir", str(tmp_path / "work")]
    now = json.loads(pipeline_cli("history", *history_flags).stdout)
    assert {label: info["version"] for label, info in now["labels"].items()} == {"stable": 1, "canary": 1}
    assert now["labels"]["stable"]["by"].startswith("cli by ")
    drift = pipeline_cli("drift", *history_flags, "--request-log-dir", str(tmp_path / "no-logs"))
    assert drift.returncode == 0 and json.loads(drift.stdout)["summary"].startswith("not judged: 0 logged requests")
    before = pipeline_cli("history", *history_flags, "--at", "2020-01-01T00:00:00Z")
    assert before.returncode == 0 and json.loads(before.stdout)["labels"] == {}  # nothing was served then
    assert "not an ISO 8601 time: 'noon'" in pipeline_cli("history", *history_flags, "--at", "noon").stderr

    version_dir = Path(manifest["export"]["version_dir"])
    images = Snapshot.load(manifest["ingest"]["snapshot"]).split_columns("test[:32]")[0]["images"]
    served = tf.saved_model.load(str(version_dir)).signatures["serving_default"](images=tf.constant(images[..., 0]))
    model = keras.models.load_model(manifest["train"]["model_path"])
    expected = model.predict({"images": images.astype(np.float32)}, verbose=0)
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)

    strict = pipeline_cli(
        "run",
        *_small_run_flags(small_idx_dir, tmp_path, "strict"),
        "--min-accuracy",
        "0.999",
        "--force",
        "true",
        "--force-reason",
        "test a strict gate",
    )
    assert strict.returncode == 0, strict.stderr[-3000:]
    assert "test accuracy" in strict.stdout and "NOT blessed" in strict.stdout
    assert "export         skipped" in strict.stdout and "< min_accuracy 0.999" in strict.stdout
    assert "\nreport         ok            0.0  not blessed: " in strict.stdout  # what the run did, in one line
    assert published_versions(tmp_path / "models" / "fashion_mnist") == [1]


def test_steps_one_by_one_share_a_run(small_idx_dir, tmp_path):
    flags = _small_run_flags(small_idx_dir, tmp_path, "stepwise")
    outputs = {}
    for stage in ("ingest", "validate", "train", "evaluate", "export", "promote"):
        result = pipeline_cli(stage, *flags)
        assert result.returncode == 0, f"{stage}: {result.stderr[-3000:]}"
        outputs[stage] = json.loads(result.stdout)
        assert outputs[stage]["run_id"] == "stepwise"
    assert outputs["evaluate"]["blessed"] is True
    assert outputs["export"]["version"] == 1
    assert outputs["promote"]["stable"] == 1  # promote_canary -> smoke_test -> mark_stable
    assert Path(outputs["train"]["model_path"]).parent == tmp_path / "work" / "runs" / "stepwise" / "train"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epochs", "-1"], "error: epochs must be >= 1, got -1"),
        (["--model", "transformer"], "error: model 'transformer' is neither a built-in (auto, cnn, cnn_deep"),
        (["--label", "species"], "label column 'species' does not exist; the columns are: images, label"),
        (["--epoch", "3"], "unrecognized arguments: --epoch"),  # no prefix matching of option names
        (["--data-source", "idx:/no/such/folder"], "error: IDX data folder /no/such/folder does not exist"),
        (["--model-base-path", "/proc/no-models"], "error: model base path /proc/no-models is not writable"),
    ],
)
def test_bad_input_exits_2_with_the_reason(small_idx_dir, tmp_path, extra, message):
    result = pipeline_cli("run", *_small_run_flags(small_idx_dir, tmp_path, "bad"), *extra)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "fashion_mnist").exists() or not published_versions(
        tmp_path / "models" / "fashion_mnist"
    )


def test_stage_without_inputs_says_what_is_missing(tmp_path):
    result = pipeline_cli("evaluate", "--workdir", str(tmp_path), "--run-id", "empty")
    assert result.returncode == 2
    assert (
        "error: evaluate: this step needs 'snapshot' from step 'ingest': pass --snapshot or a --run-id "
        "whose earlier steps produced it" in result.stderr
    )
