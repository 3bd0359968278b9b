"""`make tf-serving-suite`: TF Serving's own model-server integration tests against the local server.

TF Serving tests its binary with `tensorflow_serving/model_servers/tensorflow_model_server_test.py`:
its harness (`test_util/tensorflow_model_server_test_base.py`) starts
`$TEST_SRCDIR/tf_serving/tensorflow_serving/model_servers/tensorflow_model_server` with the real
flags (`--port`, `--rest_api_port`, `--rest_api_timeout_in_ms`, `--grpc_socket_path`,
`--model_config_file` or `--model_name`/`--model_base_path`, `--enable_batching`,
`--grpc_channel_arguments`, ...) and calls it over gRPC and REST. This script lays out such a
`TEST_SRCDIR` in a temporary folder, with the binary's place taken by a two-line launcher of
`python -m serving.server`, and runs the test file unchanged from a TF Serving source checkout
(`git clone https://github.com/tensorflow/serving`; nothing is downloaded here and nothing of it
is copied into this project). The outcome of every test goes to
bench/results/tf_serving_suite.{json,md}.

A few tests need what only TF Serving's own build has (TFLite, the profiler service, the
TF Text ops); they are reported apart as environment-only, with the reason.

    .venv/bin/python bench/tf_serving_suite.py --tf-serving-src ~/src/serving
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_report  # noqa: E402

TEST_FILE = "tensorflow_serving/model_servers/tensorflow_model_server_test.py"
TESTDATA = "tensorflow_serving/servables/tensorflow/testdata"

# Tests that exercise parts of TF Serving's own build that the local server does not have.
ENVIRONMENT_ONLY = {
    "testPredictOnTfLite": "serves a TFLite model (--prefer_tflite_model); the local server serves SavedModels",
    "testPredictWithSignatureDefOnTfLite": "serves a TFLite model (--prefer_tflite_model)",
    "test_profiler_service_with_valid_trace_request": "TensorFlow's profiler service on the gRPC port",
    "test_tf_text": "needs the TF Text ops (tensorflow-text) and the tf_text_regression test model",
}


def write_launcher(path: Path, python: str) -> None:
    """Writes the stand-in for `tensorflow_model_server`: this project's server with the same flags."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        f'exec {shlex.quote(python)} -m serving.server "$@"\n'
    )
    path.chmod(0o755)


def write_import_overlay(folder: Path, source: Path) -> None:
    """A `tensorflow_serving` package that is the installed one (its generated `apis`) plus the
    checkout's folders (`model_servers.test_util`), so the test file imports as it does under Bazel."""
    import tensorflow_serving

    package = folder / "tensorflow_serving"
    package.mkdir(parents=True, exist_ok=True)
    paths = [*tensorflow_serving.__path__, str(source / "tensorflow_serving")]
    (package / "__init__.py").write_text(f"__path__[:] = {paths!r}\n")


