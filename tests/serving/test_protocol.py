import grpc
import numpy as np
import pytest

from serving.protocol import (
    HTTP_STATUS,
    ServingError,
    array_to_json,
    columnar_inputs,
    json_to_array,
    row_inputs,
    row_outputs,
)


def test_status_mapping_matches_tf_serving():
    assert HTTP_STATUS[grpc.StatusCode.INVALID_ARGUMENT] == 400
    assert HTTP_STATUS[grpc.StatusCode.NOT_FOUND] == 404
    assert HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429
    assert HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503
    assert HTTP_STATUS[grpc.StatusCode.UNIMPLEMENTED] == 501
    assert HTTP_STATUS[grpc.StatusCode.DEADLINE_EXCEEDED] == 504
    assert HTTP_STATUS[grpc.StatusCode.INTERNAL] == 500
    assert ServingError(grpc.StatusCode.FAILED_PRECONDITION, "x").http_status == 400


def test_json_to_array_dtypes_and_shapes():
    assert json_to_array([[1, 2], [3, 4]], "uint8").dtype == np.uint8
    assert json_to_array(5, "int64").shape == ()
    assert json_to_array([[1.5, 2]], "float32").tolist() == [[1.5, 2.0]]
    assert json_to_array([{"b64": "aGk="}, "yo"], "string").tolist() == [b"hi", b"yo"]
    assert json_to_array([], "float32").shape == (0,)


@pytest.mark.parametrize(
    "value, dtype, message",
    [
        ([[1, 2], [3]], "int32", "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
        ([1, [2]], "int32", "Encountered list at unexpected level: 1 expected < 1"),
        (
            [[1], 2],
            "int32",
            "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
        ),
        ([1.5], "uint8", "JSON Value: 1.5 Type: Number is not of expected type: uint8"),
        ([float("nan")], "int32", "JSON Value: NaN Type: Number is not of expected type: int32"),
        ([True], "float32", "JSON Value: true Type: True is not of expected type: float"),
        ([300], "uint8", "300 is out of range for uint8"),
        ([{"b64": "!!"}], "string", "Unable to base64 decode"),
        ([{"a": 1}], "float32", "is not of expected type: float"),
    ],
)
@pytest.mark.parametrize("no_bools", [False, True], ids=["checked", "numpy-fast-path"])
def test_json_to_array_errors(value, dtype, message, no_bools):
    with pytest.raises(ServingError, match=message.replace("[", r"\[").replace(".", r"\.")) as caught:
        json_to_array(value, dtype, no_bools=no_bools)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "value, dtype",
    [
        ([[0, 255], [7, 9]], "uint8"),
        ([[1, 2.5], [3, -4]], "float32"),
        ([1, 2, 3], "int64"),
        ([[[0.25]]], "float64"),
        (4, "int32"),
    ],
)
def test_the_numpy_fast_path_gives_what_the_checked_path_gives(value, dtype):
    fast, checked = json_to_array(value, dtype, no_bools=True), json_to_array(value, dtype)
    assert fast.dtype == checked.dtype and fast.shape == checked.shape and fast.tolist() == checked.tolist()


def test_rows_of_numbers_convert_in_one_call_and_keep_row_errors():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert row_inputs(images.tolist(), {"images": "uint8"}, no_bools=True)["images"].tolist() == images.tolist()
    with pytest.raises(ServingError, match="Failed to process element: 1 of 'instances' list"):
        row_inputs([[1, 2], [3]], {"x": "int32"}, no_bools=True)


def test_row_and_columnar_inputs():
    dtypes = {"a": "int64", "b": "float32"}
    rows = row_inputs([{"a": 1, "b": [1.0, 2.0]}, {"a": 2, "b": [3.0, 4.0]}], dtypes)
    assert rows["a"].tolist() == [1, 2] and rows["b"].shape == (2, 2)
    with pytest.raises(ServingError, match="instances is a plain list"):
        row_inputs([[1, 2]], dtypes)
    with pytest.raises(ServingError, match="keys must be equal to: a,b"):
        row_inputs([{"a": 1}], dtypes)
    with pytest.raises(ServingError, match="Missing named input: b in 'inputs' object."):
        columnar_inputs({"a": [1]}, dtypes)
    assert columnar_inputs([[1, 2]], {"x": "float32"})["x"].shape == (1, 2)


def test_outputs_to_json():
    assert array_to_json(np.array([0.1, 1.0], np.float32)) == [0.1, 1.0]
    assert array_to_json(np.array([b"\xff"], object), "raw_bytes") == [{"b64": "/w=="}]
    assert array_to_json(np.array([b"ok"], object), "text") == ["ok"]
    assert row_outputs({"y": np.array([1, 2]), "z": np.array([[1.0], [2.0]], np.float32)}) == [
        {"y": 1, "z": [1.0]},
        {"y": 2, "z": [2.0]},
    ]
    with pytest.raises(ServingError, match="inconsistent batch size"):
        row_outputs({"y": np.array([1, 2]), "z": np.array([1.0])})
