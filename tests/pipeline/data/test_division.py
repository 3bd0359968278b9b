"""The row hash that divides a one-split source: a function of the row's content and the seed alone."""

import numpy as np

from pipeline.data.division import row_digests
from pipeline.data.problem_inference import PreparedSplit


def _rows(count=3000, seed=0):
    rng = np.random.default_rng(seed)
    texts = np.asarray([["", "a", "ab", "naïve ☃", "b" * 40][i] for i in rng.integers(0, 5, count)], dtype=object)
    return PreparedSplit(
        {
            "x": rng.integers(0, 4, count).astype(np.float32),
            "n": rng.integers(-2, 2, count),
            "t": texts,
            "img": rng.integers(0, 2, (count, 3, 3, 1), dtype=np.uint8),
        },
        rng.integers(0, 2, count),
        0,
    )


def _row_keys(rows):
    return [
        (float(rows.features["x"][i]), int(rows.features["n"][i]), rows.features["t"][i])
        + (rows.features["img"][i].tobytes(), int(rows.labels[i]))
        for i in range(len(rows.labels))
    ]


def test_equal_rows_hash_equal_and_different_rows_differ():
    rows = _rows()
    digests = row_digests(rows, seed=7)
    by_row = {}
    for key, digest in zip(_row_keys(rows), digests.tolist(), strict=True):
        by_row.setdefault(key, set()).add(digest)
    assert all(len(found) == 1 for found in by_row.values())  # identical rows: one digest
    assert len({next(iter(found)) for found in by_row.values()}) == len(by_row)  # distinct rows: distinct digests


def test_a_rows_digest_does_not_depend_on_its_chunk_and_changes_with_the_seed():
    rows = _rows()
    whole = row_digests(rows, seed=7)
    chunk = PreparedSplit({k: v[1000:1500] for k, v in rows.features.items()}, rows.labels[1000:1500], 0)
    assert np.array_equal(row_digests(chunk, seed=7), whole[1000:1500])
    assert not np.any(row_digests(rows, seed=8) == whole)
    assert np.array_equal(row_digests(rows, seed=-3), row_digests(rows, seed=-3))


def test_digests_spread_over_the_whole_range():
    digests = row_digests(PreparedSplit({"i": np.arange(100_000)}, np.zeros(100_000, np.int64), 0), seed=0)
    top_bits = np.bincount((digests >> np.uint64(60)).astype(np.int64), minlength=16)
    assert top_bits.min() > 0.9 * 100_000 / 16 and top_bits.max() < 1.1 * 100_000 / 16


def test_digests_are_those_every_earlier_snapshot_was_divided_by():
    """Pinned values: a change here moves rows between splits (and renames every snapshot)."""
    rows = PreparedSplit(
        {
            "img": np.arange(2 * 4 * 3 * 3, dtype=np.uint8).reshape(2, 4, 3, 3),
            "x": np.asarray([1.5, -2.0], np.float32),
            "t": np.asarray(["naïve", None], dtype=object),
        },
        np.asarray([0, 3]),
        0,
    )
    assert [hex(v) for v in row_digests(rows, seed=42).tolist()] == ["0xf5c5d8fb670c2390", "0xfb4ec88721df33f9"]


def test_fixed_width_values_hash_as_their_bytes_would_as_text(monkeypatch):
    """Numbers and images take the matrix-product form, a block of rows at a time; text the running
    sums. Both are the same weighted sum of each value's bytes."""
    from pipeline.data import division

    monkeypatch.setattr(division, "HASH_BLOCK_BYTES", 100)  # blocks of 4 rows of 27 bytes
    images = np.random.default_rng(3).integers(32, 127, (11, 3, 3, 3), dtype=np.uint8)
    as_text = np.asarray([image.tobytes().decode("ascii") for image in images], dtype=object)
    assert np.array_equal(division._value_hashes(images, 11), division._value_hashes(as_text, 11))
