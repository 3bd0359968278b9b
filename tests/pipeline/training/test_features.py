"""The encoding layers' statistics come from one streamed pass over the training split."""

import numpy as np
import pytest

from pipeline.core.config import PipelineConfig
from pipeline.core.problem import CATEGORICAL, FLOAT, NUMERIC, REGRESSION, STRING, TEXT, FeatureSpec, ProblemSpec
from pipeline.training import features


def _batches(columns, labels, size):
    for start in range(0, len(labels), size):
        yield {k: v[start : start + size] for k, v in columns.items()}, labels[start : start + size]


def test_streamed_statistics_equal_the_whole_splits_and_texts_are_a_bounded_even_sample(monkeypatch):
    monkeypatch.setattr(features, "TEXT_ADAPT_ROWS", 10)
    rng = np.random.default_rng(0)
    rows = 35
    sizes = rng.normal(5, 2, rows).astype(np.float32)
    sizes[3] = np.nan
    colours = np.empty(rows, dtype=object)
    colours[:] = ["red", "red", "blue", "", "green"] * 7
    notes = np.empty(rows, dtype=object)
    notes[:] = [f"note number {i}" for i in range(rows)]
    labels = rng.normal(100, 10, rows).astype(np.float32)
    problem = ProblemSpec(
        REGRESSION,
        "price",
        "price",
        (
            FeatureSpec("size", "size", NUMERIC, FLOAT),
            FeatureSpec("colour", "colour", CATEGORICAL, STRING),
            FeatureSpec("note", "note", TEXT, STRING),
        ),
    )
    columns = {"size": sizes, "colour": colours, "note": notes}
    stats, (mean, std) = features.streamed_feature_statistics(
        problem, _batches(columns, labels, 8), rows, PipelineConfig(max_vocabulary=2)
    )
    present = sizes[~np.isnan(sizes)].astype(np.float64)
    assert stats["size"].missing == 1 and stats["size"].count == rows
    assert stats["size"].mean == pytest.approx(present.mean()) and stats["size"].variance == pytest.approx(
        present.var()
    )
    assert stats["colour"].vocabulary == ["red", ""] and stats["colour"].missing == 7  # ties broken by value
    assert stats["note"].texts.tolist() == [f"note number {i}" for i in range(0, rows, 4)]  # every 4th of 35
    assert (mean, std) == (pytest.approx(labels.astype(np.float64).mean()), pytest.approx(labels.std(), rel=1e-5))
