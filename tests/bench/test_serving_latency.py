"""A smoke run of the serving benchmark (tiny sizes), so the benchmark code cannot rot."""

import json
import subprocess
import sys

from tests.support import REPO_ROOT


def test_serving_latency_benchmark_runs_and_writes_its_report(model_repo, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "bench/serving_latency.py",
            f"--model-dir={model_repo / 'fashion'}",
            "--points=1x1,2x4",
            "--modes=off,on,logged",
            "--requests=8",
            f"--out-dir={tmp_path}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "serving_latency.json").read_text())
    for mode in ("off", "on", "logged"):
        assert set(report["runs"][mode]) == {"grpc 1x1", "rest 1x1", "grpc 2x4", "rest 2x4"}
        for point in report["runs"][mode].values():
            assert (
                point["errors"] == 0 and point["p50_ms"] > 0 and point["server_cpu_share"] >= 0
            )  # 10 ms ticks over a short run: only a rough figure
    assert report["in_process"]["1x1"]["p50_ms"] > 0 and report["in_process"]["1x32"]["images_per_s"] > 0
    assert set(report["grpc_round_trip"]) == {"status 1x1", "status 32x1"}
    assert report["ratios"]["rest_p50_over_grpc_p50_1x1"] > 0 and report["ratios"]["logged_over_off_grpc_p50_1x1"] > 0
    assert report["request_log_files"] >= 1  # the logged mode really wrote PredictionLog files
    table = (tmp_path / "serving_latency.md").read_text()
    assert "| 2x4 |" in table and "grpc batching" in table and "100% request log" in table
    assert (tmp_path / "serving_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
