"""What TF Serving's REST and gRPC APIs share: status codes, errors, JSON tensors.

Used by both the local server and the client, so both speak exactly the same
dialect as `tensorflow_model_server` (see TF Serving's util/json_tensor.cc and
model_servers/http_server.cc for the behaviour mirrored here).
"""

from __future__ import annotations

import base64
import math
from typing import Any

import grpc
import numpy as np

# Live traffic labels: this project's extension of the model config, written as ordinary version
# labels so that TF Serving accepts the same file (it serves them as plain labels and splits nothing).
# With a `traffic_split_<P>` label (P = 0..100), the local server answers a request that names no
# version and no label with that label's version P% of the time and with `stable`'s otherwise.
# With a `shadow` label, each such request the request log samples is also run on the shadow
# version off the request path; its answer is logged (requested label "shadow"), never returned.
STABLE_LABEL = "stable"
TRAFFIC_SPLIT_PREFIX = "traffic_split_"
SHADOW_LABEL = "shadow"


def traffic_split_label(percent: int) -> str:
    """The label sending `percent` % of unaddressed requests to its version."""
    return f"{TRAFFIC_SPLIT_PREFIX}{int(percent)}"


def traffic_split_percent(label: str) -> int | None:
    """The percent a `traffic_split_<P>` label names, or None for any other label."""
    rest = label[len(TRAFFIC_SPLIT_PREFIX) :] if label.startswith(TRAFFIC_SPLIT_PREFIX) else ""
    return int(rest) if rest.isdigit() and len(rest) <= 3 else None


# The local server's per-version request metrics (TF Serving's own know only the model), which a
# canary watch compares between `canary` and `stable`: a counter {model_name, version, status} and a
# latency histogram in microseconds {model_name, version} of answered calls.
VERSION_REQUEST_COUNT = ":mlops:serving:version_request_count"
VERSION_REQUEST_LATENCY = ":mlops:serving:version_request_latency"


# gRPC status -> HTTP status, as TF Serving's HTTP server maps them.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ServingError(Exception):
    """An error with a gRPC status code, reported as TF Serving reports it.

    Attributes:
        code: The `grpc.StatusCode`.
        message: The human-readable message (the REST body's "error").
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        message = cap_message(message)
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


# Messages that echo a request's values are cut here: a 31 MB echo does not fit gRPC's 16 KiB
# metadata limit (the client then sees "metadata size exceeds limit", not the error).
MAX_MESSAGE_CHARS = 2048
MAX_VERSION = 2**63 - 1  # versions are int64 in TF Serving
MAX_RANK = 64  # NumPy's limit; TF Serving's JSON parser refuses deeper values too


def cap_message(message: str) -> str:
    """Returns `message`, cut to MAX_MESSAGE_CHARS with a note of how much was left out."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}... ({len(message) - MAX_MESSAGE_CHARS} more characters)"


def parse_version(text: str) -> int:
    """Converts a version from a URL; INVALID_ARGUMENT as TF Serving words it if it is not an int64."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_VERSION:
        raise invalid(f"Failed to convert version: {text[:64]} to numeric.")
    return int(text)


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def code_from_number(number: int) -> grpc.StatusCode:
    """Returns the gRPC status code with the given numeric value (TF error codes are the same)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def code_from_http(status: int) -> grpc.StatusCode:
    """Returns the gRPC status code a REST HTTP status stands for."""
    if status in _BY_HTTP:
        return _BY_HTTP[status]
    return grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.UNKNOWN


# --- JSON <-> tensors ----------------------------------------------------------------

_FLOAT_TYPES = {"float16", "bfloat16", "float32", "float64"}
_INT_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


def _json_repr(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
    return repr(value).replace("'", '"') if not isinstance(value, bool) else str(value).lower()


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, dict):
        return "Object"
    return "Array"


def is_b64(value: Any) -> bool:
    """True for a `{"b64": "<base64>"}` object."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


_TF_TYPE_NAMES = {"float32": "float", "float64": "double", "float16": "half"}


def tf_type_name(dtype: str) -> str:
    """Returns TensorFlow's DataTypeString for a dtype name ('float32' -> 'float')."""
    return _TF_TYPE_NAMES.get(dtype, dtype)


