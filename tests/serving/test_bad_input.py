"""Bad requests get a 4xx (or the gRPC equivalent) with a clear message, and the server keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serving.protocol import ServingError
from tests.serving.conftest import local_only
from tests.serving.test_conformance import X, assert_still_serving, grpc_stub, rest

PREDICT = "/v1/models/scaler/versions/1:predict"
IMAGE = np.zeros((28, 28), np.uint8).tolist()


@pytest.mark.parametrize(
    "path, body, status, fragment",
    [
        (PREDICT, "{not json", 400, "JSON Parse error"),
        (PREDICT, "", 400, "JSON Parse error"),
        (PREDICT, "[1, 2]", 400, "Is not object"),
        (
            PREDICT,
            {"instances": X.tolist(), "inputs": X.tolist()},
            400,
            "only one of 'inputs' or 'instances'",
        ),
        (PREDICT, {"x": 1}, 400, "Missing 'inputs' or 'instances' key"),
        (PREDICT, {"instances": []}, 400, "No values in 'instances' array"),
        (PREDICT, {"instances": "abc"}, 400, "'instances' to be an list/array"),
        (PREDICT, {"instances": [[1, 2, 3], [4, 5]]}, 400, "Expecting tensor size: 3 but got: 2"),
        (PREDICT, {"inputs": [[1, 2, 3], [4, 5]]}, 400, "Encountered list at unexpected size: 2"),
        (
            PREDICT,
            {"instances": [["a", "b", "c"]]},
            400,
            'JSON Value: "a" Type: String is not of expected type: float',
        ),
        (PREDICT, {"instances": [1, 2]}, 400, ""),  # rank 1: the graph's reduce_sum(axis=1) refuses it
        (
            PREDICT,
            {"signature_name": "nope", "instances": X.tolist()},
            400,
            '"nope" not found in signature def',
        ),
        (
            PREDICT,
            {"signature_name": 7, "instances": X.tolist()},
            400,
            "'signature_name' key must be a string",
        ),
        (
            "/v1/models/fashion:predict",
            {"instances": [[[1.5] * 28] * 28]},
            400,
            "is not of expected type: uint8",
        ),
        (
            "/v1/models/fashion:predict",
            '{"instances": [[[NaN]]]}',
            400,
            "JSON Value: NaN Type: Number is not of expected type: uint8",
        ),
        (
            "/v1/models/fashion:predict",
            {"instances": [np.zeros((28, 20), int).tolist()]},
            400,
            "images must be uint8 [N,28,28]",
        ),
        ("/v1/models/fashion:predict", {"inputs": [IMAGE[0]]}, 400, "images must be uint8 [N,28,28]"),
        ("/v1/models/fashion:predict", {"inputs": []}, 400, ""),  # an empty batch
        (
            "/v1/models/nope:predict",
            {"instances": X.tolist()},
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "/v1/models/scaler/versions/9:predict",
            {"instances": X.tolist()},
            404,
            "Servable not found for request: Specific(scaler, 9)",
        ),
        (
            "/v1/models/scaler/labels/nope:predict",
            {"instances": X.tolist()},
            400,
            "Unrecognized servable version label: nope",
        ),
        ("/v1/models/..:predict", {"instances": X.tolist()}, 404, "Servable not found"),
        ("/v1/models/..%2Fscaler:predict", {"instances": X.tolist()}, 404, "Servable not found"),
        (
            "/v1/models/a/b:predict",
            {"instances": X.tolist()},
            400,
            "Malformed request: POST /v1/models/a/b:predict",
        ),
        ("/v1/models/scaler:explode", {"instances": X.tolist()}, 400, "Malformed request"),
    ],
    ids=lambda value: value if isinstance(value, (int,)) else None,
)
def test_rest_bad_requests(standard_config, path, body, status, fragment):
    got, reply = rest(standard_config, "POST", path, body)
    assert got == status, reply
    assert set(reply) == {"error"} and reply["error"]
    assert fragment in reply["error"]
    assert_still_serving(standard_config)


@pytest.mark.parametrize(
    "path, status, fragment",
    [
        ("/v1/models/nope", 404, "Could not find any versions of model nope"),
        ("/v1/models/scaler/versions/9", 404, "Could not find version 9 of model scaler"),
        ("/v1/models/nope/labels/stable", 404, "Could not find any versions of model nope"),  # label ignored
        ("/v1/models/nope/metadata", 404, "Servable not found"),
        ("/v1/models/scaler/labels/nope/metadata", 400, "Unrecognized servable version label: nope"),
    ],
)
def test_rest_bad_status_requests(standard_config, path, status, fragment):
    got, reply = rest(standard_config, "GET", path)
    assert got == status and fragment in reply["error"]


def _predict_request(name="scaler", **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    return request


def _grpc_error(server, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub(server).Predict(request, timeout=30)
    return caught.value


def test_grpc_tensor_whose_declared_shape_does_not_match_its_content(standard_config):
    proto = tf.make_tensor_proto(X)  # 6 floats in tensor_content
    proto.tensor_shape.dim[0].size = 5  # declares 15
    error = _grpc_error(standard_config, _predict_request(x=proto))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details()
    assert_still_serving(standard_config)


@pytest.mark.parametrize(
    "inputs, fragment",
    [
        ({"x": tf.make_tensor_proto(X.astype(np.float64))}, "double"),
        ({"x": tf.make_tensor_proto(np.zeros((4,), np.float32))}, ""),  # a shape the graph cannot take
        ({"y": tf.make_tensor_proto(X)}, ""),
        ({}, ""),
        ({"x": tf.make_tensor_proto(1.0, tf.float32, shape=[10000, 28, 28])}, ""),  # refused before allocating
    ],
    ids=["wrong-dtype", "wrong-shape", "wrong-name", "no-inputs", "one-value-declaring-7.8M"],
)
def test_grpc_bad_inputs_are_invalid_argument(standard_config, inputs, fragment):
    error = _grpc_error(standard_config, _predict_request(**inputs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.details()
    assert_still_serving(standard_config)


@pytest.mark.parametrize(
    "name, version, label, code",
    [
        ("nope", None, None, grpc.StatusCode.NOT_FOUND),
        ("../scaler", None, None, grpc.StatusCode.NOT_FOUND),
        ("scaler/1", None, None, grpc.StatusCode.NOT_FOUND),
        ("scaler", 9, None, grpc.StatusCode.NOT_FOUND),
        ("scaler", None, "nope", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_grpc_unknown_model_version_label(standard_config, name, version, label, code):
    with standard_config.client() as client, pytest.raises(ServingError) as caught:
        client.predict(name, {"x": X}, version=version, label=label)
    assert caught.value.code == code and caught.value.message


@local_only
def test_body_over_the_size_limit(tmp_path, model_repo):
    from tests.support import start_test_server

    (tmp_path / "m.config").write_text(
        f"model_config_list {{ config {{ name: 'scaler' base_path: '{model_repo / 'scaler'}' }} }}"
    )
    local = start_test_server(
        tmp_path,
        tmp_path / "log",
        f"--model_config_file={tmp_path / 'm.config'}",
        "--rest_api_max_request_bytes=1000",
    )
    try:
        server = local
        status, reply = rest(server, "POST", "/v1/models/scaler:predict", {"instances": [[1.0, 2.0, 3.0]] * 200})
        assert status == 413 and "exceeds the limit of 1000 bytes" in reply["error"]
        status, reply = rest(server, "POST", "/v1/models/scaler:predict", {"instances": X.tolist()})
        assert status == 200
    finally:
        assert local.stop() == 0


# --- found by the adversarial probe: each answered 500 / UNKNOWN before ------------------------

DEEP = "[" * 1500 + "1" + "]" * 1500


@local_only
@pytest.mark.parametrize(
    "method, path, body, fragment",
    [
        ("POST", PREDICT, '{"instances": ' + DEEP + "}", "nested too deeply"),
        ("POST", PREDICT, '{"instances": ' + "[" * 70 + "1" + "]" * 70 + "}", "at most 64 dimensions"),
        ("POST", PREDICT, '{"instances": ' + "[" * 65 + "1" + "]" * 65 + "}", "the batch dimension included"),
        ("POST", PREDICT, '{"instances": [{"x": ' + "[" * 64 + "1" + "]" * 64 + "}]}", "batch dimension included"),
        ("POST", PREDICT, '{"inputs": ' + "[" * 65 + "1" + "]" * 65 + "}", "at most 64 dimensions"),
        ("POST", PREDICT, '{"instances": [' + "9" * 5000 + "]}", "JSON Parse error: Exceeds the limit"),
        ("GET", "/v1/models/scaler/versions/" + "9" * 5000, None, "Failed to convert version: 999"),
        ("POST", "/v1/models/scaler/versions/" + "9" * 20 + ":predict", '{"instances": [[1,2,3]]}', "to numeric"),
        ("POST", PREDICT, '{"instances": [["' + "x" * 200_000 + '", 1, 2]]}', "more characters)"),
        ("POST", PREDICT, '{"instances": ' + str([[1.0, 2.0, 3.0]] * 4097) + "}", "at most 4096 per request"),
    ],
    ids=[
        "json-1500-deep",
        "tensor-70-deep",
        "rows-64-deep-each",
        "named-row-64-deep",
        "columns-65-deep",
        "int-5000-digits",
        "version-5000-digits",
        "version-over-int64",
        "echo",
        "rows",
    ],
)
def test_rest_hostile_input_is_a_400_with_a_bounded_message(standard_config, method, path, body, fragment):
    status, reply = rest(standard_config, method, path, body)
    assert status == 400, reply
    assert fragment in reply["error"] and len(reply["error"]) < 2200
    assert_still_serving(standard_config)


def _raw_tensor(dtype: int, shape=(1, 3)):
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def _uint8_with_int_val(value):
    proto = _raw_tensor(4, (1, 28, 28))  # DT_UINT8
    proto.int_val.extend([value] * 784)
    return proto


def _huge_string():
    proto = _raw_tensor(7, (1, 28, 28))  # DT_STRING for the uint8 input, 20 MB in one value
    proto.string_val.append(b"x" * 20_000_000)
    return proto


@local_only
@pytest.mark.parametrize(
    "model, make_proto, fragment",
    [
        ("scaler", lambda: _raw_tensor(20), "KeyError: 20"),  # DT_RESOURCE
        ("scaler", lambda: _raw_tensor(21), "KeyError: 21"),  # DT_VARIANT
        ("scaler", lambda: _raw_tensor(120), "KeyError: 120"),  # DT_RESOURCE_REF
        ("scaler", lambda: _raw_tensor(121), "KeyError: 121"),  # DT_VARIANT_REF
        ("scaler", lambda: _raw_tensor(1, (2**40,)), "has 1099511627776 elements"),  # allocation would fail
        ("fashion", lambda: _uint8_with_int_val(-270), "out of bounds for uint8"),
        ("fashion", _huge_string, "Expects arg[0] to be uint8 but string is provided"),
    ],
    ids=["dt-resource", "dt-variant", "dt-resource-ref", "dt-variant-ref", "2^40-floats", "uint8-270", "string"],
)
def test_grpc_hostile_tensors_are_invalid_argument(standard_config, model, make_proto, fragment):
    name = "images" if model == "fashion" else "x"
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[name].CopyFrom(make_proto())
    error = _grpc_error(standard_config, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert fragment in error.details()
    assert_still_serving(standard_config)
