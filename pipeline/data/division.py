"""Divides a one-split source into train/validation/test in bounded memory.

Rows are ranked by (seeded content hash, position) and the ranks are cut at the configured
shares, so the split is deterministic, identical rows land in the same split, and rows added
later leave most earlier rows where they were. A first pass writes each row's hash to a file
(8 bytes a row) and counts the hashes by their top 16 bits; the row at each cut is then found
among the rows of one bucket. Any chunk of rows is then routed by comparing its rows'
(hash, position) with the cuts (`split_of`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.data.byte_columns import utf8
from pipeline.data.problem_inference import PreparedSplit

DIGEST_BUCKET_BITS = 16
DIGEST_READ_ROWS = 1 << 20
HASH_BLOCK_BYTES = 1 << 20  # value bytes hashed at once (8x that in uint64 temporaries)
Cut = tuple[int, int] | None  # (hash, position) of the first row past a cut; None: no row is


def row_digests(part: PreparedSplit, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each row's content: its features (in key order) and label.

    Each column's values hash as their bytes (numbers and images as their native bytes, text
    as UTF-8) with their length; a row's digest mixes its columns' hashes in turn. Everything
    is computed a column at a time, with no Python loop over the rows.
    """
    count = len(part.labels)
    digests = np.full(count, _mix(np.asarray([seed], np.int64).view(np.uint64) ^ _GOLDEN)[0], np.uint64)
    columns = [part.features[key] for key in sorted(part.features)] + [part.labels]
    for values in columns:
        digests = _mix(digests * _MULTIPLIER + _value_hashes(values, count))
    return digests


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MULTIPLIER = np.uint64(0xD6E8FEB86659FD93)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 in which every input bit reaches every output bit."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _value_hashes(values: np.ndarray, count: int) -> np.ndarray:
    """A 64-bit hash of each value's bytes and length: the sum of (byte + 1) times its position's weight."""
    if values.dtype != object:
        return _fixed_width_hashes(np.ascontiguousarray(values).reshape(count, -1).view(np.uint8))
    rows = utf8(values)
    if not len(rows.data):
        return _mix(rows.lengths.astype(np.uint64) + _GOLDEN)
    position = np.arange(len(rows.data)) - np.repeat(rows.starts, rows.lengths)
    weights = _weights(int(rows.lengths.max()))
    sums = np.concatenate([np.zeros(1, np.uint64), np.cumsum((rows.data.astype(np.uint64) + 1) * weights[position])])
    ends = np.cumsum(rows.lengths)
    return _mix((sums[ends] - sums[ends - rows.lengths]) ^ _mix(rows.lengths.astype(np.uint64) + _GOLDEN))


def _fixed_width_hashes(rows: np.ndarray) -> np.ndarray:
    """`_value_hashes` of values that all take the same bytes (numbers, images): uint8 [count, width].

    The weighted sum is a matrix product, taken a block of rows at a time: for images this is
    about 50 times faster than the ragged form's running sums, and holds no per-byte temporaries
    beyond one block (uint64 arithmetic wraps the same way in both).
    """
    count, width = rows.shape
    weights = _weights(width)
    sums = np.empty(count, np.uint64)
    block = max(1, HASH_BLOCK_BYTES // max(1, width))
    for start in range(0, count, block):
        sums[start : start + block] = rows[start : start + block].astype(np.uint64) @ weights
    sums += weights.sum(dtype=np.uint64)  # the + 1 of every byte
    return _mix(sums ^ _mix(np.full(count, width, np.uint64) + _GOLDEN))


def _weights(length: int) -> np.ndarray:
    """Each byte position's odd 64-bit weight, for values of up to `length` bytes."""
    return _mix(np.arange(1, length + 1, dtype=np.uint64)) | np.uint64(1)


def divide(chunks: Iterable[PreparedSplit], fractions: list[float], seed: int, digest_file: Path) -> list[Cut]:
    """Hashes every row into `digest_file` and finds the two cuts (see the module doc).

    Args:
        chunks: The source's one split, as chunks in source order.
        fractions: Shares of train, validation and test (summing to 1).
        seed: Seeds the row hash.
        digest_file: Where the row hashes go (8 bytes a row); `split_of` reads them back.

    Returns:
        The train/validation and validation/test cuts.
    """
    buckets = np.zeros(1 << DIGEST_BUCKET_BITS, np.int64)
    count = 0
    with open(digest_file, "wb") as out:
        for chunk in chunks:
            digests = row_digests(chunk, seed)
            digests.tofile(out)
            top_bits = (digests >> np.uint64(64 - DIGEST_BUCKET_BITS)).astype(np.int64)
            buckets += np.bincount(top_bits, minlength=len(buckets))
            count += len(digests)
    train_end = round(count * fractions[0])
    validation_end = train_end + round(count * fractions[1])
    return [_row_at_rank(digest_file, buckets, rank) for rank in (train_end, validation_end)]


def _row_at_rank(digest_file: Path, buckets: np.ndarray, rank: int) -> Cut:
    """(hash, position) of the row at `rank` in (hash, position) order; None past the last row."""
    ends = np.cumsum(buckets)
    if rank >= ends[-1]:
        return None
    bucket = int(np.searchsorted(ends, rank, side="right"))
    below = int(ends[bucket] - buckets[bucket])
    shift = np.uint64(64 - DIGEST_BUCKET_BITS)
    found_digests, found_rows = [], []
    start = 0
    with open(digest_file, "rb") as digests_in:
        while len(digests := np.fromfile(digests_in, np.uint64, count=DIGEST_READ_ROWS)):
            (inside,) = np.nonzero((digests >> shift) == bucket)
            found_digests.append(digests[inside])
            found_rows.append(inside + start)
            start += len(digests)
    digests, positions = np.concatenate(found_digests), np.concatenate(found_rows)
    order = np.lexsort((positions, digests))
    at = order[rank - below]
    return int(digests[at]), int(positions[at])


def split_of(digest_file: Path, start: int, count: int, cuts: list[Cut]) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) for rows `start`..`start + count` of the divided split.

    A row's split is how many cuts its (hash, position) reaches.
    """
    digests = np.fromfile(digest_file, np.uint64, count=count, offset=start * 8)
    positions = np.arange(start, start + count)
    split = np.zeros(count, np.int8)
    for cut in cuts:
        if cut is None:
            continue
        digest, position = np.uint64(cut[0]), cut[1]
        reached = (digests > digest) | ((digests == digest) & (positions >= position))
        split += reached.astype(np.int8)
    return split