def _type_error(value: Any, dtype: str) -> ServingError:
    return invalid(
        f"JSON Value: {_json_repr(value)} Type: {_json_type(value)} is not of expected type: {tf_type_name(dtype)}"
    )


def _leaf(value: Any, dtype: str) -> Any:
    if dtype == "string":
        if is_b64(value):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise invalid("Unable to base64 decode") from None
        if isinstance(value, str):
            return value.encode()
        raise _type_error(value, dtype)
    if dtype == "bool":
        if isinstance(value, bool):
            return value
        raise _type_error(value, dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype in _INT_TYPES:
        if not isinstance(value, int):
            raise _type_error(value, dtype)
        info = np.iinfo(dtype)
        if not info.min <= value <= info.max:
            raise invalid(f"JSON Value: {value} is out of range for {dtype} [{info.min}, {info.max}]")
        return value
    if dtype in _FLOAT_TYPES:
        return value
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: {_json_repr(value)} to type: {dtype}")


def _dense_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _dense_numbers(value: Any, dtype: str) -> np.ndarray | None:
    """NumPy's own (C) conversion of a rectangular list of JSON numbers, or None to take the checked path.

    Only when every value is a number of the right kind (ints, in range, for an int dtype):
    anything else (ragged lists, strings, nulls, NaN for ints, huge ints) goes the
    element-by-element way, which words TF Serving's error.
    """
    if not isinstance(value, list) or dtype not in _INT_TYPES | _FLOAT_TYPES:
        return None
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):
        return None
    if dtype in _INT_TYPES:
        if array.dtype.kind not in "iu":
            return None
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            return None
    elif array.dtype.kind not in "iuf":
        return None
    return array.astype(np.float32 if dtype == "bfloat16" else dtype)


def json_to_array(value: Any, dtype: str, *, no_bools: bool = False, max_rank: int = MAX_RANK) -> np.ndarray:
    """Converts a JSON value (scalar or nested lists) to a dense array of `dtype`.

    The shape is read off the first element at each level, as TF Serving does;
    every other list must match it.

    Args:
        value: Parsed JSON.
        dtype: A numpy/TF dtype name such as 'uint8', 'float32' or 'string'.
        no_bools: The document holds no `true`/`false` (NumPy would take them for 1 and 0),
            so a rectangular list of numbers can be converted by NumPy at once.
        max_rank: Most dimensions the value may have (one less for a row, which gains a batch
            dimension).

    Returns:
        The array (dtype object holding bytes for 'string').

    Raises:
        ServingError: INVALID_ARGUMENT naming the offending value and level.
    """
    if no_bools and (fast := _dense_numbers(value, dtype)) is not None:
        return fast
    shape = _dense_shape(value)
    rank = len(shape)
    if rank > max_rank:
        raise invalid(
            f"JSON Value nested {rank} levels deep: a tensor has at most {MAX_RANK} dimensions"
            + (", the batch dimension included" if max_rank < MAX_RANK else "")
        )
    flat: list[Any] = []

    def walk(node: Any, level: int) -> None:
        if not isinstance(node, list):
            if level != rank:
                raise invalid(
                    f"JSON Value: {_json_repr(node)} found at incorrect level: {level + 1} in the "
                    f"JSON DOM. Expected at level: {rank}"
                )
            if isinstance(node, dict) and not (dtype == "string" and is_b64(node)):
                raise _type_error(node, dtype)
            flat.append(_leaf(node, dtype))
            return
        if level >= rank:
            raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(node) != shape[level]:
            raise invalid(
                f"Encountered list at unexpected size: {len(node)} at level: {level} expected size: {shape[level]}"
            )
        for child in node:
            walk(child, level + 1)

    walk(value, 0)
    if dtype == "string":
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    return np.asarray(flat, dtype=np.dtype(dtype) if dtype != "bfloat16" else np.float32).reshape(shape)


def _float_leaf(value: float, dtype) -> float | str:
    if math.isnan(value) or math.isinf(value):
        return value
    # Shortest text that round-trips in the tensor's own precision (0.2, not 0.2000000029).
    return float(str(dtype.type(value))) if dtype.itemsize <= 4 else float(value)


