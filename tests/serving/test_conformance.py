"""TF Serving conformance: the same tests certify the local server and a real TF Serving."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import sample_models
from serving.client import TFServingClient
from serving.protocol import ServingError
from tests.serving.conftest import EXAMPLES, FASHION, SCALER, local_only
from tests.support import wait_for

PROTOCOLS = ["grpc", "rest"]
X = np.array([[1, 2, 3], [4, 5, 6]], np.float32)


def rest(server, method: str, path: str, body: bytes | str | dict | None = None):
    """A raw REST call: returns (HTTP status, parsed JSON body)."""
    if isinstance(body, dict):
        body = json.dumps(body)
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(server.rest_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def grpc_stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))


def assert_still_serving(server):
    with server.client() as client:
        assert client.predict("scaler", {"x": X}, version=1)["y"].tolist() == (X * 2).tolist()


# --- status and metadata -----------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_status_by_name_version_and_label(standard_config, protocol):
    with standard_config.client(protocol) as client:
        versions = client.status("scaler")
        assert [(v["version"], v["state"], v["error_code"]) for v in versions] == [
            (2, "AVAILABLE", "OK"),
            (1, "AVAILABLE", "OK"),
        ]
        assert [v["version"] for v in client.status("scaler", version=1)] == [1]
        # get_model_status_impl.cc ignores a version label: every version, even for a label nobody set.
        assert [v["version"] for v in client.status("scaler", label="canary")] == [2, 1]
        assert [v["version"] for v in client.status("scaler", label="nope")] == [2, 1]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_label_is_resolved_before_the_model(server, protocol):
    """An unknown model addressed by label: 400 for the label, not 404 for the model (server_core.cc)."""
    with server.client(protocol) as client, pytest.raises(ServingError) as caught:
        client.predict("no_such_model", {"x": X}, label="stable")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == "Unrecognized servable version label: stable"


def test_a_removed_model_still_reports_its_versions_as_ended(server, model_repo):
    """ServableStateMonitor never forgets: a model dropped from the config answers 200 with END versions."""
    removed = "config { name: 'removed' base_path: '{base}/examples' model_platform: 'tensorflow' }"
    with server.client() as client:
        client.reload_config(server.config_text(removed))
        assert [v["state"] for v in client.status("removed")] == ["AVAILABLE"]
        client.reload_config(server.config_text(EXAMPLES))
        assert [(v["state"], v["error_code"]) for v in client.status("removed")] == [("END", "OK")]


def test_rest_status_body_is_tf_serving_json(standard_config):
    status, body = rest(standard_config, "GET", "/v1/models/scaler/versions/2")
    assert status == 200
    assert body == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metadata_lists_signature_defs(standard_config, protocol):
    with standard_config.client(protocol) as client:
        metadata = client.metadata("scaler", label="stable")
    assert metadata["version"] == 1
    signatures = metadata["signature_def"]
    assert set(signatures) >= {"serving_default", "pair", "echo"}
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert set(default["outputs"]) == {"y", "sum"}
    status, body = rest(standard_config, "GET", "/v1/models/fashion/metadata")
    assert status == 200 and body["model_spec"]["name"] == "fashion"
    assert (
        body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["images"]["dtype"] == "DT_UINT8"
    )


# --- predict ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_predict_by_latest_version_and_label(standard_config, protocol):
    with standard_config.client(protocol) as client:
        latest = client.predict("scaler", {"x": X})
        assert latest["y"].tolist() == (X * 3).tolist()
        assert client.predict("scaler", {"x": X}, version=1)["y"].tolist() == (X * 2).tolist()
        assert client.predict("scaler", {"x": X}, label="stable")["sum"].tolist() == [12.0, 30.0]
        assert client.predict("scaler", {"x": X}, label="canary")["sum"].tolist() == [18.0, 45.0]
    if protocol == "grpc":
        assert latest.version == 2


def _raw_predict(server, signature: str, inputs: dict):
    """A Predict on scaler version 1 sent as TensorFlow's own converter writes it; returns the raw response."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "scaler", signature
    request.model_spec.version.value = 1
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return grpc_stub(server).Predict(request, timeout=30)


