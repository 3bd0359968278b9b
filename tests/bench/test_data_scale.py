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

    ingest = data_scale.run_step("ingest", str(scaled), str(tmp_path / "work"))
    drift = data_scale.run_step("drift", str(scaled), str(tmp_path / "work"))
    assert ingest["rows"] == 600 and drift["rows"] == 300
    assert ingest["peak_rss_mb"] > 0 and drift["peak_rss_mb"] >= ingest["peak_rss_mb"]
    report = data_scale.markdown(
        {"machine": "test", "scale": 3, "rows": {"1x": 200, "scaled": 600}, "1x": [ingest], "scaled": [drift]}
    )
    assert "| ingest |" in report and ("| yes |" in report or "| no |" in report)
