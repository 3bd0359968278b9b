"""Serializes a chunk of rows as `tf.train.Example` records, a column at a time.

TFDS serializes one example at a time through Python protobuf objects (about 100 µs a row for
a table of a dozen columns). A row of scalars has a simple wire form, so this module writes it
with numpy, column by column: each column's entries are built for the whole chunk, and a row's
record is its entries joined. The records parse to the same `tf.train.Example` TFDS builds
(`tests/pipeline/data/test_example_encoder.py` compares them). The order of map entries is the
features' order; TFDS's own order is that of the protobuf runtime's hash map, which differs
from process to process, so no reader depends on it.

Images are not scalars: a chunk with an image column is serialized by TFDS, row by row.

Wire form of one scalar entry (proto3; `len` is a varint):
    Features.feature entry  0a len { 0a len <key>  12 len Feature }
    Feature                  float_list: 12 len { 0a 04 <float32> }
                             int64_list: 1a len { 0a len <varint> }
                             bytes_list: 0a len { 0a len <bytes> }
"""

from __future__ import annotations

import numpy as np

from pipeline.core.problem import FLOAT, IMAGE, INT, ProblemSpec

_MAX_VARINT_BYTES = 10


def varint(value: int) -> bytes:
    """The protobuf varint of a non-negative int."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SHORT_VARINTS = [varint(n) for n in range(1 << 14)]  # every length below 16 KiB, precomputed


def _length(payload: bytes) -> bytes:
    size = len(payload)
    return _SHORT_VARINTS[size] if size < len(_SHORT_VARINTS) else varint(size)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _length(payload) + payload


def _entry(key: bytes, feature: bytes) -> bytes:
    return _field(0x0A, _field(0x0A, key) + _field(0x12, feature))


def _float_entries(key: bytes, values: np.ndarray) -> list[bytes]:
    """Every row's entry of a float32 scalar: a fixed prefix and the value's 4 bytes."""
    prefix = _entry(key, _field(0x12, _field(0x0A, b"\0" * 4)))[:-4]  # lengths do not depend on the value
    table = np.empty((len(values), len(prefix) + 4), np.uint8)
    table[:, : len(prefix)] = np.frombuffer(prefix, np.uint8)
    table[:, len(prefix) :] = np.ascontiguousarray(values, "<f4").view(np.uint8).reshape(-1, 4)
    width = table.shape[1]
    flat = table.tobytes()
    return [flat[start : start + width] for start in range(0, len(flat), width)]


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each int64's varint (two's complement, as protobuf writes negatives): a [N, 10] byte table and lengths."""
    unsigned = np.ascontiguousarray(values, np.int64).view(np.uint64)
    groups = np.stack([(unsigned >> np.uint64(7 * i)) & np.uint64(0x7F) for i in range(_MAX_VARINT_BYTES)], 1)
    remaining = np.stack([unsigned >> np.uint64(7 * i) for i in range(1, _MAX_VARINT_BYTES + 1)], 1)
    lengths = 1 + np.count_nonzero(remaining, axis=1)
    more = np.arange(_MAX_VARINT_BYTES)[np.newaxis, :] < (lengths[:, np.newaxis] - 1)
    return (groups | (more.astype(np.uint64) << np.uint64(7))).astype(np.uint8), lengths


def _int_entries(key: bytes, values: np.ndarray) -> list[bytes]:
    """Every row's entry of an int64 scalar (varints are 1 to 10 bytes, so a prefix per length)."""
    table, lengths = _varints(values)
    prefixes = {n: _entry(key, _field(0x1A, _field(0x0A, b"\0" * n)))[:-n] for n in np.unique(lengths).tolist()}
    flat = table.tobytes()
    return [
        prefixes[n] + flat[row * _MAX_VARINT_BYTES : row * _MAX_VARINT_BYTES + n]
        for row, n in enumerate(lengths.tolist())
    ]


def _bytes_entries(key: bytes, values: np.ndarray) -> list[bytes]:
    key_field = _field(0x0A, key)
    entries = []
    for value in values:
        encoded = value.encode("utf-8")
        bytes_list = b"\x0a" + _length(encoded) + encoded
        feature = b"\x0a" + _length(bytes_list) + bytes_list
        entry = key_field + b"\x12" + _length(feature) + feature
        entries.append(b"\x0a" + _length(entry) + entry)
    return entries


def _column_entries(key: str, dtype: str, values: np.ndarray) -> list[bytes]:
    encoded = key.encode("utf-8")
    if dtype == FLOAT:
        return _float_entries(encoded, values)
    if dtype == INT:
        return _int_entries(encoded, values)
    return _bytes_entries(encoded, values)


def can_encode(problem: ProblemSpec) -> bool:
    """Whether every feature is a scalar this module writes (no images)."""
    return all(f.kind != IMAGE for f in problem.features)


def serialize_chunk(problem: ProblemSpec, features: dict[str, np.ndarray], labels: np.ndarray) -> list[bytes]:
    """The serialized `tf.train.Example` of each row of a chunk of scalar features.

    Args:
        problem: The spec (feature dtypes; the label is a class id or a float32 value).
        features: {feature key: values} as `problem_inference.prepare_columns` gives them.
        labels: Class ids (int64) or values (float32).

    Returns:
        One record per row, in row order.

    Raises:
        ValueError: for an image feature (`can_encode`), or a class id outside the classes.
    """
    if not can_encode(problem):
        raise ValueError("serialize_chunk writes scalar features only; images go through TFDS")
    columns = [_column_entries(f.key, f.dtype, features[f.key]) for f in problem.features]
    if problem.is_classification:
        if len(labels) and (labels.min() < 0 or labels.max() >= problem.num_classes):
            raise ValueError(f"class ids must be in 0..{problem.num_classes - 1}")
        columns.append(_int_entries(problem.label_key.encode("utf-8"), labels))
    else:
        columns.append(_float_entries(problem.label_key.encode("utf-8"), labels))
    records = []
    for entries in zip(*columns, strict=True):
        body = b"".join(entries)
        records.append(b"\x0a" + _length(body) + body)
    return records
