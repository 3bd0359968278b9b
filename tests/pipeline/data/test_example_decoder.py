"""The column-wise Example decoder reads what TFDS's decoder reads, from our records and from TensorFlow's."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.problem import BINARY, IMAGE, MULTICLASS, REGRESSION, UINT8, FeatureSpec, ProblemSpec
from pipeline.data.byte_columns import Ragged
from pipeline.data.example_decoder import BadRecordError, decode_examples
from pipeline.data.example_encoder import serialize_rows
from pipeline.data.snapshot_builder import features_dict
from tests.pipeline.data.test_example_encoder import _chunk
from tests.pipeline.data.test_example_encoder import _problem as _table_problem


def _image_problem(channels):
    features = (FeatureSpec("pixels", "pixels", IMAGE, UINT8, (9, 5, channels)),)
    return ProblemSpec(MULTICLASS, "label", "label", features, ("a", "b", "c"))


def _images(rows, channels, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (rows, 9, 5, channels), dtype=np.uint8)


def _labels(task, rows, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, rows) if task == BINARY else rng.normal(0, 1, rows).astype(np.float32)


def _tfds_decoded(problem, records):
    """What TFDS's own decoder gives for each record, stacked into columns."""
    features = features_dict(problem)
    rows = [{key: value.numpy() for key, value in features.deserialize_example(record).items()} for record in records]
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def _assert_same(problem, decoded, labels, expected):
    for feature in problem.features:
        want = expected[feature.key]
        if want.dtype.kind == "S":
            want = np.asarray([value.decode("utf-8") for value in want], object)
        assert decoded[feature.key].dtype == want.dtype, feature.key
        assert np.array_equal(decoded[feature.key], want, equal_nan=want.dtype.kind == "f"), feature.key
    assert np.array_equal(labels, expected[problem.label_key])
    assert labels.dtype == (np.int64 if problem.is_classification else np.float32)


@pytest.mark.parametrize("task", [BINARY, REGRESSION])
def test_table_records_decode_to_what_tfds_decodes(task):
    """NaN and infinities, int64's extremes, empty and non-ASCII text, long varints."""
    problem, features, labels = _table_problem(task), _chunk(), _labels(task, 300)
    records = serialize_rows(problem, features, labels)
    decoded, decoded_labels = decode_examples(records, problem)
    _assert_same(problem, decoded, decoded_labels, _tfds_decoded(problem, records.to_list()))
    assert np.array_equal(decoded["rooms"], features["rooms"])
    assert decoded["state"].tolist() == features["state"].tolist()


@pytest.mark.parametrize("channels", [1, 3, 4])  # TFDS reads no 2-channel images
def test_image_records_decode_to_what_tfds_decodes(channels):
    problem, images = _image_problem(channels), _images(40, channels)
    records = serialize_rows(problem, {"pixels": images}, np.arange(40) % 3)
    decoded, labels = decode_examples(records, problem)
    _assert_same(problem, decoded, labels, _tfds_decoded(problem, records.to_list()))
    assert np.array_equal(decoded["pixels"], images)


def _tf_example(entries):
    """An Example serialized by TensorFlow's protobuf runtime, map entries in the given order."""
    example = tf.train.Example()
    for key, value in entries:
        feature = example.features.feature[key]
        if isinstance(value, float):
            feature.float_list.value.append(value)
        elif isinstance(value, int):
            feature.int64_list.value.append(value)
        else:
            feature.bytes_list.value.append(value)
    return example.SerializeToString()


