"""bench/data_scale.py at its smallest: the scaled data is written right and the steps report their peaks."""

from __future__ import annotations

import numpy as np

from bench import data_scale
from pipeline.data import idx


def test_scaled_copies_are_shifted_and_the_steps_report_rows_and_peak_memory(small_idx_dir, tmp_path):
    scaled = data_scale.write_scaled(small_idx_dir, tmp_path / "3x", 3, limit=100)
    images, labels = idx.read_folder_split(scaled, "train")
    assert images.shape == (300, 28, 28) and labels.tolist() == labels[:100].tolist() * 3
    assert np.array_equal(images[100:200], np.roll(images[:100], 1, axis=2))
    assert len({image.tobytes() for image in images}) == 300

    ingest = data_scale.run_step("ingest", f"idx:{scaled}", str(tmp_path / "work"))
    drift = data_scale.run_step("drift", f"idx:{scaled}", str(tmp_path / "work"))
    assert ingest["rows"] == 600 and drift["rows"] == 300
    assert ingest["peak_rss_mb"] > 0 and drift["peak_rss_mb"] >= ingest["peak_rss_mb"]
    report = data_scale.markdown(
        {"machine": "test", "scale": 3, "rows": {"1x": 200, "scaled": 600}, "1x": [ingest], "scaled": [drift]}
    )
    assert "| ingest |" in report and ("| yes |" in report or "| no |" in report)


def test_the_generated_table_is_ingested_and_its_throughput_reported_beside_pyarrow(tmp_path):
    import pyarrow.csv

    table = data_scale.write_table(tmp_path / "loans.csv", 3000, block_rows=1000)
    read = pyarrow.csv.read_csv(table)
    assert read.num_rows == 3000 and read.column_names[-1] == data_scale.TABLE_LABEL
    assert 0 < read.column("debt_ratio").null_count < 200 and set(read.column("approved").to_pylist()) == {"yes", "no"}

    ingest = data_scale.run_step("ingest", f"csv:{table}", str(tmp_path / "work"))
    assert ingest["rows"] == 3000
    figures = data_scale.throughput(table, 3000, ingest["seconds"] or 0.1, data_scale.pyarrow_read_seconds(table))
    assert figures["ingest_rows_per_s"] > 0 and figures["pyarrow_mb_per_s"] > 0 and figures["ratio"] > 0
    report = data_scale.markdown(
        {
            "kind": "table",
            "machine": "test",
            "scale": 10,
            "rows": {"1x": 3000, "scaled": 3000},
            "bytes": {"1x": 1, "scaled": 1},
            "1x": [ingest],
            "scaled": [ingest],
            "throughput": figures,
        }
    )
    assert "| pyarrow alone |" in report and "goal met:" in report


def test_a_rerun_of_some_steps_keeps_the_others_figures_and_says_so():
    def rows(seconds):
        return [
            {"step": step, "rows": 10, "seconds": seconds, "peak_rss_mb": seconds * 10} for step in data_scale.STEPS
        ]

    earlier = {"machine": "test", "scale": 10, "rows": {"1x": 10, "scaled": 100}, "1x": rows(1), "scaled": rows(2)}
    rerun = {"date": "2026-12-04", "1x": [rows(3)[0]], "scaled": [rows(4)[0]]}
    results = data_scale.merged(earlier, rerun, ("ingest",), "ingest now writes in parts.")
    assert [entry["seconds"] for entry in results["1x"]] == [3, 1, 1, 1, 1]
    assert [entry["seconds"] for entry in results["scaled"]] == [4, 2, 2, 2, 2]
    assert results["notes"] == ["Rerun on 2026-12-04: ingest. ingest now writes in parts."]
    assert data_scale.markdown(results).rstrip().endswith("ingest now writes in parts.")