def _tensor(text: str):
    from google.protobuf import text_format
    from tensorflow.core.framework import tensor_pb2

    return text_format.Parse(text, tensor_pb2.TensorProto())


def test_grpc_predict_answers_in_the_typed_fields(standard_config):
    """TF Serving's default (predict_util.cc, kAsProtoField): every element in its dtype's *_val field, as
    `Tensor::AsProtoField` writes it, and no tensor_content, so clients that read `float_val` get values."""
    outputs = _raw_predict(standard_config, "serving_default", {"x": X}).outputs
    assert outputs["y"] == _tensor(
        "dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 3 } } "
        + " ".join(f"float_val: {v}" for v in (X * 2).ravel())
    )
    assert outputs["sum"] == _tensor("dtype: DT_FLOAT tensor_shape { dim { size: 2 } } float_val: 12 float_val: 30")
    pair = _raw_predict(
        standard_config, "pair", {"a": np.array([1, 2], np.int64), "b": np.ones((2, 2), np.float32)}
    ).outputs
    assert pair["a_plus_one"] == _tensor("dtype: DT_INT64 tensor_shape { dim { size: 2 } } int64_val: 2 int64_val: 3")
    echo = _raw_predict(standard_config, "echo", {"text_bytes": np.array([b"ab", b"c"])}).outputs
    assert echo["length"] == _tensor("dtype: DT_INT32 tensor_shape { dim { size: 2 } } int_val: 2 int_val: 1")
    assert echo["doubled_bytes"] == _tensor(
        'dtype: DT_STRING tensor_shape { dim { size: 2 } } string_val: "abab" string_val: "cc"'
    )
    empty = _raw_predict(standard_config, "serving_default", {"x": np.zeros((0, 3), np.float32)}).outputs
    assert empty["y"] == _tensor("dtype: DT_FLOAT tensor_shape { dim { size: 0 } dim { size: 3 } }")


def test_classify_regress_and_multi_inference_answer_in_their_result_fields(standard_config):
    """Classify, Regress and MultiInference carry no TensorProtos: scores, labels and values sit in the typed
    fields of their results (classifier.cc, regressor.cc); the whole answer is compared field by field."""
    from google.protobuf import text_format

    stub = grpc_stub(standard_config)

    def spec(signature: str) -> str:
        return f'model_spec {{ name: "examples" version {{ value: 1 }} signature_name: "{signature}" }}'

    request = classification_pb2.ClassificationRequest(input=_examples(0.0))
    request.model_spec.name, request.model_spec.signature_name = "examples", "classify_x"
    classified = text_format.Parse(
        'result { classifications { classes { label: "low" score: 0.5 } classes { label: "high" score: 0.5 } } } '
        + spec("classify_x"),
        classification_pb2.ClassificationResponse(),
    )
    assert stub.Classify(request, timeout=30) == classified

    request = regression_pb2.RegressionRequest(input=_examples(1.0))
    request.model_spec.name, request.model_spec.signature_name = "examples", "regress_x"
    regressed = text_format.Parse(
        "result { regressions { value: 2.5 } } " + spec("regress_x"), regression_pb2.RegressionResponse()
    )
    assert stub.Regress(request, timeout=30) == regressed

    multi = _classify_and_regress(1.0)
    low, high = _scores_at(1.0)
    expected = text_format.Parse(
        f"results {{ {spec('classify_x')} classification_result {{ classifications {{ "
        f"classes {{ label: 'low' score: {low!r} }} classes {{ label: 'high' score: {high!r} }} }} }} }} "
        f"results {{ {spec('regress_x')} regression_result {{ regressions {{ value: 2.5 }} }} }}",
        inference_pb2.MultiInferenceResponse(),
    )
    assert stub.MultiInference(multi, timeout=30) == expected


