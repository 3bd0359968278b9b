"""A smoke run of the serving benchmark (tiny sizes), so the benchmark code cannot rot."""

import json
import subprocess
import sys

from tests.support import REPO_ROOT


def test_serving_latency_benchmark_runs_and_writes_its_results(model_repo, tmp_path):
    out = tmp_path / "latency.json"
    result = subprocess.run(
        [
            sys.executable,
            "bench/serving_latency.py",
            f"--model-dir={model_repo / 'fashion'}",
            "--points=1x1,2x4",
            "--requests=8",
            f"--out={out}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["points"]) == {"grpc 1x1", "rest 1x1", "grpc 2x4", "rest 2x4"}
    assert all(point["errors"] == 0 and point["p50_ms"] > 0 for point in report["points"].values())
    assert report["in_process_1x1"]["p50_ms"] > 0 and "rest_p50_over_grpc_p50_1x1" in report["ratios"]
