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
