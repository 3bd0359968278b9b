"""Serializes a chunk of rows as `tf.train.Example` records, a column at a time.

TFDS serializes one example at a time through Python protobuf objects (about 100 µs a row for
a table of a dozen columns). A row of scalars has a simple wire form, so this module writes it
with numpy, column by column: each column's entries are built for the whole chunk as
`byte_columns.Ragged` pieces, and the rows' records are the pieces joined row by row, with no
Python loop over the rows. The records parse to the same `tf.train.Example` TFDS builds
(`tests/pipeline/data/test_example_encoder.py` compares them). The order of map entries is the
features' order; TFDS's own order is that of the protobuf runtime's hash map, which differs
from process to process, so no reader depends on it.

An image is one bytes entry: its PNG file, the bytes TFDS's `Image` feature writes through
TensorFlow (`png.encode_png` writes them without TensorFlow).

Wire form of one scalar entry (proto3; `len` is a varint):
    Features.feature entry  0a len { 0a len <key>  12 len Feature }
    Feature                  float_list: 12 len { 0a 04 <float32> }
                             int64_list: 1a len { 0a len <varint> }
                             bytes_list: 0a len { 0a len <bytes> }
"""

from __future__ import annotations

import numpy as np

from pipeline.core.problem import FLOAT, IMAGE, INT, FeatureSpec, ProblemSpec
from pipeline.data.byte_columns import Ragged, compact, join_rows, utf8, varint_lengths, varints
from pipeline.data.png import encode_png


def varint(value: int) -> bytes:
    """The protobuf varint of a non-negative int."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + varint(len(payload)) + payload


def _entry(key: bytes, feature: bytes) -> bytes:
    return _field(0x0A, _field(0x0A, key) + _field(0x12, feature))


def _float_pieces(key: bytes, values: np.ndarray) -> list[Ragged]:
    """A float32 scalar's entries: a prefix that does not depend on the value, and its 4 bytes."""
    prefix = _entry(key, _field(0x12, _field(0x0A, b"\0" * 4)))[:-4]
    value_bytes = np.ascontiguousarray(values, "<f4").view(np.uint8).reshape(-1, 4)
    return [Ragged.constant(prefix, len(values)), Ragged.fixed(value_bytes)]


def _int_pieces(key: bytes, values: np.ndarray) -> list[Ragged]:
    """An int64 scalar's entries: a prefix per varint length (1 to 10 bytes), and the varint."""
    encoded = varints(values)
    prefixes = {n: _entry(key, _field(0x1A, _field(0x0A, b"\0" * n)))[:-n] for n in range(1, 11)}
    by_length = [prefixes[n] for n in range(1, 11)]
    width = max(map(len, by_length))
    table = np.zeros((10, width), np.uint8)
    for row, prefix in enumerate(by_length):
        table[row, : len(prefix)] = np.frombuffer(prefix, np.uint8)
    prefix_lengths = np.asarray([len(p) for p in by_length], np.int64)
    which = encoded.lengths - 1
    return [compact(table[which], prefix_lengths[which]), encoded]


def _bytes_pieces(key: bytes, text: Ragged) -> list[Ragged]:
    """A bytes scalar's entries (UTF-8 text, a PNG file): the nested lengths as varints, and the bytes."""
    rows = len(text.lengths)
    bytes_list = 1 + varint_lengths(text.lengths) + text.lengths
    feature = 1 + varint_lengths(bytes_list) + bytes_list
    key_field = _field(0x0A, key)
    entry = len(key_field) + 1 + varint_lengths(feature) + feature
    return [
        Ragged.constant(b"\x0a", rows),
        varints(entry),
        Ragged.constant(key_field + b"\x12", rows),
        varints(feature),
        Ragged.constant(b"\x0a", rows),
        varints(bytes_list),
        Ragged.constant(b"\x0a", rows),
        varints(text.lengths),
        text,
    ]


def _column_pieces(feature: FeatureSpec, values: np.ndarray) -> list[Ragged]:
    encoded = feature.key.encode("utf-8")
    if feature.kind == IMAGE:
        if values.shape[1:] != tuple(feature.shape):
            raise ValueError(f"feature {feature.key!r}: images of shape {values.shape[1:]}, not {tuple(feature.shape)}")
        return _bytes_pieces(encoded, encode_png(values))
    if feature.dtype == FLOAT:
        return _float_pieces(encoded, values)
    if feature.dtype == INT:
        return _int_pieces(encoded, values)
    return _bytes_pieces(encoded, utf8(values))


def serialize_rows(problem: ProblemSpec, features: dict[str, np.ndarray], labels: np.ndarray) -> Ragged:
    """The serialized `tf.train.Example` of each row of a chunk, as one `Ragged`.

    Args:
        problem: The spec (feature kinds, dtypes and image shapes; the label is a class id or a
            float32 value).
        features: {feature key: values} as `problem_inference.prepare_columns` gives them;
            images as uint8 [rows, height, width, channels].
        labels: Class ids (int64) or values (float32).

    Returns:
        One record per row, in row order.

    Raises:
        ValueError: for images of another shape than the spec's, or a class id outside the classes.
    """
    pieces = [piece for f in problem.features for piece in _column_pieces(f, features[f.key])]
    label_key = problem.label_key.encode("utf-8")
    if problem.is_classification:
        if len(labels) and (labels.min() < 0 or labels.max() >= problem.num_classes):
            raise ValueError(f"class ids must be in 0..{problem.num_classes - 1}")
        pieces += _int_pieces(label_key, labels)
    else:
        pieces += _float_pieces(label_key, labels)
    body = join_rows(pieces)
    return join_rows([Ragged.constant(b"\x0a", len(labels)), varints(body.lengths), body])