def _scores_at(x: float) -> tuple[float, float]:
    """The examples model's classify_x scores in float32, as its graph computes them."""
    high = np.float32(1) / (np.float32(1) + np.exp(np.float32(-x), dtype=np.float32))
    return float(np.float32(1) - high), float(high)


@local_only
def test_tensor_content_answers_under_the_tf_serving_flag(tmp_path, model_repo):
    """--enable_serialization_as_tensor_content (server.cc: kAsProtoContent): numeric outputs as raw bytes,
    strings in TensorFlow's string-list encoding; the client reads both encodings to the same arrays."""
    from tests.support import start_test_server

    config = tmp_path / "m.config"
    scaler = f"name: 'scaler' base_path: '{model_repo / 'scaler'}' model_version_policy {{ all {{}} }}"
    config.write_text(f"model_config_list {{ config {{ {scaler} }} }}")
    flags = (f"--model_config_file={config}", "--enable_serialization_as_tensor_content")
    with start_test_server(tmp_path, tmp_path / "server.log", *flags) as server:
        outputs = _raw_predict(server, "serving_default", {"x": X}).outputs
        assert outputs["y"].tensor_content == (X * 2).tobytes() and not outputs["y"].float_val
        echo = _raw_predict(server, "echo", {"text_bytes": np.array([b"ab", b"c"])}).outputs
        assert echo["doubled_bytes"].tensor_content == bytes([4, 2]) + b"ababcc"
        with TFServingClient(server.grpc_target, timeout=30) as client:
            answer = client.predict("scaler", {"text_bytes": np.array([b"ab", b"c"])}, signature="echo", version=1)
        assert answer["doubled_bytes"].tolist() == [b"abab", b"cc"] and answer["length"].tolist() == [2, 1]


def test_rest_row_and_columnar_formats(standard_config):
    status, body = rest(standard_config, "POST", "/v1/models/scaler/versions/1:predict", {"instances": X.tolist()})
    assert status == 200
    assert body == {"predictions": [{"y": [2.0, 4.0, 6.0], "sum": 12.0}, {"y": [8.0, 10.0, 12.0], "sum": 30.0}]}
    status, body = rest(standard_config, "POST", "/v1/models/scaler/labels/stable:predict", {"inputs": X.tolist()})
    assert status == 200
    assert body == {"outputs": {"y": [[2.0, 4.0, 6.0], [8.0, 10.0, 12.0]], "sum": [12.0, 30.0]}}
    status, body = rest(
        standard_config, "POST", "/v1/models/scaler/versions/1:predict", {"instances": [[0.1, 0.2, 0.3]]}
    )
    assert body["predictions"][0]["y"] == [0.2, 0.4, 0.6]  # float32 printed at its own precision


def test_rest_named_inputs_in_both_formats(standard_config):
    rows = {"signature_name": "pair", "instances": [{"a": 1, "b": [0.5, 0.5]}, {"a": 2, "b": [1.0, 2.0]}]}
    status, body = rest(standard_config, "POST", "/v1/models/scaler:predict", rows)
    assert status == 200
    assert body == {"predictions": [{"a_plus_one": 2, "b_total": 2.0}, {"a_plus_one": 3, "b_total": 5.0}]}
    columns = {"signature_name": "pair", "inputs": {"a": [1, 2], "b": [[0.5, 0.5], [1.0, 2.0]]}}
    status, body = rest(standard_config, "POST", "/v1/models/scaler:predict", columns)
    assert status == 200 and body == {"outputs": {"a_plus_one": [2, 3], "b_total": [2.0, 5.0]}}


