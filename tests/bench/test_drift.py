"""A smoke run of the drift benchmark (ten thousand logged rows), so the benchmark code cannot rot."""

import json
import subprocess
import sys

from tests.support import REPO_ROOT


def test_drift_benchmark_measures_the_check_and_the_statistics_pass(tmp_path):
    result = subprocess.run(
        [sys.executable, "bench/drift.py", "--rows=10000", f"--out-dir={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "drift.json").read_text())
    assert report["rows"] == 10000
    check, statistics = report["drift_check"], report["training_statistics"]
    assert check["requests"] == 10000 and check["drifted"] is True  # a third of the logged calls drifted
    assert statistics["rows"] == 10000
    for part in (check, statistics):
        assert part["seconds"] > 0 and part["peak_rss_mb"] >= part["rss_before_mb"] > 0
    assert "| drift check | 10,000 |" in (tmp_path / "drift.md").read_text()
