"""Columns of variable-length byte strings as numpy arrays, built and joined without a loop over rows.

A `Ragged` column is every row's bytes laid end to end (`data`) and each row's length
(`lengths`). Ingest's hot paths (the Example encoder, the fingerprint, the row hash of the
division) build their per-row bytes this way: a Python loop costs about a microsecond a row,
which on a table of 10 million rows is most of the ingest.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    def of(cls, rows: list[bytes]) -> Ragged:
        """Rows given as `bytes`."""
        return cls(np.frombuffer(b"".join(rows), np.uint8), np.fromiter(map(len, rows), np.int64, len(rows)))

    @classmethod
    def concat(cls, parts: list[Ragged]) -> Ragged:
        """The rows of every part, one part after the other."""
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.data for p in parts]), np.concatenate([p.lengths for p in parts]))

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

    def rows(self, first: int, last: int) -> Ragged:
        """Rows `first` to `last` (exclusive), sharing this one's bytes."""
        begin = int(self.lengths[:first].sum())
        lengths = self.lengths[first:last]
        return Ragged(self.data[begin : begin + int(lengths.sum())], lengths)

    def to_arrow(self) -> pa.LargeBinaryArray:
        """The rows as an Arrow binary array, sharing this one's bytes."""
        offsets = np.zeros(len(self.lengths) + 1, np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        return pa.Array.from_buffers(
            pa.large_binary(), len(self.lengths), [None, pa.py_buffer(offsets), pa.py_buffer(self.data)]
        )

    @classmethod
    def from_arrow(cls, array: pa.Array) -> Ragged:
        """An Arrow binary or string array's rows (nulls as empty rows), sharing its bytes where it can."""
        if array.null_count:
            array = pc.fill_null(array, b"" if pa.types.is_binary(array.type) else "")
        if not pa.types.is_large_binary(array.type) and not pa.types.is_large_string(array.type):
            array = array.cast(pa.large_binary())
        offsets = np.frombuffer(array.buffers()[1], np.int64, len(array) + 1, array.offset * 8)
        buffer = array.buffers()[2]
        data = np.frombuffer(buffer, np.uint8) if buffer is not None else np.zeros(0, np.uint8)
        return cls(data[offsets[0] : offsets[-1]], np.diff(offsets))

    def to_list(self) -> list[bytes]:
        """Each row as `bytes`."""
        flat = self.data.tobytes()
        ends = np.cumsum(self.lengths)
        return [flat[start:end] for start, end in zip((ends - self.lengths).tolist(), ends.tolist(), strict=True)]


def utf8(values: np.ndarray) -> Ragged:
    """An object column of `str` (None counts as '') as UTF-8 bytes."""
    return Ragged.from_arrow(pa.array(values, pa.large_string(), from_pandas=False))


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
    column's bytes are scattered to where its rows start in the output, `SLICE_BYTES` of
    output at a time (the index arrays take 8 bytes per byte moved).
    """
    rows = len(columns[0].lengths)
    widths = [column.width() for column in columns]
    if rows and all(width is not None for width in widths):
        return Ragged.fixed(
            _stacked([column.data.reshape(rows, width) for column, width in zip(columns, widths, strict=True)])
        )
    lengths = np.sum([column.lengths for column in columns], axis=0).astype(np.int64)
    out = np.empty(int(lengths.sum()), np.uint8)
    row_starts = np.cumsum(lengths) - lengths
    column_starts = [column.starts for column in columns]
    for first, last in _row_slices(lengths):
        place = row_starts[first:last]  # where each row's next column goes
        for column, width, starts in zip(columns, widths, column_starts, strict=True):
            if width is not None:
                source = column.data[first * width : last * width]
                out[(place[:, np.newaxis] + np.arange(width)).reshape(-1)] = source
            else:
                counts = column.lengths[first:last]
                if first < last and counts.any():
                    begin = starts[first]
                    source = column.data[begin : starts[last - 1] + counts[-1]]
                    out[np.arange(len(source)) + np.repeat(place - (starts[first:last] - begin), counts)] = source
            place = place + column.lengths[first:last]
    return Ragged(out, lengths)


def _stacked(tables: list[np.ndarray]) -> np.ndarray:
    """`np.hstack` of [rows, width] uint8 tables, each copied as one `width`-byte item a row.

    Copied byte by byte, narrow tables (a float's 4 bytes) cost numpy's loop overhead per byte.
    """
    rows, total = tables[0].shape[0], sum(table.shape[1] for table in tables)
    out = np.empty((rows, total), np.uint8)
    at = 0
    for table in tables:
        width = table.shape[1]
        if width:
            item = np.dtype((np.void, width))
            target = np.ndarray((rows,), item, buffer=out, offset=at, strides=(total,))
            target[...] = np.ascontiguousarray(table).view(item).reshape(rows)
            at += width
    return out


SLICE_BYTES = 1 << 20


def _row_slices(lengths: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive row ranges of about `SLICE_BYTES` each (a longer row is a range of its own)."""
    ends = np.cumsum(lengths)
    cuts = np.searchsorted(ends, np.arange(SLICE_BYTES, int(ends[-1]) if len(ends) else 0, SLICE_BYTES), side="left")
    bounds = sorted({0, *(cuts + 1).tolist(), len(lengths)})
    return [(first, last) for first, last in zip(bounds, bounds[1:], strict=False) if first < last]


def take(rows: Ragged | pa.LargeBinaryArray, order: np.ndarray) -> Ragged:
    """The rows in the given order (Arrow's gather of their bytes).

    Args:
        rows: The rows, or their `Ragged.to_arrow()` (taking several orders of the same rows).
        order: Which rows, in order (any may repeat or be left out).
    """
    if not len(order):
        return Ragged.empty()
    arrow = rows.to_arrow() if isinstance(rows, Ragged) else rows
    return Ragged.from_arrow(arrow.take(pa.array(np.asarray(order, np.int64))))