def test_any_entry_order_unknown_keys_and_unpacked_numbers_are_read():
    """A protobuf map has no order, readers skip keys they do not know, and must read unpacked numbers."""
    problem = _table_problem(BINARY)
    values = [("income", 2.5), ("rooms", -7), ("state", b"CA"), ("note", "naïve".encode()), ("y", 1)]
    shuffled = [values[4], ("extra", b"skipped"), values[2], values[0], values[3], values[1]]
    records = [_tf_example(values), _tf_example(shuffled), _unpacked(problem, values)]
    decoded, labels = decode_examples(Ragged.of(records), problem)
    assert decoded["income"].tolist() == [2.5] * 3 and decoded["rooms"].tolist() == [-7] * 3
    assert decoded["state"].tolist() == ["CA"] * 3 and decoded["note"].tolist() == ["naïve"] * 3
    assert labels.tolist() == [1, 1, 1]
    assert _unpacked(problem, values) != _tf_example(values)  # TensorFlow writes numbers packed


def _unpacked(problem, values):
    """The record with its numbers unpacked (each value with its own tag), as proto2 writers write them."""
    from pipeline.data.example_encoder import _entry, _field, varint

    def entry(key, value):
        if isinstance(value, float):
            return _entry(key.encode(), _field(0x12, b"\x0d" + np.float32(value).tobytes()))
        if isinstance(value, int):
            return _entry(key.encode(), _field(0x1A, b"\x08" + varint(value & (2**64 - 1))))
        return _entry(key.encode(), _field(0x0A, _field(0x0A, value)))

    return _field(0x0A, b"".join(entry(key, value) for key, value in values))


@pytest.mark.parametrize(
    "record, reason",
    [
        (b"not an example", r"Example.features expected"),
        (_tf_example([("income", 1.0), ("rooms", 1), ("state", b"a"), ("note", b"b")]), r"no feature 'y'"),
        (
            _tf_example([("income", 1), ("rooms", 1), ("state", b"a"), ("note", b"b"), ("y", 0)]),
            r"'income': a float_list",
        ),
        (_tf_example([("income", 1.0), ("rooms", 1), ("state", b"\xff"), ("note", b"b"), ("y", 0)]), r"not UTF-8"),
        (b"\x0a\x05\x0a\x03\x0a\x01", r"runs past its end"),
    ],
    ids=["garbage", "missing-label", "wrong-type", "bad-utf8", "cut"],
)
def test_a_record_that_is_not_an_example_of_the_features_is_named(record, reason):
    problem = _table_problem(BINARY)
    good = serialize_rows(problem, _chunk(rows=8), np.zeros(8, np.int64)).to_list()
    with pytest.raises(BadRecordError, match=reason) as raised:
        decode_examples(Ragged.of([*good[:2], record, good[2]]), problem)
    assert raised.value.index == 2


def test_two_values_and_a_wrong_image_are_named():
    problem = _table_problem(BINARY)
    example = tf.train.Example.FromString(serialize_rows(problem, _chunk(rows=8), np.ones(8, np.int64)).to_list()[0])
    example.features.feature["income"].float_list.value.append(3.0)
    with pytest.raises(BadRecordError, match=r"'income': not one float"):
        decode_examples(Ragged.of([example.SerializeToString()]), problem)
    image_problem = _image_problem(3)
    record = serialize_rows(_image_problem(1), {"pixels": _images(1, 1)}, np.asarray([0])).to_list()[0]
    with pytest.raises(BadRecordError, match=r"'pixels': a L image of \(9, 5\), not \(9, 5, 3\)"):
        decode_examples(Ragged.of([record]), image_problem)
    broken = _tf_example([("pixels", b"\x89PNG not really"), ("label", 0)])
    with pytest.raises(BadRecordError, match=r"'pixels': not a PNG image"):
        decode_examples(Ragged.of([broken]), image_problem)


def test_no_records_decode_to_empty_columns():
    problem = _table_problem(REGRESSION)
    decoded, labels = decode_examples(Ragged.empty(), problem)
    assert {key: len(values) for key, values in decoded.items()} == {"income": 0, "rooms": 0, "state": 0, "note": 0}
    assert labels.dtype == np.float32 and decode_examples(Ragged.empty(), _image_problem(3))[0]["pixels"].shape == (
        0,
        9,
        5,
        3,
    )
