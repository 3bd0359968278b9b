"""Parses a batch of a snapshot's `tf.train.Example` records into columns, without TensorFlow.

The inverse of `example_encoder`. TFDS's reader parses records one by one through
TensorFlow, about 30,000 rows a second for a table of a dozen columns, and every process
that reads a snapshot pays TensorFlow's import. Here a batch is parsed a map entry at a time
for all its records at once: the records' read positions move together, and each step reads
every record's next entry with numpy (tags, varints, keys, values gathered by position).

What is read is what the snapshot holds (`snapshot_builder`): one value per feature and for
the label, a float32, an int64 or bytes (UTF-8 text, or an image's PNG file, decoded with
Pillow). Entries may come in any order, as a protobuf map's may, and keys the snapshot does
not know are passed over, as TensorFlow's parser passes them over. Packed and unpacked
numbers are both read (protobuf readers must accept both).
"""

from __future__ import annotations

import io

import numpy as np

from pipeline.core.problem import FLOAT, IMAGE, INT, STRING, ProblemSpec
from pipeline.data.byte_columns import MAX_VARINT_BYTES, Ragged

BYTES_LIST, FLOAT_LIST, INT64_LIST = 0x0A, 0x12, 0x1A
_PNG_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


class BadRecordError(ValueError):
    """A record of the batch that is not an Example of the snapshot's features.

    Attributes:
        index: The record's position in the batch.
        reason: What is wrong with it.
    """

    def __init__(self, index: int, reason: str):
        super().__init__(f"record {index}: {reason}")
        self.index = index
        self.reason = reason


class _Column:
    """What one key's values are: how its entries are tagged and what they decode to."""

    def __init__(self, key: str, dtype: str, shape: tuple[int, ...] = ()):
        self.key = key
        self.encoded_key = key.encode("utf-8")
        self.dtype = dtype
        self.shape = tuple(shape)
        self.list_tag = {FLOAT: FLOAT_LIST, INT: INT64_LIST}.get(dtype, BYTES_LIST)

    def empty(self, rows: int) -> np.ndarray:
        if self.dtype == IMAGE:
            return np.zeros((rows, *self.shape), np.uint8)
        return np.empty(rows, {FLOAT: np.float32, INT: np.int64, STRING: object}[self.dtype])


def _columns(problem: ProblemSpec) -> list[_Column]:
    columns = [_Column(f.key, IMAGE if f.kind == IMAGE else f.dtype, f.shape) for f in problem.features]
    return [*columns, _Column(problem.label_key, INT if problem.is_classification else FLOAT)]


