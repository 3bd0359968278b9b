"""Column summaries: the same whatever the chunks, bounded, and exact while small."""

import numpy as np
import pytest

from pipeline.core.errors import DataSourceError
from pipeline.data.column_summary import MAX_TRACKED_VALUES, SKETCH_SIZE, ColumnSummary


def _summary(values, chunk):
    summary = ColumnSummary("c")
    for start in range(0, len(values), chunk):
        summary.add(values[start : start + chunk], "test")
    return summary


def _texts(count, seed=0):
    rng = np.random.default_rng(seed)
    words = ["red", "green", "12", "3.5", "a b c d", None]
    return np.asarray([words[i] for i in rng.integers(0, len(words), count)], dtype=object)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_a_text_column_is_summarized_the_same_in_any_chunks(chunk):
    values = _texts(1000)
    values[:3] = [None, "12", None]  # the first value that is not a number is further on
    whole, chunked = _summary(values, 1000), _summary(values, chunk)
    for field in ("kind", "rows", "present", "numbers", "first_non_number", "words", "distinct"):
        assert getattr(chunked, field) == getattr(whole, field), field
    present = [v for v in values if v is not None]
    assert whole.present == len(present) and whole.numbers == sum(v in ("12", "3.5") for v in present)
    first = next(i for i, v in enumerate(values) if v is not None and v not in ("12", "3.5"))
    assert whole.first_non_number == (first, values[first])
    assert whole.words == sum(len(v.split()) if v != "3.5" else 2 for v in present)  # '3.5' is two \w+ words
    assert whole.distinct == {"red", "green", "12", "3.5", "a b c d"} and whole.distinct_count() == 5


def test_numbers_track_wholeness_and_become_decimals_when_gaps_appear():
    summary = ColumnSummary("n")
    summary.add(np.asarray([1, 2, 3]), "test")
    assert summary.kind == "integer" and summary.whole
    summary.add(np.asarray([4.0, np.nan]), "test")
    assert summary.kind == "decimal" and summary.whole and summary.present == 4 and summary.distinct == {1, 2, 3, 4}
    summary.add(np.asarray([4.5]), "test")
    assert not summary.whole
    with pytest.raises(DataSourceError, match=r"column 'n' holds decimal values first and text values later"):
        summary.add(np.asarray(["x"], dtype=object), "test")


def test_past_the_tracked_values_the_distinct_count_is_estimated_within_a_few_percent():
    count = 60_000
    values = np.asarray([f"value {i}" for i in range(count)], dtype=object)
    summary = _summary(np.concatenate([values, values[:20_000]]), 4096)
    assert summary.distinct is None and len(summary.sketch) == SKETCH_SIZE
    assert abs(summary.distinct_count() - count) / count < 0.05
    with pytest.raises(ValueError, match=f"more than {MAX_TRACKED_VALUES} distinct values"):
        summary.sorted_values()
