"""bench/tf_serving_suite.py's layout for TF Serving's harness, on a stand-in checkout (the real
suite needs a TF Serving source checkout: `make tf-serving-suite TF_SERVING_SRC=...`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from bench import tf_serving_suite


def _checkout(root):
    (root / tf_serving_suite.TESTDATA).mkdir(parents=True)
    (root / tf_serving_suite.TEST_FILE).parent.mkdir(parents=True)
    (root / tf_serving_suite.TEST_FILE).write_text("")
    helper = root / "tensorflow_serving" / "model_servers" / "test_util" / "harness_helper.py"
    helper.parent.mkdir(parents=True)
    helper.write_text("ANSWER = 42\n")
    return root


def test_the_binarys_place_runs_the_local_server_and_the_tests_import_both_packages(tmp_path):
    source = _checkout(tmp_path / "serving")
    env = tf_serving_suite.prepare(source, tmp_path / "work", sys.executable)
    binary = tmp_path / "work" / "srcdir" / "tf_serving" / "tensorflow_serving" / "model_servers"
    version = subprocess.run(
        [str(binary / "tensorflow_model_server"), "--version"], env=env, capture_output=True, text=True, timeout=120
    )
    assert version.returncode == 0 and "TensorFlow ModelServer" in version.stdout
    probe = textwrap.dedent(
        """
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.model_servers.test_util import harness_helper
        print(harness_helper.ANSWER, predict_pb2.PredictRequest.__name__)
        """
    )
    imported = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert imported.stdout.split() == ["42", "PredictRequest"], imported.stderr[-2000:]


def test_a_folder_that_is_not_a_checkout_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a TF Serving source checkout"):
        tf_serving_suite.prepare(tmp_path, tmp_path / "work", sys.executable)


def test_outcomes_are_read_from_absltests_xml_report(tmp_path):
    report = tmp_path / "results.xml"
    report.write_text(
        '<testsuites><testsuite name="T">'
        '<testcase name="testA" time="1.5"/>'
        '<testcase name="testB"><failure message="AssertionError: 0 != 1"/></testcase>'
        '<testcase name="testC"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    assert tf_serving_suite.outcomes(report) == {
        "testA": {"outcome": "passed", "seconds": 1.5},
        "testB": {"outcome": "failed", "message": "AssertionError: 0 != 1"},
        "testC": {"outcome": "skipped"},
    }
