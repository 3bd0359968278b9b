"""A smoke run of the tabular benchmark (few rows, one epoch, one split), so the benchmark code cannot rot."""

import json
import subprocess
import sys

from tests.support import REPO_ROOT


def test_tabular_benchmark_runs_each_table_beside_gradient_boosting(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "bench/tabular.py",
            "--epochs=1",
            "--seeds=1",
            "--rows=400",
            f"--out-dir={tmp_path}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "tabular.json").read_text())
    assert [entry["table"] for entry in report["tables"]] == ["penguins", "diamonds", "health_insurance"]
    assert [entry["task"] for entry in report["tables"]] == ["multiclass", "regression", "binary"]
    for entry in report["tables"]:
        (run,) = entry["runs"]
        assert sum(run["rows"].values()) <= 400
        assert entry["metric"] in run["pipeline"]["metrics"] and entry["metric"] in run["gradient_boosting"]["metrics"]
        assert run["pipeline"]["train_seconds"] > 0 and run["pipeline"]["rows_per_second"] > 0
        assert isinstance(entry["met"], bool)
    table = (tmp_path / "tabular.md").read_text()
    assert "| penguins | multiclass" in table and "| diamonds | regression" in table
