"""A smoke run of the training benchmark (a small subset, one epoch), so the benchmark code cannot rot."""

import json
import subprocess
import sys

from tests.support import REPO_ROOT


def test_training_benchmark_runs_and_writes_its_report(small_idx_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "bench/training_speed.py",
            f"--data-source=idx:{small_idx_dir}",
            "--presets=default,quality",
            "--epochs=1",
            "--steps=4",
            "--repeats=2",
            f"--out-dir={tmp_path}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "training_speed.json").read_text())
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert [run["preset"] for run in report["presets"]] == ["default", "quality"]
    for run in report["presets"]:
        assert run["epochs_run"] == 1 and len(run["curve"]) == 1
        assert run["train_seconds"] > 0 and 0 <= run["test_accuracy"] <= 1
    pipeline = report["input_pipeline"]
    assert pipeline["repeats"] == 2 and pipeline["ratio_median"] > 0
    assert pipeline["steps_per_s"]["tf_data"]["median"] > 0 and pipeline["steps_per_s"]["in_memory"]["median"] > 0
    table = (tmp_path / "training_speed.md").read_text()
    assert "| default |" in table and "Ratio real/in-memory" in table
    assert (tmp_path / "training_speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