def array_to_json(array: np.ndarray, name: str = "") -> Any:
    """Converts an output array to JSON values (bytes as text, or b64 for '*_bytes' names)."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        dtype = array.dtype
        converted = np.vectorize(lambda v: _float_leaf(float(v), dtype), otypes=[object])(array)
        return converted.tolist() if array.ndim else converted.item()
    if array.dtype.kind in ("O", "S"):

        def text(value: bytes | str) -> Any:
            if isinstance(value, str):
                return value
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(value).decode()}
            try:
                return value.decode()
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(value).decode()}

        converted = np.vectorize(text, otypes=[object])(array) if array.size else array
        return converted.tolist() if array.ndim else converted.item()
    return array.tolist()


def row_inputs(instances: list, input_dtypes: dict[str, str], *, no_bools: bool = False) -> dict[str, np.ndarray]:
    """Converts a row-format `instances` list to batched input arrays.

    Args:
        instances: The parsed `instances` list.
        input_dtypes: Input name -> dtype name.
        no_bools: The body holds no `true`/`false`: plain numeric rows convert in one NumPy call.

    Raises:
        ServingError: INVALID_ARGUMENT as TF Serving words it.
    """
    single = len(input_dtypes) == 1
    if single and no_bools and not isinstance(instances[0], dict):
        name, dtype = next(iter(input_dtypes.items()))
        if (fast := _dense_numbers(instances, dtype)) is not None and fast.ndim >= 1:
            return {name: fast}

    def is_object(value: Any) -> bool:
        return isinstance(value, dict) and not is_b64(value)

    if not is_object(instances[0]) and not single:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    objects = is_object(instances[0])
    columns: dict[str, list[np.ndarray]] = {name: [] for name in input_dtypes}
    for index, element in enumerate(instances):
        if objects:
            if not is_object(element):
                raise invalid(f"Expecting object but got list at item {index} of input list")
            if set(element) != set(input_dtypes):
                raise invalid(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{sorted(element)} keys must be equal to: {','.join(sorted(input_dtypes))}"
                )
            items = element.items()
        else:
            if is_object(element):
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
            items = [(next(iter(input_dtypes)), element)]
        for name, value in items:
            try:
                array = json_to_array(value, input_dtypes[name], max_rank=MAX_RANK - 1)
            except ServingError as err:
                raise invalid(f"Failed to process element: {index} of 'instances' list. Error: {err.message}") from None
            if columns[name] and columns[name][0].shape != array.shape:
                first = columns[name][0]
                raise invalid(
                    f"Failed to process element: {index} of 'instances' list. Error: Expecting "
                    f"tensor size: {first.size} but got: {array.size}"
                    if first.size != array.size
                    else f"Failed to process element: {index} of 'instances' list. Error: Expecting "
                    f"shape {list(first.shape)} but got: {list(array.shape)}"
                )
            columns[name].append(array)
    return {name: np.stack(arrays) for name, arrays in columns.items()}


def columnar_inputs(inputs: Any, input_dtypes: dict[str, str], *, no_bools: bool = False) -> dict[str, np.ndarray]:
    """Converts a columnar `inputs` value (one value, or an object of named values); `no_bools` as `row_inputs`."""
    if not isinstance(inputs, dict) or is_b64(inputs):
        if len(input_dtypes) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        name, dtype = next(iter(input_dtypes.items()))
        return {name: json_to_array(inputs, dtype, no_bools=no_bools)}
    arrays = {}
    for name, dtype in input_dtypes.items():
        if name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = json_to_array(inputs[name], dtype, no_bools=no_bools)
    return arrays


def row_outputs(outputs: dict[str, np.ndarray]) -> list:
    """Builds the `predictions` list of a row-format reply."""
    if len(outputs) == 1:
        name, array = next(iter(outputs.items()))
        return array_to_json(array, name)
    sizes = {name: np.asarray(a).shape[0] if np.ndim(a) else None for name, a in outputs.items()}
    batch = next(iter(sizes.values()))
    for name, size in sizes.items():
        if size is None or size != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch}")
    converted = {name: array_to_json(array, name) for name, array in outputs.items()}
    return [{name: converted[name][row] for name in outputs} for row in range(batch)]


def columnar_outputs(outputs: dict[str, np.ndarray]) -> Any:
    """Builds the `outputs` value of a columnar reply."""
    if len(outputs) == 1:
        name, array = next(iter(outputs.items()))
        return array_to_json(array, name)
    return {name: array_to_json(array, name) for name, array in outputs.items()}