def test_rest_binary_values_as_b64(standard_config):
    body = {"signature_name": "echo", "instances": [{"b64": "AAEC"}, {"b64": "/w=="}]}  # bytes 00 01 02, ff
    status, reply = rest(standard_config, "POST", "/v1/models/scaler:predict", body)
    assert status == 200
    assert reply["predictions"] == [
        {"length": 3, "doubled_bytes": {"b64": "AAECAAEC"}},
        {"length": 1, "doubled_bytes": {"b64": "//8="}},
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fashion_model_answers_like_the_saved_model(standard_config, trained_run, protocol):
    columns, labels = trained_run["snapshot"].split_columns("test[:16]")
    images = columns["images"][..., 0]
    version_dir = sorted((standard_config.models_dir / "fashion").glob("[0-9]*"))[-1]
    expected = tf.saved_model.load(str(version_dir)).signatures["serving_default"](images=tf.constant(images))
    with standard_config.client(protocol) as client:
        result = client.predict("fashion", {"images": images})
    np.testing.assert_allclose(result["probabilities"].astype(np.float32), expected["probabilities"].numpy(), atol=1e-6)
    assert result["class_ids"].tolist() == expected["class_ids"].numpy().tolist()
    names = [n.decode() if isinstance(n, bytes) else n for n in result["class_names"].tolist()]
    assert names == [n.decode() for n in expected["class_names"].numpy()]


# --- classify, regress, multi-inference ------------------------------------------------


def _examples(*values: float) -> input_pb2.Input:
    model_input = input_pb2.Input()
    for value in values:
        example = model_input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(value)
    return model_input


def _classify_and_regress(*values: float):
    """A MultiInferenceRequest running the examples model's classify_x and regress_x on `values`."""
    multi = inference_pb2.MultiInferenceRequest(input=_examples(*values))
    for method, signature in (
        ("tensorflow/serving/classify", "classify_x"),
        ("tensorflow/serving/regress", "regress_x"),
    ):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "examples", signature
    return multi


def test_grpc_classify_regress_and_multi_inference(standard_config):
    stub = grpc_stub(standard_config)
    request = classification_pb2.ClassificationRequest(input=_examples(0.0, 2.0))
    request.model_spec.name, request.model_spec.signature_name = "examples", "classify_x"
    result = stub.Classify(request, timeout=30).result
    assert [[c.label for c in r.classes] for r in result.classifications] == [["low", "high"]] * 2
    assert result.classifications[0].classes[1].score == pytest.approx(0.5)
    assert result.classifications[1].classes[1].score == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-5)

    request = regression_pb2.RegressionRequest(input=_examples(1.0, 4.0))
    request.model_spec.name, request.model_spec.signature_name = "examples", "regress_x"
    assert [r.value for r in stub.Regress(request, timeout=30).result.regressions] == [2.5, 4.0]

    multi = _classify_and_regress(2.0)
    results = stub.MultiInference(multi, timeout=30).results
    assert results[0].classification_result.classifications[0].classes[0].label == "low"
    assert results[1].regression_result.regressions[0].value == pytest.approx(3.0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tf_serving_quick_start(server, model_repo, protocol):
    """TF Serving's README: half_plus_two (x [?,1]) takes {"instances": [1.0, 2.0, 5.0]}; the graph decides shapes."""
    half = "config { name: 'half_plus_two' base_path: '{base}/half_plus_two' model_platform: 'tensorflow' }"
    with server.client() as client:
        client.reload_config(server.config_text(half))
    if protocol == "rest":
        status, reply = rest(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]})
        assert (status, reply) == (200, {"predictions": [2.5, 3.0, 4.5]})
        status, reply = rest(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [[[1.0, 2.0]]]})
        assert status == 200  # broadcasting is the graph's business, as in TF Serving
        return
    with server.client() as client:
        assert client.predict("half_plus_two", {"x": np.array([1.0], np.float32)})["y"].tolist() == [2.5]


