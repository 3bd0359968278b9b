"""Table models served: named inputs in TF Serving's row and columnar formats, Classify/Regress, the rows CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from pipeline.core import model_repo
from pipeline.training.export import rows_to_examples
from serving.protocol import ServingError
from tests.support import REPO_ROOT, export_candidate, table_rows, write_table

TABLES = """config { name: 'loans' base_path: '{base}/loans' model_platform: 'tensorflow' }
config { name: 'houses' base_path: '{base}/houses' model_platform: 'tensorflow' }"""


@pytest.fixture(scope="module")
def table_models(server, table_run):
    """The binary (loans) and regression (houses) table models, published where the server looks."""
    published = {}
    for name, task in (("loans", "binary"), ("houses", "regression")):
        run = table_run(task)
        config = run["config"].replace(model_base_path=str(server.models_dir), model_name=name)
        published[name] = (run, export_candidate(run, config).version_dir)
    return published


@pytest.fixture
def tables(server, table_models):
    with server.client() as client:
        client.reload_config(server.config_text(TABLES))
        for name in table_models:
            for _ in range(100):
                if any(s["state"] == "AVAILABLE" for s in client.status(name)):
                    break
                import time

                time.sleep(0.1)
    return table_models


def _post(server, path, body):
    request = urllib.request.Request(
        server.rest_url + path, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _json_rows(rows: dict[str, np.ndarray]) -> list[dict]:
    count = len(next(iter(rows.values())))
    return [
        {key: values[i].item() if hasattr(values[i], "item") else values[i] for key, values in rows.items()}
        for i in range(count)
    ]


def test_the_rest_row_format_takes_one_object_per_row_and_answers_as_the_model(server, tables):
    run, version_dir = tables["loans"]
    rows = run["snapshot"].request_rows("test", 12)
    expected = model_repo.predict_saved_model(version_dir, rows)
    status, reply = _post(server, "/v1/models/loans:predict", {"instances": _json_rows(rows)})
    assert status == 200, reply
    predictions = reply["predictions"]
    assert set(predictions[0]) == {"probabilities", "class_ids", "class_names"}
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected["probabilities"], atol=1e-6)
    assert [p["class_names"] for p in predictions] == [n.decode() for n in expected["class_names"]]

    columnar = {key: values.tolist() for key, values in rows.items()}
    status, reply = _post(server, "/v1/models/loans:predict", {"inputs": columnar})
    assert status == 200 and reply["outputs"]["class_ids"] == expected["class_ids"].tolist()


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
@pytest.mark.parametrize("rest_format", ["columnar", "rows"])
def test_the_client_sends_named_features_over_both_protocols(server, tables, protocol, rest_format):
    run, version_dir = tables["houses"]
    rows = run["snapshot"].request_rows("test", 9)
    rows["size_m2"][0] = np.nan  # a missing number travels as NaN
    expected = model_repo.predict_saved_model(version_dir, rows)["predictions"]
    with server.client() as client:
        result = client.predict("houses", rows, protocol=protocol, rest_format=rest_format)
    np.testing.assert_allclose(np.asarray(result["predictions"], np.float64), expected, rtol=1e-5)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_classify_and_regress_apis_take_examples(server, tables, protocol):
    loans, loans_dir = tables["loans"]
    rows = loans["snapshot"].request_rows("test", 5)
    expected = model_repo.predict_saved_model(loans_dir, rows)["probabilities"]
    examples = rows_to_examples(loans["snapshot"].problem, rows)
    with server.client() as client:
        classes = client.classify("loans", examples, signature="classification", protocol=protocol)
        assert [[name for name, _ in row] for row in classes] == [["no", "yes"]] * 5
        np.testing.assert_allclose([[score for _, score in row] for row in classes], expected, atol=1e-5)
        houses, houses_dir = tables["houses"]
        rows = houses["snapshot"].request_rows("test", 4)
        values = client.regress(
            "houses", rows_to_examples(houses["snapshot"].problem, rows), signature="regression", protocol=protocol
        )
        np.testing.assert_allclose(values, model_repo.predict_saved_model(houses_dir, rows)["predictions"], rtol=1e-5)
        with pytest.raises(ServingError) as caught:  # the predict signature is not a classify one
            client.classify("loans", examples, protocol=protocol)
        assert caught.value.code.name == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "row, message",
    [
        ({"annual_income": 50000.0, "state": "CA"}, "keys must be equal to: annual_income,debt_ratio,state"),
        # TF Serving's own wording (util/json_tensor.cc): the row and the value, not the input's name.
        (
            {"annual_income": "lots", "debt_ratio": 0.2, "state": "CA"},
            "element: 0 of 'instances' list. Error: JSON Value: \"lots\"",
        ),
        ({"annual_income": 5.0, "debt_ratio": 0.2, "state": 7}, "element: 0 of 'instances' list. Error: JSON Value: 7"),
    ],
    ids=["missing-feature", "text-for-a-number", "number-for-text"],
)
def test_a_bad_row_is_a_400_naming_the_row_and_the_problem(server, tables, row, message):
    status, reply = _post(server, "/v1/models/loans:predict", {"instances": [row]})
    assert status == 400 and message in reply["error"], reply


def test_a_missing_input_over_grpc_is_invalid_argument_naming_it(server, tables):
    with server.client() as client, pytest.raises(ServingError) as caught:
        client.predict("loans", {"annual_income": np.array([1.0], np.float32), "state": np.array(["CA"], object)})
    assert (
        caught.value.code.name == "INVALID_ARGUMENT" and "Missing but required: ['debt_ratio']" in caught.value.message
    )


def _rows_cli(server, *args):
    command = [
        sys.executable,
        "-m",
        "serving.client",
        "--grpc-target",
        server.grpc_target,
        "--rest-url",
        server.rest_url,
        "--model",
        "loans",
        *args,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("protocol", ["--grpc", "--rest"])
def test_the_client_cli_predicts_every_row_of_a_csv_or_json_lines_file(server, tables, tmp_path, protocol):
    source = table_rows("binary", 6, seed=5)  # the user's own column names, missing values and all
    source["debt ratio"][1] = None
    csv_file = write_table(tmp_path / "new_loans.csv", source)
    result = _rows_cli(server, protocol, "predict", "--rows", str(csv_file))
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["row"] for a in answers] == [1, 2, 3, 4, 5, 6]
    assert all(a["class_names"] in ("no", "yes") and len(a["probabilities"]) == 2 for a in answers)
    run, version_dir = tables["loans"]
    rows = {
        "annual_income": np.array(source["annual income"], np.float32),
        "debt_ratio": np.array([np.nan if v is None else v for v in source["debt ratio"]], np.float32),
        "state": np.array(source["state"], object),
    }
    expected = model_repo.predict_saved_model(version_dir, rows)["class_ids"].tolist()
    assert [a["class_ids"] for a in answers] == expected

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"annual income": 60000, "debt ratio": None, "state": "WA"}) for _ in range(2))
    )
    assert len(_rows_cli(server, protocol, "predict", "--rows", str(jsonl)).stdout.splitlines()) == 2


def test_the_client_cli_names_a_row_that_misses_a_feature(server, tables, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("annual income,state\n50000,CA\n")
    result = _rows_cli(server, "predict", "--rows", str(bad))
    assert result.returncode == 2 and "bad.csv row 1 has no value for feature 'debt_ratio'" in result.stderr
    worse = tmp_path / "worse.jsonl"
    worse.write_text('{"annual income": "lots", "debt ratio": 0.1, "state": "CA"}\n')
    result = _rows_cli(server, "predict", "--rows", str(worse))
    assert (
        result.returncode == 2 and "worse.jsonl row 1, feature 'annual_income': 'lots' is not a number" in result.stderr
    )


def test_the_client_cli_refuses_an_image_for_a_table_model(server, tables, tmp_path):
    image = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(image)
    result = _rows_cli(server, "predict", "--image", str(image))
    assert result.returncode == 2
    assert "--image needs a model whose one input is an image; loans takes annual_income (DT_FLOAT)" in result.stderr
    assert "use --rows" in result.stderr


def test_an_example_of_the_wrong_type_is_a_400_naming_the_feature(server, tables):
    body = {
        "signature_name": "classification",
        "examples": [{"annual_income": 50000, "debt_ratio": 0.2, "state": "CA"}],
    }
    status, reply = _post(server, "/v1/models/loans:classify", body)  # 50000 is a JSON integer: an int64 list
    assert status == 400
    assert reply["error"].endswith(
        "Key: annual_income, Index: 0.  Data types don't match. Data type: int64 but expected type: float"
    )
