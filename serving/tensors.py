"""NumPy arrays to and from TensorProtos, without TensorFlow's per-call Python overhead.

Two encodings, as TensorFlow's `Tensor::AsProtoField` and `Tensor::AsProtoTensorContent` write
them (tensorflow/core/framework/tensor.cc):

- `FIELD`: the typed repeated field of the dtype (`float_val`, `int64_val`, `string_val`, ...),
  every element written. TF Serving answers Predict this way by default
  (`PredictResponseTensorSerializationOption::kAsProtoField`), so clients that read
  `outputs['y'].float_val` see values.
- `CONTENT`: numeric tensors as `tensor_content`, the raw little-endian bytes, and strings in
  TensorFlow's string-list encoding (all lengths as varints, then all bytes): what TF Serving
  answers with under `--enable_serialization_as_tensor_content`.
- `MAKE_TENSOR_PROTO` (the default, for requests): what `tf.make_tensor_proto` and TF Serving's
  clients send, numeric tensors as `tensor_content` and strings in `string_val`.

Fixed-width fields are written by merging their packed wire bytes (one copy, no Python loop);
reading either encoding takes one copy. bfloat16, resources and other rare dtypes take
TensorFlow's general converters.
"""

from __future__ import annotations

import math
from typing import Any

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


FIELD = "field"
CONTENT = "content"
MAKE_TENSOR_PROTO = "make_tensor_proto"
ENCODINGS = (FIELD, CONTENT, MAKE_TENSOR_PROTO)

# The fixed-width typed fields, whose packed wire form is the little-endian array itself; the
# others are packed varints.
_PACKED_FIXED_WIDTH = ("float_val", "double_val", "scomplex_val", "dcomplex_val")
# The typed field AsProtoField fills for each dtype; int8/16 and uint8/16 widen to int_val and
# half to its bit pattern in half_val, as TensorFlow does.
_FIELD_BY_ENUM = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_HALF: "half_val",
}


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


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _add_shape(proto: tensor_pb2.TensorProto, shape: tuple[int, ...]) -> None:
    for size in shape:
        proto.tensor_shape.dim.add(size=size)


def _fill_field(proto: tensor_pb2.TensorProto, array: np.ndarray, enum: int) -> None:
    field = _FIELD_BY_ENUM[enum]
    flat = np.ascontiguousarray(array, dtype=_DTYPE_BY_ENUM[enum]).ravel()
    if not flat.size:
        return
    if enum == types_pb2.DT_HALF:
        flat = flat.view(np.uint16)
    if field in _PACKED_FIXED_WIDTH:
        raw = flat.tobytes()
    elif flat.min() >= 0 and flat.max() < 128:
        raw = flat.astype(np.uint8).tobytes()  # class ids, flags, small counts: one varint byte each
    else:
        getattr(proto, field).extend(flat.tolist())  # protobuf's own varint encoder
        return
    number = tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name[field].number
    proto.MergeFromString(_varint(number << 3 | 2) + _varint(len(raw)) + raw)


def _encode_string_list(values: list[bytes]) -> bytes:
    """TensorFlow's `port::EncodeStringList`: every length as a varint, then every string."""
    return b"".join(_varint(len(v)) for v in values) + b"".join(values)


def _decode_string_list(content: bytes, count: int) -> list[bytes]:
    lengths, position = [], 0
    for _ in range(count):
        length = shift = 0
        while True:
            if position >= len(content):
                raise TensorContentError(f"string tensor_content ends inside the lengths of {count} strings")
            byte = content[position]
            position += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        lengths.append(length)
    if position + sum(lengths) != len(content):
        raise TensorContentError(
            f"string tensor_content holds {len(content) - position} bytes after the lengths, "
            f"the {count} strings need {sum(lengths)}"
        )
    values = []
    for length in lengths:
        values.append(content[position : position + length])
        position += length
    return values


def to_tensor_proto(value: Any, encoding: str = MAKE_TENSOR_PROTO) -> tensor_pb2.TensorProto:
    """Returns a TensorProto holding `value` (an array or anything `np.asarray` takes).

    Args:
        value: The tensor.
        encoding: `MAKE_TENSOR_PROTO` (the default: as `tf.make_tensor_proto` writes it),
            `FIELD` (the typed `*_val` fields, as TF Serving answers Predict by default) or
            `CONTENT` (as TF Serving answers under `--enable_serialization_as_tensor_content`).

    Returns:
        The proto.

    Raises:
        ValueError: `encoding` is neither.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    array = np.asarray(value)
    if array.dtype.kind in "OS" and array.size and all(isinstance(v, bytes) for v in array.flat):
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
        _add_shape(proto, array.shape)
        if encoding == CONTENT:
            proto.tensor_content = _encode_string_list(array.ravel().tolist())
        else:
            proto.string_val.extend(array.ravel().tolist())
        return proto
    enum = _ENUM_BY_DTYPE.get(array.dtype.newbyteorder("="))
    if enum is None:
        import tensorflow as tf

        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=enum)
    _add_shape(proto, array.shape)
    if encoding == FIELD:
        _fill_field(proto, array, enum)
    else:
        proto.tensor_content = np.ascontiguousarray(array, dtype=_DTYPE_BY_ENUM[enum]).tobytes()
    return proto


def _read_field(proto: tensor_pb2.TensorProto, enum: int, shape: list[int]) -> np.ndarray | None:
    """The array of a proto whose typed field holds exactly every element, else None."""
    field = _FIELD_BY_ENUM.get(enum)
    if field is None:
        return None
    values = getattr(proto, field)
    count = math.prod(shape)
    dtype = _DTYPE_BY_ENUM[enum]
    if enum in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        if len(values) != 2 * count:
            return None
        parts = np.array(values, dtype=np.float32 if enum == types_pb2.DT_COMPLEX64 else np.float64)
        return parts.view(dtype).reshape(shape)
    if len(values) != count:
        return None
    if field in ("int_val", "half_val") and dtype.itemsize < 4:
        wide = np.array(values, dtype=np.int32)
        info = np.iinfo(np.uint16 if enum == types_pb2.DT_HALF else dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            return None  # out of range for the dtype: TensorFlow's converter words the refusal
        return wide.astype(info.dtype).view(dtype).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


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
    if proto.dtype == types_pb2.DT_STRING and (proto.tensor_content or len(proto.string_val) == math.prod(shape)):
        values = (
            _decode_string_list(proto.tensor_content, math.prod(shape))
            if proto.tensor_content
            else list(proto.string_val)
        )
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype is not None and not proto.tensor_content:
        array = _read_field(proto, proto.dtype, shape)
        if array is not None:
            return array
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
