"""Infra-validation (what TFX's InfraValidator does): the candidate must load and answer in a real server.

By default the candidate version is served by a sandboxed local server process (the
same `python -m serving.server` production code paths, on free loopback ports); with
`infra_validation_grpc_target` set, by a dedicated TF Serving instead. Its warmup
requests and real test images are sent over gRPC and REST, and every answer must equal
what the SavedModel answers in-process. Any load failure, timeout or wrong answer
raises, which blocks promotion.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError
from pipeline.promotion import render_config, wait_available
from pipeline.snapshot import Snapshot

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


class InfraValidationError(PipelineError):
    """The candidate failed to load, timed out or answered wrongly in a serving process."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reference_answers(version_dir: Path, images: np.ndarray) -> np.ndarray:
    """The candidate's class ids for `images`, computed in-process from the SavedModel."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return serve(images=tf.constant(images))["class_ids"].numpy().astype(np.int64)


def _warmup_requests(version_dir: Path) -> list[dict[str, np.ndarray]]:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    requests = []
    if path.exists():
        for record in tf.data.TFRecordDataset(str(path)):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if entry.WhichOneof("log_type") == "predict_log":
                inputs = entry.predict_log.request.inputs
                requests.append({name: tf.make_ndarray(proto) for name, proto in inputs.items()})
    return requests


@contextlib.contextmanager
def sandbox_server(model_name: str, version_dir: Path, timeout_s: float):
    """Runs a local server serving only `version_dir` (as version 1); yields (grpc target, rest url)."""
    with tempfile.TemporaryDirectory(prefix="infra-validation-") as scratch:
        base = Path(scratch) / model_name
        base.mkdir()
        (base / "1").symlink_to(version_dir.resolve(), target_is_directory=True)
        grpc_port, rest_port = _free_port(), _free_port()
        log_path = Path(scratch) / "server.log"
        command = [
            sys.executable, "-m", "serving.server", f"--model_name={model_name}", f"--model_base_path={base}",
            f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--file_system_poll_wait_seconds=0",
            "--max_num_load_retries=0",
        ]  # fmt: skip
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _wait_listening(process, rest_port, log_path, timeout_s)
            yield f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_listening(process: subprocess.Popen, port: int, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text()[-2000:]
            raise InfraValidationError(f"the sandbox server exited with {process.returncode} while loading: {tail}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise InfraValidationError(f"the candidate did not load within {timeout_s:g}s")


def _check_answers(client, model_name: str, version_dir: Path, images) -> dict[str, Any]:
    """Replays the warmup requests, then compares gRPC and REST answers with the SavedModel's own."""
    from serving.protocol import ServingError

    checked: dict[str, Any] = {"warmup_requests": 0}
    try:
        for inputs in _warmup_requests(version_dir):
            client.predict(model_name, inputs, protocol="grpc")
            checked["warmup_requests"] += 1
        expected = reference_answers(version_dir, images)
        for protocol in ("grpc", "rest") if client.rest_url else ("grpc",):
            got = np.asarray(client.predict(model_name, {"images": images}, protocol=protocol)["class_ids"])
            if not np.array_equal(got.astype(np.int64), expected):
                wrong = int((got != expected).sum())
                raise InfraValidationError(
                    f"{wrong} of {len(expected)} answers over {protocol} differ from the model's"
                )
            checked[protocol] = len(got)
    except ServingError as err:
        raise InfraValidationError(f"the candidate failed a request: {err.code.name}: {err.message}") from err
    return checked


def _wait_loaded(client, model_name: str, version: int, timeout_s: float) -> None:
    try:
        wait_available(client, model_name, [version], timeout_s)
    except PipelineError as err:
        raise InfraValidationError(f"the candidate did not load: {err}") from err


def infra_validate(config: PipelineConfig, snapshot: Snapshot, version_dir: str | Path) -> dict[str, Any]:
    """Loads the candidate into a serving process and checks its answers.

    Args:
        config: Uses `model_name`, `test_split`, `smoke_test_examples`, `infra_validation_*`.
        snapshot: The data snapshot (real test images).
        version_dir: The exported candidate version folder.

    Returns:
        What was checked: endpoint, load seconds, warmup requests and examples per protocol.

    Raises:
        InfraValidationError: on a load failure, a timeout or a wrong answer.
    """
    from serving.client import TFServingClient
    from serving.protocol import ServingError

    version_dir = Path(version_dir)
    split = f"{config.test_split.split('[', 1)[0]}[:{config.smoke_test_examples}]"
    images, _ = snapshot.split_arrays(split)
    images = images[..., 0] if images.shape[-1] == 1 else images
    started = time.monotonic()
    if config.infra_validation_grpc_target:
        name = f"{config.model_name}_infra_validation"
        version = int(version_dir.name)
        rest_url = config.infra_validation_rest_url or ""
        with TFServingClient(config.infra_validation_grpc_target, rest_url, timeout=30) as client:
            try:
                client.reload_config(render_config(config, [version], {}, served_name=name))
            except ServingError as err:
                raise InfraValidationError(f"the infra-validation server refused the candidate: {err}") from err
            _wait_loaded(client, name, version, config.infra_validation_timeout_s)
            checked = _check_answers(client, name, version_dir, images)
        endpoint = config.infra_validation_grpc_target
    else:
        sandbox = sandbox_server(config.model_name, version_dir, config.infra_validation_timeout_s)
        with sandbox as (target, url), TFServingClient(target, url, timeout=30, retries=5) as client:
            _wait_loaded(client, config.model_name, 1, config.infra_validation_timeout_s)
            checked = _check_answers(client, config.model_name, version_dir, images)
        endpoint = "sandboxed local server"
    result = {"endpoint": endpoint, "seconds": round(time.monotonic() - started, 2), **checked}
    log.info("infra-validation passed: %s", result)
    return result
