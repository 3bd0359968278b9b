"""Divides a one-split source into train/validation/test in bounded memory.

Rows are ranked by (seeded content hash, position) and the ranks are cut at the configured
shares, so the split is deterministic, identical rows land in the same split, and rows added
later leave most earlier rows where they were. A first pass writes each row's hash to a file
(8 bytes a row) and counts the hashes by their top 16 bits; the row at each cut is then found
among the rows of one bucket. Any chunk of rows is then routed by comparing its rows'
(hash, position) with the cuts (`split_of`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.data.problem_inference import PreparedSplit

DIGEST_BUCKET_BITS = 16
DIGEST_READ_ROWS = 1 << 20
Cut = tuple[int, int] | None  # (hash, position) of the first row past a cut; None: no row is


def row_digests(part: PreparedSplit, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each row's content: its features (in key order) and label, as bytes.

    Numbers hash as their native bytes, text as UTF-8 and a NUL. A row's bytes are joined and
    hashed once (the same digest as feeding them one by one).
    """
    key = seed.to_bytes(8, "little", signed=True)
    count = len(part.labels)
    columns = [_row_bytes(part.features[k], count) for k in sorted(part.features)]
    columns.append(_row_bytes(part.labels, count))
    blake2b = hashlib.blake2b
    return np.fromiter(
        (
            int.from_bytes(blake2b(b"".join(row), key=key, digest_size=8).digest(), "little")
            for row in zip(*columns, strict=True)
        ),
        np.uint64,
        count,
    )


def _row_bytes(values: np.ndarray, count: int) -> list[bytes]:
    """Each row's value as the bytes the row hash takes."""
    if values.dtype == object:
        return [value.encode() + b"\x00" for value in values]
    flat = np.ascontiguousarray(values).tobytes()
    width = len(flat) // count if count else 0
    return [flat[start : start + width] for start in range(0, len(flat), width)] if width else []


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
