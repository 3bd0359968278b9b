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
from pipeline.evaluate import published_versions
from pipeline.snapshot import Snapshot

REPO_ROOT = Path(__file__).resolve().parents[2]


def pipeline_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _small_run_flags(small_idx_dir, tmp_path, run_id):
    return [
        "--data-source", f"idx:{small_idx_dir}", "--workdir", str(tmp_path / "work"),
        "--model-base-path", str(tmp_path / "models"), "--run-id", run_id,
        "--epochs", "1", "--batch-size", "64", "--min-accuracy", "0.5", "--warmup-requests", "3",
    ]  # fmt: skip


@pytest.mark.parametrize("command", sorted(COMMAND_HELP))
def test_every_command_has_help(command):
    result = pipeline_cli(command, "--help")
    assert result.returncode == 0
    assert "--epochs" in result.stdout and "--data-source" in result.stdout


def test_run_end_to_end_then_a_stricter_gate_publishes_nothing(small_idx_dir, tmp_path):
    result = pipeline_cli("run", *_small_run_flags(small_idx_dir, tmp_path, "e2e"))
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("ingest", "validate", "train", "evaluate", "export"):
        assert f"\n{stage:<10} ok" in result.stdout
    assert "version 1 at" in result.stdout

    run_dir = tmp_path / "work" / "runs" / "e2e"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest) == {"ingest", "validate", "train", "evaluate", "export"}
    assert manifest["export"]["version"] == 1
    for artifact in ("validate/anomalies.json", "train/history.json", "train/training_curves.png",
                     "evaluate/evaluation.json", "evaluate/confusion_matrix.png"):  # fmt: skip
        assert (run_dir / artifact).is_file(), artifact

    version_dir = Path(manifest["export"]["version_dir"])
    images, _ = Snapshot.load(manifest["ingest"]["snapshot"]).split_arrays("test[:32]")
    served = tf.saved_model.load(str(version_dir)).signatures["serving_default"](images=tf.constant(images[..., 0]))
    expected = keras.models.load_model(manifest["train"]["model_path"]).predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)

    strict = pipeline_cli("run", *_small_run_flags(small_idx_dir, tmp_path, "strict"), "--min-accuracy", "0.999")
    assert strict.returncode == 0, strict.stderr[-3000:]
    assert "test accuracy" in strict.stdout and "NOT blessed" in strict.stdout
    assert "export     skipped" in strict.stdout and "< min_accuracy 0.999" in strict.stdout
    assert published_versions(tmp_path / "models" / "fashion_mnist") == [1]


def test_stages_one_by_one_share_a_run(small_idx_dir, tmp_path):
    flags = _small_run_flags(small_idx_dir, tmp_path, "stepwise")
    outputs = {}
    for stage in ("ingest", "validate", "train", "evaluate", "export"):
        result = pipeline_cli(stage, *flags)
        assert result.returncode == 0, f"{stage}: {result.stderr[-3000:]}"
        outputs[stage] = json.loads(result.stdout)
        assert outputs[stage]["run_id"] == "stepwise"
    assert outputs["evaluate"]["blessed"] is True
    assert outputs["export"]["version"] == 1
    assert Path(outputs["train"]["model_path"]).parent == tmp_path / "work" / "runs" / "stepwise" / "train"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epochs", "-1"], "error: epochs must be >= 1, got -1"),
        (["--model", "transformer"], "error: unknown model 'transformer'; choose one of: cnn, mlp"),
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
    assert "'evaluate' needs --snapshot or a --run-id whose earlier stages produced one" in result.stderr
