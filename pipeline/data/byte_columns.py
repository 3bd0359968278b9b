"""Columns of variable-length byte strings as numpy arrays, built and joined without a loop over rows.

A `Ragged` column is every row's bytes laid end to end (`data`) and each row's length
(`lengths`). Ingest's hot paths (the Example encoder, the fingerprint, the row hash of the
division) build their per-row bytes this way: a Python loop costs about a microsecond a row,
which on a table of 10 million rows is most of the ingest.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MAX_VARINT_BYTES = 10


@dataclasses.dataclass(frozen=True)
class Ragged:
    """Rows of bytes of any length.

    Attributes:
        data: uint8, the rows' bytes one after the other.
        lengths: int64, each row's length.
    """

    data: np.ndarray
    lengths: np.ndarray

    @classmethod
    def empty(cls) -> Ragged:
        return cls(np.zeros(0, np.uint8), np.zeros(0, np.int64))

    @classmethod
    def fixed(cls, table: np.ndarray) -> Ragged:
        """Rows of one width from a [rows, width] uint8 table."""
        rows, width = table.shape
        return cls(np.ascontiguousarray(table).reshape(-1), np.full(rows, width, np.int64))

    @classmethod
    def constant(cls, value: bytes, rows: int) -> Ragged:
        """The same bytes on every row."""
        return cls.fixed(np.broadcast_to(np.frombuffer(value, np.uint8), (rows, len(value))))

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths

    def width(self) -> int | None:
        """The rows' common length, or None where lengths differ (or there are no rows)."""
        if not len(self.lengths) or (self.lengths != self.lengths[0]).any():
            return None
        return int(self.lengths[0])

    def to_list(self) -> list[bytes]:
        """Each row as `bytes`."""
        flat = self.data.tobytes()
        ends = np.cumsum(self.lengths)
        return [flat[start:end] for start, end in zip((ends - self.lengths).tolist(), ends.tolist(), strict=True)]


def utf8(values: np.ndarray) -> Ragged:
    """An object column of `str` (None counts as '') as UTF-8 bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.fill_null(pa.array(values, pa.large_string(), from_pandas=False), "")
    offsets = np.frombuffer(encoded.buffers()[1], np.int64, len(encoded) + 1, encoded.offset * 8)
    data = np.frombuffer(encoded.buffers()[2], np.uint8) if encoded.buffers()[2] is not None else np.zeros(0, np.uint8)
    return Ragged(data[offsets[0] : offsets[-1]], np.diff(offsets))


def varints(values: np.ndarray) -> Ragged:
    """Each int64 as a protobuf varint (two's complement for negatives, as protobuf writes them)."""
    unsigned = np.ascontiguousarray(values, np.int64).view(np.uint64)
    lengths = varint_lengths(unsigned)
    width = int(lengths.max()) if len(lengths) else 1
    shifts = np.uint64(7) * np.arange(width, dtype=np.uint64)
    table = ((unsigned[:, np.newaxis] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    table[np.arange(width)[np.newaxis, :] < (lengths[:, np.newaxis] - 1)] |= 0x80  # more bytes follow
    return compact(table, lengths)


def varint_lengths(values: np.ndarray) -> np.ndarray:
    """How many bytes each int64's varint takes (1 to 10; 10 for negatives)."""
    unsigned = np.asarray(values, np.int64).view(np.uint64)
    lengths = np.ones(len(unsigned), np.int64)
    for step in range(1, MAX_VARINT_BYTES):
        lengths += unsigned >= np.uint64(1 << (7 * step))
    return lengths


def compact(table: np.ndarray, lengths: np.ndarray) -> Ragged:
    """The first `lengths[i]` bytes of each row of a [rows, width] table."""
    if len(lengths) and (lengths == table.shape[1]).all():
        return Ragged.fixed(table)
    keep = np.arange(table.shape[1])[np.newaxis, :] < lengths[:, np.newaxis]
    return Ragged(table[keep], lengths.astype(np.int64))


def join_rows(columns: list[Ragged]) -> Ragged:
    """Each row's bytes of every column, one column after the other.

    Columns of one width each are stacked as a table (no index arithmetic); otherwise every
    column's bytes are scattered to where its rows start in the output.
    """
    rows = len(columns[0].lengths)
    widths = [column.width() for column in columns]
    if rows and all(width is not None for width in widths):
        tables = [column.data.reshape(rows, width) for column, width in zip(columns, widths, strict=True)]
        return Ragged.fixed(np.hstack(tables))
    lengths = np.sum([column.lengths for column in columns], axis=0).astype(np.int64)
    out = np.empty(int(lengths.sum()), np.uint8)
    place = np.cumsum(lengths) - lengths  # where each row's next column goes
    for column, width in zip(columns, widths, strict=True):
        if width is not None:
            out[(place[:, np.newaxis] + np.arange(width)).reshape(-1)] = column.data
        elif len(column.data):
            shift = np.repeat(place - column.starts, column.lengths)
            out[np.arange(len(column.data)) + shift] = column.data
        place = place + column.lengths
    return Ragged(out, lengths)


def take(rows: Ragged, order: np.ndarray) -> Ragged:
    """The rows in the given order (a gather of their bytes)."""
    lengths = rows.lengths[order]
    if not len(lengths):
        return Ragged.empty()
    starts = rows.starts[order]
    placed = np.cumsum(lengths) - lengths
    source = np.arange(int(lengths.sum())) + np.repeat(starts - placed, lengths)
    return Ragged(rows.data[source], lengths)