def test_a_saved_model_as_tensorflow_1_0_wrote_it_serves(server, model_repo):
    """TF Serving feeds TF1 signatures by tensor name and lets the graph judge shapes: a signature without
    shapes and placeholders with an empty `shape` (TF Serving's own saved_model_half_plus_three) serve."""
    if not (model_repo / "tf1_0" / "1").exists():
        sample_models.save_as_tf1_0_wrote_it(model_repo / "tf1_0", 1)
    with server.client() as client:
        client.reload_config(
            server.config_text("config { name: 'tf1_0' base_path: '{base}/tf1_0' model_platform: 'tensorflow' }")
        )
        assert client.predict("tf1_0", {"x": np.array([1.0, 4.0], np.float32)})["y"].tolist() == [2.5, 4.0]
    request = regression_pb2.RegressionRequest(input=_examples(2.0))
    request.model_spec.name, request.model_spec.signature_name = "tf1_0", "regress_x"
    assert [r.value for r in grpc_stub(server).Regress(request, timeout=30).result.regressions] == [3.0]


def test_rest_classify_and_regress(standard_config):
    body = {"signature_name": "classify_x", "examples": [{"x": 0.0}, {"x": [2.0]}]}
    status, reply = rest(standard_config, "POST", "/v1/models/examples:classify", body)
    assert status == 200
    assert reply["results"][0] == [["low", pytest.approx(0.5)], ["high", pytest.approx(0.5)]]
    body = {"signature_name": "regress_x", "context": {"x": 1.0}, "examples": [{}, {"x": 6.0}]}
    status, reply = rest(standard_config, "POST", "/v1/models/examples/versions/1:regress", body)
    assert status == 200 and reply == {"results": [2.5, 5.0]}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_on_a_signature_without_classification_inputs_is_refused(standard_config, protocol):
    """TF Serving checks the signature's structure (classifier.cc), not its method_name, by default."""
    if protocol == "rest":
        status, reply = rest(standard_config, "POST", "/v1/models/scaler:classify", {"examples": [{"x": 1.0}]})
        assert status == 400 and reply["error"].startswith("No classification inputs found in SignatureDef: ")
        return
    request = classification_pb2.ClassificationRequest(input=_examples(1.0))
    request.model_spec.name = "scaler"
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub(standard_config).Classify(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("No classification inputs found in SignatureDef: ")


def test_regress_on_a_tf2_signature_whose_method_name_says_predict(standard_config):
    """--enable_signature_method_name_check is off by default (model_servers/server.h)."""
    body = {"signature_name": "regress_as_predict", "examples": [{"x": 1.0}, {"x": 6.0}]}
    status, reply = rest(standard_config, "POST", "/v1/models/examples:regress", body)
    assert status == 200 and reply == {"results": [2.5, 5.0]}


# --- versions, policies, labels, reload -------------------------------------------------


def _available(client, model):
    try:
        return sorted(v["version"] for v in client.status(model) if v["state"] == "AVAILABLE")
    except ServingError:
        return []


def test_version_policies(server, model_repo):
    with server.client() as client:
        for policy, expected in (
            ("latest { num_versions: 1 }", [2]),
            ("all {}", [1, 2]),
            ("specific { versions: 1 }", [1]),
        ):
            client.reload_config(
                server.config_text(
                    f"config {{ name: 'scaler' base_path: '{{base}}/scaler' model_platform: 'tensorflow' "
                    f"model_version_policy {{ {policy} }} }}"
                )
            )
            assert wait_for(lambda e=expected: _available(client, "scaler") == e and e), policy
            assert client.predict("scaler", {"x": X}).version == expected[-1]


def test_reload_replaces_the_whole_config(standard_config):
    server = standard_config
    with server.client() as client:
        client.reload_config(server.config_text(SCALER, EXAMPLES))
        assert client.predict("examples", {"x": np.array([2.0], np.float32)})["y"].tolist() == [3.0]
        client.reload_config(server.config_text(SCALER))
        with pytest.raises(ServingError) as caught:
            client.predict("examples", {"x": np.array([2.0], np.float32)})
        assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_label_on_an_unavailable_version_is_refused_and_nothing_changes(standard_config):
    """Labels are checked against the versions available when a config is applied (server_core.cc)."""
    bad = SCALER.replace("key: 'canary' value: 2", "key: 'canary' value: 3")  # there is no version 3
    with standard_config.client() as client:
        with pytest.raises(ServingError) as caught:
            client.reload_config(standard_config.config_text(bad, EXAMPLES, FASHION))
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.message == (
            "Request to assign label to version 3 of model scaler, which is not currently available for inference"
        )
        assert client.predict("scaler", {"x": X}, label="canary")["y"].tolist() == (X * 3).tolist()


@local_only
def test_a_config_with_labels_starts_only_with_allow_version_labels_for_unavailable_models(tmp_path, model_repo):
    """TF Serving checks labels before it loads anything: a labelled config cannot start a bare server."""
    from tests.support import start_test_server

    config = tmp_path / "labelled.config"
    config.write_text(
        f"model_config_list {{ config {{ name: 'scaler' base_path: '{model_repo / 'scaler'}' "
        "model_platform: 'tensorflow' model_version_policy { all {} } version_labels { key: 'stable' value: 1 } } }"
    )
    refused = start_test_server(tmp_path, tmp_path / "refused.log", f"--model_config_file={config}", wait=False)
    assert refused.process.wait(timeout=120) != 0
    assert "Request to assign label to version 1 of model scaler, which is not currently available" in refused.logs()

    allowed = start_test_server(
        tmp_path,
        tmp_path / "allowed.log",
        f"--model_config_file={config}",
        "--allow_version_labels_for_unavailable_models",
    )
    with allowed, TFServingClient(allowed.grpc_target, allowed.rest_url) as client:
        assert client.predict("scaler", {"x": X}, label="stable")["y"].tolist() == (X * 2).tolist()
        with pytest.raises(ServingError) as caught:  # moving an existing label still needs the target available
            client.reload_config(config.read_text().replace("value: 1", "value: 7"))
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_hot_swap_under_load_has_no_failures(server, model_repo):
    base = server.models_dir / "swap"
    sample_models.copy_version(model_repo / "scaler" / "1", base, 1)
    with server.client() as client:
        client.reload_config(
            server.config_text("config { name: 'swap' base_path: '{base}/swap' model_platform: 'tensorflow' }")
        )
    failures, answers, stop = [], set(), threading.Event()

    def hammer(protocol):
        with server.client(protocol, retries=0) as client:
            while not stop.is_set():
                try:
                    y = client.predict("swap", {"x": X})["y"]
                    answers.add(float(y[0][0]))
                except ServingError as err:
                    failures.append(f"{protocol}: {err}")

    threads = [threading.Thread(target=hammer, args=(p,)) for p in PROTOCOLS]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: 2.0 in answers)
        sample_models.copy_version(model_repo / "scaler" / "2", base, 2)  # scale 3
        wait_for(lambda: 3.0 in answers)
        time.sleep(1.0)  # keep calling while version 1 unloads
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    with server.client() as client:
        assert wait_for(lambda: _available(client, "swap") == [2])
    if server.local:  # the local server logs loads and unloads as JSON lines
        assert '"event": "unload", "model": "swap", "version": 1' in server.logs()


