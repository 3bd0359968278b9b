"""Statistics accumulate batch by batch and merge across parts of the data to the same summary."""

import numpy as np
import pytest

from pipeline.core.problem import CATEGORICAL, IMAGE, NUMERIC, TEXT
from pipeline.data import statistics


def _parts(values, cuts):
    bounds = [0, *cuts, len(values)]
    return [values[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _values(kind, rng, count):
    if kind == NUMERIC:
        values = rng.lognormal(2, 1, count) * rng.choice([-1, 1], count)
        values[rng.random(count) < 0.05] = np.nan
        return values
    if kind == CATEGORICAL:
        out = np.empty(count, dtype=object)
        out[:] = rng.choice(["red", "green", "blue", ""], count, p=[0.5, 0.3, 0.15, 0.05]).tolist()
        return out
    if kind == TEXT:
        out = np.empty(count, dtype=object)
        out[:] = [" ".join(["word"] * int(n)) for n in rng.integers(0, 12, count)]
        return out
    return rng.integers(0, 256, (count, 6, 6, 1), dtype=np.uint8)


@pytest.mark.parametrize("kind", [NUMERIC, CATEGORICAL, TEXT, IMAGE])
def test_parts_merged_in_order_equal_one_pass_over_the_same_parts(kind):
    values = _values(kind, np.random.default_rng(7), 20_000)
    parts = _parts(values, [3000, 11_000, 11_001])
    merged = statistics.accumulator(kind)
    for part in parts:
        merged.merge(statistics.accumulator(kind).add(part))
    streamed = statistics.accumulator(kind)
    for part in parts:
        streamed.add(part)
    assert merged.summary() == streamed.summary()
    whole = statistics.summarize(kind, values)
    if kind == NUMERIC:  # float moments may differ in the last bits with another grouping
        assert merged.summary()["mean"] == pytest.approx(whole["mean"], rel=1e-12)
        assert merged.summary()["histogram"] == whole["histogram"]
    else:
        assert merged.summary() == whole


def test_few_distinct_numbers_get_numpys_exact_deciles():
    values = np.random.default_rng(1).integers(0, 30, 5000).astype(np.float64)
    summary = statistics.numeric_summary(values)
    expected = sorted({float(q) for q in np.quantile(values, np.linspace(0, 1, 11)[1:-1])})
    assert summary["histogram"]["edges"] == pytest.approx(expected)
    assert summary["histogram"]["counts"] == statistics.bucket_counts(values, summary["histogram"]["edges"])
    assert summary["std"] == pytest.approx(values.std())


def test_many_distinct_numbers_get_sketched_deciles_within_half_a_percent():
    values = np.random.default_rng(2).lognormal(3, 1.5, 200_000)
    values[::2] *= -1
    summary = statistics.numeric_summary(values)
    # A sketch answers a rank with a value within 1% of that rank's value (no interpolation).
    exact = np.quantile(values, np.linspace(0, 1, 11)[1:-1], method="lower")
    assert len(summary["histogram"]["edges"]) == 9
    for sketched, true in zip(summary["histogram"]["edges"], exact, strict=True):
        assert abs(sketched - true) <= 0.011 * abs(true) + 1e-9
    counts = summary["histogram"]["counts"]
    assert sum(counts) == len(values) and all(abs(c - 20_000) < 600 for c in counts)
    assert summary["min"] == values.min() and summary["max"] == values.max()


def test_categories_past_the_limit_count_as_other(monkeypatch):
    monkeypatch.setattr(statistics, "CATEGORY_LIMIT", 3)
    values = np.asarray(["a", "b", "a", "c", "d", "e", "a"], dtype=object)
    summary = statistics.categorical_summary(values)
    assert summary["distinct"] == 3 and summary["other"] == 2
    assert summary["top"][0] == ["a", 3]


def test_image_moments_are_exact():
    images = np.random.default_rng(3).integers(0, 256, (50, 5, 5, 3), dtype=np.uint8)
    summary = statistics.image_summary(images)
    assert summary["pixel_mean"] == pytest.approx(images.mean())
    assert summary["pixel_std"] == pytest.approx(images.std())
    assert (summary["pixel_min"], summary["pixel_max"]) == (int(images.min()), int(images.max()))
    assert summary["image_shape"] == [5, 5, 3] and sum(summary["pixel_histogram"]) == images.size
