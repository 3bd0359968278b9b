"""NumPy arrays to and from TensorProtos, without TensorFlow's per-call Python overhead.

Numeric tensors travel as `tensor_content` (the raw little-endian bytes, as TF Serving's own
clients and `tf.make_tensor_proto` write them): one memory copy each way. Strings, bfloat16,
resources and tensors sent as repeated `*_val` fields take TensorFlow's general converters.
"""

from __future__ import annotations

import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

_ENUM_BY_DTYPE = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.float16): types_pb2.DT_HALF,
    np.dtype(np.int8): types_pb2.DT_INT8,
    np.dtype(np.int16): types_pb2.DT_INT16,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
    np.dtype(np.uint16): types_pb2.DT_UINT16,
    np.dtype(np.uint32): types_pb2.DT_UINT32,
    np.dtype(np.uint64): types_pb2.DT_UINT64,
    np.dtype(np.bool_): types_pb2.DT_BOOL,
    np.dtype(np.complex64): types_pb2.DT_COMPLEX64,
    np.dtype(np.complex128): types_pb2.DT_COMPLEX128,
}
_DTYPE_BY_ENUM = {enum: dtype.newbyteorder("<") for dtype, enum in _ENUM_BY_DTYPE.items()}


# TensorFlow repeats the last of fewer `*_val` values to fill the declared shape; that is
# allowed for tensors up to this many elements, so a tiny message cannot ask for gigabytes.
MAX_FILLED_ELEMENTS = 1 << 16

_VALUE_FIELDS = (
    "float_val",
    "double_val",
    "int_val",
    "int64_val",
    "bool_val",
    "string_val",
    "half_val",
    "uint32_val",
    "uint64_val",
    "scomplex_val",
    "dcomplex_val",
)


class TensorContentError(ValueError):
    """A TensorProto whose declared shape disagrees with its content."""


def _check_value_count(proto: tensor_pb2.TensorProto, shape: list[int]) -> None:
    declared = math.prod(shape)
    values = sum(len(getattr(proto, field)) for field in _VALUE_FIELDS)
    if proto.scomplex_val or proto.dcomplex_val:
        values //= 2
    if values == declared or declared <= MAX_FILLED_ELEMENTS:
        return
    raise TensorContentError(
        f"declared shape {shape} has {declared} elements, the tensor holds {values} values "
        f"(filling is allowed up to {MAX_FILLED_ELEMENTS} elements)"
    )


def to_tensor_proto(value) -> tensor_pb2.TensorProto:
    """Returns a TensorProto holding `value` (an array or anything `np.asarray` takes).

    Args:
        value: The tensor.

    Returns:
        The proto, numeric dtypes as `tensor_content`.
    """
    array = np.asarray(value)
    if array.dtype.kind in "OS" and array.size and all(isinstance(v, bytes) for v in array.flat):
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)  # bytes: string_val, one per element
        for size in array.shape:
            proto.tensor_shape.dim.add(size=size)
        proto.string_val.extend(array.ravel().tolist())
        return proto
    enum = _ENUM_BY_DTYPE.get(array.dtype.newbyteorder("="))
    if enum is None:
        import tensorflow as tf

        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = np.ascontiguousarray(array, dtype=_DTYPE_BY_ENUM[enum]).tobytes()
    return proto


def to_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Returns the array a TensorProto holds.

    A numeric proto with `tensor_content` is read in place of its bytes after checking that
    they are exactly what the declared shape needs, so a small message cannot make the
    reader allocate a large array.

    Args:
        proto: The TensorProto.

    Returns:
        The array (read-only when read from `tensor_content`).

    Raises:
        TensorContentError: The content's size does not match the declared shape.
        ValueError, TypeError: TensorFlow's converter refused the proto.
    """
    dtype = _DTYPE_BY_ENUM.get(proto.dtype)
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise TensorContentError(f"declared shape {shape} has a negative dimension")
    if proto.dtype == types_pb2.DT_STRING and len(proto.string_val) == math.prod(shape):
        array = np.empty(len(proto.string_val), dtype=object)
        array[:] = list(proto.string_val)
        return array.reshape(shape)
    if dtype is None or not proto.tensor_content:
        _check_value_count(proto, shape)
        import tensorflow as tf

        return tf.make_ndarray(proto)
    expected = math.prod(shape) * dtype.itemsize
    if len(proto.tensor_content) != expected:
        raise TensorContentError(
            f"declared shape {shape} needs {expected} bytes of {dtype.name} content, "
            f"the tensor has {len(proto.tensor_content)}"
        )
    return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