def test_broken_version_next_to_a_good_one(server, model_repo):
    base = server.models_dir / "fragile"
    sample_models.copy_version(model_repo / "scaler" / "1", base, 1)
    with server.client() as client:
        client.reload_config(
            server.config_text("config { name: 'fragile' base_path: '{base}/fragile' model_platform: 'tensorflow' }")
        )
        sample_models.write_broken_version(base, 2)

        def failed():
            states = {v["version"]: v for v in client.status("fragile")}
            return states.get(2) if states.get(2, {}).get("state") == "END" else None

        broken = wait_for(failed)
        assert broken["error_code"] != "OK" and broken["error_message"]
        assert client.predict("fragile", {"x": X})["y"].tolist() == (X * 2).tolist()  # v1 still serves
        assert _available(client, "fragile") == [1]


def test_more_than_1000_warmup_records_fail_the_load(server, model_repo):
    """saved_model_warmup_util.cc: the 1001st record fails the load with INVALID_ARGUMENT."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    base = server.models_dir / "overwarm"
    staging = server.models_dir / ".tmp-overwarm"
    shutil.copytree(model_repo / "scaler" / "1", staging)
    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 3), np.float32)))
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    with tf.io.TFRecordWriter(str(staging / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for _ in range(1001):
            writer.write(record.SerializeToString())
    base.mkdir()
    staging.rename(base / "1")
    with server.client(timeout=300) as client:  # the reload waits while 1,001 records replay
        client.reload_config(
            server.config_text("config { name: 'overwarm' base_path: '{base}/overwarm' model_platform: 'tensorflow' }")
        )
        (state,) = wait_for(lambda: [v for v in client.status("overwarm") if v["state"] == "END"] or None)
    assert state["error_code"] == "INVALID_ARGUMENT"
    assert state["error_message"].startswith("Number of warmup records exceeds the maximum (1000) at ")


# --- batching and metrics ------------------------------------------------------------------


def test_concurrent_requests_get_the_same_answers_as_alone(standard_config, trained_run):
    images = trained_run["snapshot"].split_columns("test[:48]")[0]["images"][..., 0]
    with standard_config.client() as client:
        alone = [client.predict("fashion", {"images": images[i : i + 1]})["probabilities"] for i in range(48)]
    results: dict[int, np.ndarray] = {}

    def call(index):
        with standard_config.client() as client:
            results[index] = client.predict("fashion", {"images": images[index : index + 1]})["probabilities"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(48)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(48):
        np.testing.assert_allclose(results[index], alone[index], atol=1e-6)


def test_prometheus_metrics(standard_config):
    with standard_config.client("rest") as client:
        client.predict("scaler", {"x": X}, version=1)
    request = urllib.request.urlopen(standard_config.rest_url + "/monitoring/prometheus/metrics", timeout=30)
    assert request.status == 200
    text = request.read().decode()
    assert ":tensorflow:serving:request_count" in text
    assert 'model_name="scaler"' in text


@local_only
def test_local_metrics_cover_versions_latency_batches_and_loads(standard_config, trained_run):
    with standard_config.client() as client:
        client.predict("scaler", {"x": X}, version=1)
        with pytest.raises(ServingError):
            client.predict("scaler", {"x": X}, version=99)
    text = urllib.request.urlopen(standard_config.rest_url + "/monitoring/prometheus/metrics").read().decode()
    # TF Serving's exporter: request_count {model_name, status}; request_latency {model_name, API, entrypoint}.
    assert ':tensorflow:serving:request_count{model_name="scaler",status="OK"}' in text
    assert ':tensorflow:serving:request_latency_bucket{API="Predict",entrypoint="GRPC",model_name="scaler",le=' in text
    assert "# TYPE :tensorflow:serving:request_count counter" in text and "# HELP" not in text
    assert ":tensorflow:serving:batching_session:processed_batch_size_count" in text
    # batching_session.cc's queuing_latency {thread_pool_name}, and this project's queue-depth gauges.
    assert ":tensorflow:serving:batching_session:queuing_latency_count{thread_pool_name=" in text
    assert ':mlops:serving:batching_queue_tasks{model_name="scaler",version="1"} 0' in text
    assert ':mlops:serving:batching_queue_rows{model_name="scaler",version="1"} 0' in text
    assert ':tensorflow:cc:saved_model:load_attempt_count{model_path="' in text
    assert ':tensorflow:serving:request_count{model_name="scaler",status="NOT_FOUND"}' in text  # failures count too
    with standard_config.client() as client:
        for index in range(3):
            with pytest.raises(ServingError):
                client.predict(f"made-up-{index}", {"x": X})
    text = urllib.request.urlopen(standard_config.rest_url + "/monitoring/prometheus/metrics").read().decode()
    assert "made-up" not in text  # unknown names share one series: label values stay bounded
    assert ':tensorflow:serving:request_count{model_name="<unknown>",status="NOT_FOUND"}' in text
    assert 'status="NOT_FOUND"' not in text.split(":tensorflow:serving:request_latency", 1)[1]  # latency: OK only