def prepare(source: Path, work: Path, python: str) -> dict[str, str]:
    """Lays out TEST_SRCDIR and the import overlay; returns the environment to run the tests in.

    Raises:
        FileNotFoundError: `source` is not a TF Serving checkout.
    """
    for needed in (TEST_FILE, TESTDATA):
        if not (source / needed).exists():
            raise FileNotFoundError(f"{source} is not a TF Serving source checkout: {needed} is missing")
    srcdir = work / "srcdir"
    tree = srcdir / "tf_serving" / "tensorflow_serving"
    write_launcher(tree / "model_servers" / "tensorflow_model_server", python)
    (tree / "servables" / "tensorflow").mkdir(parents=True, exist_ok=True)
    testdata = tree / "servables" / "tensorflow" / "testdata"
    if not testdata.exists():
        testdata.symlink_to(source / TESTDATA)
    overlay = work / "overlay"
    write_import_overlay(overlay, source)
    return {
        **os.environ,
        "TEST_SRCDIR": str(srcdir),
        "PYTHONPATH": os.pathsep.join([str(overlay), str(ROOT)]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # The test file builds models with tf.keras as TF Serving's build has it: Keras 2 (tf-keras).
        "TF_USE_LEGACY_KERAS": "1",
    }


def outcomes(xml_path: Path) -> dict[str, dict]:
    """Each test's outcome from absltest's XML report: passed, failed (with the message) or skipped."""
    results = {}
    for case in ElementTree.parse(xml_path).getroot().iter("testcase"):
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            results[case.get("name")] = {"outcome": "failed", "message": (failure.get("message") or "")[:600]}
        elif case.find("skipped") is not None or case.get("result") == "suppressed":
            results[case.get("name")] = {"outcome": "skipped"}
        else:
            results[case.get("name")] = {"outcome": "passed", "seconds": float(case.get("time") or 0)}
    return results


def run_suite(source: Path, python: str = sys.executable, timeout_s: float = 1800) -> dict:
    """Runs TF Serving's model-server test file against the local server.

    Args:
        source: A TF Serving source checkout.
        python: The interpreter for the tests and the server.
        timeout_s: Limit for the whole run.

    Returns:
        Per-test outcomes and the counts, with environment-only tests apart.
    """
    with tempfile.TemporaryDirectory(prefix="tf-serving-suite-") as tmp:
        work = Path(tmp)
        env = prepare(source, work, python)
        xml_path = work / "results.xml"
        started = time.perf_counter()
        process = subprocess.run(
            [python, str(source / TEST_FILE), f"--xml_output_file={xml_path}", f"--test_tmpdir={work / 'tmp'}"],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        seconds = time.perf_counter() - started
        if not xml_path.exists():
            raise RuntimeError(f"the test file did not run (exit {process.returncode}):\n{process.stderr[-3000:]}")
        tests = outcomes(xml_path)
    for name, reason in ENVIRONMENT_ONLY.items():
        if name in tests:
            tests[name]["environment_only"] = reason
    counted = {name: t for name, t in tests.items() if "environment_only" not in t}
    return {
        "tests": tests,
        "passed": sum(t["outcome"] == "passed" for t in counted.values()),
        "counted": len(counted),
        "environment_only": len(tests) - len(counted),
        "environment_only_passed": sum(t["outcome"] == "passed" for n, t in tests.items() if n not in counted),
        "failed": sorted(name for name, t in counted.items() if t["outcome"] != "passed"),
        "seconds": round(seconds, 1),
    }


def markdown(results: dict) -> str:
    suite = results["suite"]
    lines = [
        "# TF Serving's model-server tests against the local server",
        "",
        f"{results['machine']}; {TEST_FILE} at {results['source_commit']}.",
        "",
        f"**{suite['passed']} of {suite['counted']} pass** ({suite['environment_only']} environment-only tests "
        f"apart, {suite['environment_only_passed']} of them pass anyway); {suite['seconds']} s.",
        "",
        "| test | outcome | note |",
        "|---|---|---|",
    ]
    for name, test in sorted(suite["tests"].items()):
        note = test.get("environment_only") or test.get("message", "").replace("\n", " ")[:160]
        lines.append(f"| {name} | {test['outcome']} | {note} |")
    return "\n".join(lines) + "\n"


def _commit(source: Path) -> str:
    found = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() or "an unversioned copy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--tf-serving-src", required=True, help="a checkout of github.com/tensorflow/serving")
    parser.add_argument("--source-commit", default="", help="the checkout's commit, where it is not a git clone")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    source = Path(args.tf_serving_src).expanduser().resolve()
    results = {
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}",
        "source_commit": args.source_commit or _commit(source),
        "suite": run_suite(source),
    }
    write_report(Path(args.out_dir), "tf_serving_suite", results, markdown(results))
    suite = results["suite"]
    print(f"{suite['passed']} of {suite['counted']} pass; failed: {suite['failed'] or 'none'}")
    sys.exit(0 if not suite["failed"] else 1)


if __name__ == "__main__":
    main()