def decode_examples(records: Ragged, problem: ProblemSpec) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The records' feature columns and labels.

    Args:
        records: Serialized `tf.train.Example`s.
        problem: The snapshot's spec.

    Returns:
        ({feature key: values}, labels): floats as float32, whole numbers as int64, text as
        object arrays of `str`, images as uint8 [N, H, W, C]; labels as int64 class ids
        (classification) or float32 values.

    Raises:
        BadRecordError: naming the first record that is not an Example with exactly one value
            of the right type for every feature and the label.
    """
    rows = len(records.lengths)
    columns = _columns(problem)
    out = {column.key: column.empty(rows) for column in columns}
    seen = {column.key: np.zeros(rows, bool) for column in columns}
    by_key = {column.encoded_key: column for column in columns}
    data = np.concatenate([records.data, np.zeros(2 * MAX_VARINT_BYTES + 8, np.uint8)])  # gathers may read past
    reader = _Reader(data, records.data.tobytes())
    ends = records.starts + records.lengths
    everyone = np.arange(rows)
    position, features_end = reader.field(everyone, records.starts, ends, 0x0A, "Example.features")
    if (features_end != ends).any():
        reader.fail(everyone[features_end != ends][0], "more than Example.features")
    while True:
        active = np.flatnonzero(position < features_end)
        if not len(active):
            break
        entry_start, entry_end = reader.field(active, position[active], features_end[active], 0x0A, "a feature entry")
        key_start, key_end = reader.field(active, entry_start, entry_end, 0x0A, "a feature key")
        value_start, value_end = reader.field(active, key_end, entry_end, 0x12, "a feature value")
        if (value_end != entry_end).any():
            reader.fail(active[value_end != entry_end][0], "a feature entry has more than a key and a value")
        for key, which in reader.keys(key_start, key_end):
            column = by_key.get(key)
            if column is None:
                continue
            rows_now = active[which]
            if seen[column.key][rows_now].any():
                reader.fail(rows_now[seen[column.key][rows_now]][0], f"feature {column.key!r} twice")
            seen[column.key][rows_now] = True
            out[column.key][rows_now] = reader.value(column, rows_now, value_start[which], value_end[which])
        position[active] = entry_end
    for column in columns:
        if not seen[column.key].all():
            reader.fail(int(np.argmin(seen[column.key])), f"no feature {column.key!r}")
    labels = out.pop(problem.label_key)
    return out, labels


class _Reader:
    """Reads fields at many records' positions at once from one batch's bytes."""

    def __init__(self, data: np.ndarray, flat: bytes):
        self.data = data
        self.flat = flat

    @staticmethod
    def fail(row: int, reason: str):
        raise BadRecordError(int(row), reason)

    def varints(self, rows: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(value as uint64, bytes taken) of the varint at each position."""
        first = self.data[at]
        if not (first & 0x80).any():
            return first.astype(np.uint64), np.ones(len(at), np.int64)
        table = self.data[at[:, np.newaxis] + np.arange(MAX_VARINT_BYTES)]
        last = table < 0x80
        if not last.any(axis=1).all():
            self.fail(rows[~last.any(axis=1)][0], "a varint longer than 10 bytes")
        sizes = np.argmax(last, axis=1) + 1
        kept = np.arange(MAX_VARINT_BYTES)[np.newaxis, :] < sizes[:, np.newaxis]
        shifts = np.uint64(7) * np.arange(MAX_VARINT_BYTES, dtype=np.uint64)
        values = ((table & 0x7F).astype(np.uint64) << shifts) * kept
        return np.bitwise_or.reduce(values, axis=1), sizes

    def field(
        self, rows: np.ndarray, at: np.ndarray, limit: np.ndarray, tag: int, what: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of each length-delimited field with this tag at `at`, inside `limit`."""
        if len(at) and ((at >= limit) | (self.data[at] != tag)).any():
            self.fail(rows[(at >= limit) | (self.data[at] != tag)][0], f"{what} expected")
        length, size = self.varints(rows, at + 1)
        start = at + 1 + size
        end = start + length.astype(np.int64)
        if len(at) and ((end > limit) | (length > np.uint64(1 << 40))).any():
            self.fail(rows[(end > limit) | (length > np.uint64(1 << 40))][0], f"{what} runs past its end")
        return start, end

    def keys(self, start: np.ndarray, end: np.ndarray):
        """Yields (key bytes, which of the positions hold it)."""
        lengths = end - start
        if len(start) and (lengths == lengths[0]).all():
            table = self.data[start[:, np.newaxis] + np.arange(lengths[0])]
            if (table == table[0]).all():
                yield table[0].tobytes(), np.arange(len(start))
                return
        found: dict[bytes, list[int]] = {}
        for index, (first, last) in enumerate(zip(start.tolist(), end.tolist(), strict=True)):
            found.setdefault(self.flat[first:last], []).append(index)
        for key, which in found.items():
            yield key, np.asarray(which)

    def value(self, column: _Column, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """The one value of each Feature message between start and end."""
        kind = {BYTES_LIST: "bytes_list", FLOAT_LIST: "float_list", INT64_LIST: "int64_list"}[column.list_tag]
        list_start, list_end = self.field(rows, start, end, column.list_tag, f"{column.key!r}: a {kind}")
        if (list_end != end).any():
            self.fail(rows[list_end != end][0], f"{column.key!r}: more than one list")
        if column.list_tag == FLOAT_LIST:
            return self._floats(column, rows, list_start, list_end)
        if column.list_tag == INT64_LIST:
            return self._ints(column, rows, list_start, list_end)
        value_start, value_end = self.field(rows, list_start, list_end, 0x0A, f"{column.key!r}: a value")
        if (value_end != list_end).any():
            self.fail(rows[value_end != list_end][0], f"{column.key!r}: more than one value")
        if column.dtype == IMAGE:
            return self._images(column, rows, value_start, value_end)
        texts = np.empty(len(rows), object)
        pieces = [self.flat[a:b] for a, b in zip(value_start.tolist(), value_end.tolist(), strict=True)]
        try:
            texts[:] = [piece.decode("utf-8") for piece in pieces]
        except UnicodeDecodeError:
            for row, piece in zip(rows, pieces, strict=True):
                try:
                    piece.decode("utf-8")
                except UnicodeDecodeError as err:
                    self.fail(row, f"{column.key!r}: text that is not UTF-8 ({err})")
        return texts

    def _floats(self, column: _Column, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        packed = (self.data[start] == 0x0A) & (self.data[start + 1] == 4) & (end - start == 6)
        unpacked = (self.data[start] == 0x0D) & (end - start == 5)
        if not (packed | unpacked).all():
            self.fail(rows[~(packed | unpacked)][0], f"{column.key!r}: not one float")
        at = np.where(packed, start + 2, start + 1)
        return np.ascontiguousarray(self.data[at[:, np.newaxis] + np.arange(4)]).view("<f4").reshape(-1)

    def _ints(self, column: _Column, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        packed = self.data[start] == 0x0A
        unpacked = self.data[start] == 0x08
        if not (packed | unpacked).all():
            self.fail(rows[~(packed | unpacked)][0], f"{column.key!r}: not an int64 list")
        at = start + 1
        if packed.any():
            inner, size = self.varints(rows, at)
            at = np.where(packed, at + size, at)
            inner_end = np.where(packed, at + inner.astype(np.int64), end)
        else:
            inner_end = end
        values, size = self.varints(rows, at)
        if ((at + size != inner_end) | (inner_end != end)).any():
            self.fail(rows[(at + size != inner_end) | (inner_end != end)][0], f"{column.key!r}: not one int64")
        return values.view(np.int64)

    def _images(self, column: _Column, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        from PIL import Image

        images = np.empty((len(rows), *column.shape), np.uint8)
        for index, (first, last) in enumerate(zip(start.tolist(), end.tolist(), strict=True)):
            try:
                with Image.open(io.BytesIO(self.flat[first:last]), formats=["PNG"]) as image:
                    channels = _PNG_CHANNELS.get(image.mode)
                    pixels = np.asarray(image)
            except (OSError, ValueError, SyntaxError) as err:
                self.fail(rows[index], f"{column.key!r}: not a PNG image ({err})")
            shape = (*pixels.shape[:2], channels)
            if channels is None or shape != column.shape:
                self.fail(
                    rows[index], f"{column.key!r}: a {image.mode} image of {pixels.shape[:2]}, not {column.shape}"
                )
            images[index] = pixels.reshape(shape)
        return images
