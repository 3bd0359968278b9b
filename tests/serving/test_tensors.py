"""NumPy <-> TensorProto conversion: the same protos and arrays as TensorFlow's converters, bounded reads."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf

from serving import tensors

NUMERIC = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16]
NUMERIC += [np.uint32, np.uint64, np.bool_, np.complex64, np.complex128]


@pytest.mark.parametrize("dtype", NUMERIC)
def test_numeric_arrays_round_trip_and_tensorflow_reads_them(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    proto = tensors.to_tensor_proto(array)
    assert proto.dtype == tf.as_dtype(dtype).as_datatype_enum
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)  # what TF Serving parses
    np.testing.assert_array_equal(tensors.to_array(proto), array)
    np.testing.assert_array_equal(tensors.to_array(tf.make_tensor_proto(array)), array)  # what TF clients send


def test_scalars_empty_big_endian_and_non_contiguous_arrays():
    for array in (np.float32(2.5), np.zeros((0, 3), np.int32), np.arange(6, dtype=">i4"), np.ones((4, 4))[:, ::2]):
        np.testing.assert_array_equal(tensors.to_array(tensors.to_tensor_proto(array)), array)


def test_strings_and_value_lists_take_tensorflows_converters():
    strings = np.array([b"a", b"bc"], dtype=object)
    np.testing.assert_array_equal(tensors.to_array(tensors.to_tensor_proto(strings)), strings)
    proto = tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32)
    proto.ClearField("tensor_content")
    proto.float_val.extend([1.0, 2.0])
    np.testing.assert_array_equal(tensors.to_array(proto), [1.0, 2.0])


@pytest.mark.parametrize(
    "shape, content_bytes",
    [([10000, 28, 28], 4), ([2, 3], 20), ([2, 3], 28)],
    ids=["small content, huge declared shape", "too little content", "too much content"],
)
def test_content_that_disagrees_with_the_declared_shape_is_refused_before_allocating(shape, content_bytes):
    proto = tensors.to_tensor_proto(np.zeros((6,), np.float32))
    proto.tensor_shape.Clear()
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = b"\0" * content_bytes
    with pytest.raises(tensors.TensorContentError, match=re.escape(f"declared shape {shape}")):
        tensors.to_array(proto)


def test_a_few_values_cannot_declare_a_huge_tensor_but_small_fills_still_work():
    """A 42-byte request declaring [10000,28,28] with one float value allocated 1.6 GB before."""
    proto = tf.make_tensor_proto(1.0, dtype=tf.float32, shape=[10000, 28, 28])
    assert len(proto.SerializeToString()) < 64
    with pytest.raises(tensors.TensorContentError, match="has 7840000 elements, the tensor holds 1 values"):
        tensors.to_array(proto)
    np.testing.assert_array_equal(
        tensors.to_array(tf.make_tensor_proto(2.0, tf.float32, shape=[2, 3])), np.full((2, 3), 2.0)
    )


def test_bytes_tensors_take_the_string_fast_path_with_tensorflows_layout():
    names = np.array([[b"T-shirt/top", b"Trouser"], [b"", b"\xff\x00"]], dtype=object)
    proto = tensors.to_tensor_proto(names)
    assert proto == tf.make_tensor_proto(names)  # byte for byte what TensorFlow writes
    back = tensors.to_array(proto)
    assert back.dtype == object and back.tolist() == names.tolist()
    np.testing.assert_array_equal(tensors.to_array(tf.make_tensor_proto(np.array(b"one", dtype=object))), b"one")


@pytest.mark.parametrize("dtype", NUMERIC)
def test_typed_fields_hold_every_element_as_tensorflows_as_proto_field_writes_them(dtype):
    """TF Serving's default Predict answer: `Tensor::AsProtoField`, compared with TensorFlow's own tensor."""
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    proto = tensors.to_tensor_proto(array, tensors.FIELD)
    assert not proto.tensor_content
    reference = tf.make_tensor_proto(array)
    assert proto.dtype == reference.dtype and proto.tensor_shape == reference.tensor_shape
    values = sum(len(getattr(proto, field)) for field in tensors._VALUE_FIELDS)
    assert values == array.size * (2 if array.dtype.kind == "c" else 1)  # no trailing-repeat compression
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    back = tensors.to_array(proto)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_typed_fields_use_the_field_tensorflow_picks_for_each_dtype():
    fields = {
        np.float32: "float_val",
        np.float64: "double_val",
        np.uint8: "int_val",
        np.int16: "int_val",
        np.int32: "int_val",
        np.int64: "int64_val",
        np.uint32: "uint32_val",
        np.bool_: "bool_val",
        np.float16: "half_val",
    }
    for dtype, field in fields.items():
        proto = tensors.to_tensor_proto(np.ones(3, dtype), tensors.FIELD)
        assert [f.name for f, _ in proto.ListFields() if f.name.endswith("_val")] == [field], dtype
    assert list(tensors.to_tensor_proto(np.float16([1.5]), tensors.FIELD).half_val) == [0x3E00]  # the bit pattern


def test_strings_as_tensor_content_use_tensorflows_string_list_encoding():
    strings = np.array([[b"a", b"bc"], [b"", b"x" * 200]], dtype=object)
    proto = tensors.to_tensor_proto(strings, tensors.CONTENT)
    assert proto.tensor_content == bytes([1, 2, 0, 200, 1]) + b"abc" + b"x" * 200  # lengths as varints, then bytes
    assert tensors.to_array(proto).tolist() == strings.tolist()
    assert tensors.to_tensor_proto(strings, tensors.FIELD) == tf.make_tensor_proto(strings)
    proto.tensor_content = proto.tensor_content[:-1]
    with pytest.raises(tensors.TensorContentError, match="the 4 strings need 203"):
        tensors.to_array(proto)


def test_an_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="encoding must be one of"):
        tensors.to_tensor_proto(np.ones(2), "json")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64, np.uint8, np.bool_])
def test_packed_varints_hold_negatives_and_extremes_as_protobuf_encodes_them(dtype):
    if dtype is np.bool_:
        array = np.array([True, False, True])
    else:
        info = np.iinfo(dtype)
        values = [info.min, -1, 0, 1, 127, 128, 300, 2**31, 2**40, info.max]
        array = np.array([v for v in values if info.min <= v <= info.max], dtype=dtype)
    proto = tensors.to_tensor_proto(array, tensors.FIELD)
    reference = tensors.to_tensor_proto(array[:0], tensors.FIELD)  # dtype and an empty field
    reference.tensor_shape.dim[0].size = array.size
    field = tensors._FIELD_BY_ENUM[proto.dtype]
    getattr(reference, field).extend(array.tolist())  # protobuf's own encoder
    assert proto.SerializeToString() == reference.SerializeToString()
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    np.testing.assert_array_equal(tensors.to_array(proto), array)
