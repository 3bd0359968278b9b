"""Infra-validation (what TFX's InfraValidator does): the candidate must load and answer in a real server.

By default the candidate version is served by a sandboxed local server process (the
same `python -m serving.server` production code paths, on free loopback ports); with
`infra_validation_grpc_target` set, by a dedicated TF Serving instead. Its warmup
requests and real test rows are sent over gRPC and REST, and every answer must equal
what the SavedModel answers in-process. Any load failure, timeout or wrong answer
raises, which blocks promotion.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core import model_repo
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import InfraValidationError, PipelineError
from pipeline.data.snapshot import TEST, Snapshot
from pipeline.release.promotion import render_config, wait_available
from pipeline.release.smoke_test import check_answers

log = logging.getLogger(__name__)


@contextlib.contextmanager
def sandbox_server(model_name: str, version_dir: Path, timeout_s: float) -> Iterator[tuple[str, str]]:
    """Runs a local server serving only `version_dir` (as version 1); yields (grpc target, rest url).

    Raises:
        InfraValidationError: if the server exits or does not answer within `timeout_s`.
    """
    from serving import launcher

    with tempfile.TemporaryDirectory(prefix="infra-validation-") as scratch:
        base = Path(scratch) / model_name
        base.mkdir()
        (base / "1").symlink_to(version_dir.resolve(), target_is_directory=True)
        args = [
            f"--model_name={model_name}",
            f"--model_base_path={base}",
            "--file_system_poll_wait_seconds=0",
            "--max_num_load_retries=0",
        ]
        try:
            server = launcher.start(args, log_path=Path(scratch) / "server.log", timeout_s=timeout_s)
        except launcher.ServerStartError as err:
            if err.exit_code is None:
                raise InfraValidationError(f"the candidate did not load within {timeout_s:g}s") from err
            raise InfraValidationError(f"the sandbox server failed while loading the candidate: {err}") from err
        with server:
            yield server.grpc_target, server.rest_url


def _replay(client, model_name: str, records: list) -> None:
    """Sends a version's warmup records (Predict, Classify, Regress) to the server, under `model_name`."""
    from serving import tensors

    for record in records:
        kind = record.WhichOneof("log_type")
        if kind == "predict_log":
            request = record.predict_log.request
            inputs = {name: tensors.to_array(proto) for name, proto in request.inputs.items()}
            client.predict(model_name, inputs, signature=request.model_spec.signature_name, protocol="grpc")
        elif kind in ("classify_log", "regress_log"):
            request = getattr(record, kind).request
            call = client.classify if kind == "classify_log" else client.regress
            call(model_name, list(request.input.example_list.examples), signature=request.model_spec.signature_name)


def _check_answers(client, model_name: str, version_dir: Path, rows: dict) -> dict[str, Any]:
    """Replays the warmup requests, then compares gRPC and REST answers with the SavedModel's own."""
    from serving.protocol import ServingError

    try:
        warmups = model_repo.read_warmup_records(version_dir)
        _replay(client, model_name, warmups)
        expected = model_repo.answers(model_repo.predict_saved_model(version_dir, rows))
        answers = check_answers(client, model_name, rows, expected, error=InfraValidationError)
    except ServingError as err:
        raise InfraValidationError(f"the candidate failed a request: {err.code.name}: {err.message}") from err
    return {"warmup_requests": len(warmups), **{protocol: got["examples"] for protocol, got in answers.items()}}


def _wait_loaded(client, model_name: str, version: int, timeout_s: float) -> None:
    try:
        wait_available(client, model_name, [version], timeout_s)
    except PipelineError as err:
        raise InfraValidationError(f"the candidate did not load: {err}") from err


def infra_validate(config: PipelineConfig, snapshot: Snapshot, version_dir: str | Path) -> dict[str, Any]:
    """Loads the candidate into a serving process and checks its answers.

    Args:
        config: Uses `model_name`, `test_split`, `smoke_test_examples`, `infra_validation_*`.
        snapshot: The data snapshot (real test rows).
        version_dir: The exported candidate version folder.

    Returns:
        What was checked: endpoint, load seconds, warmup requests and examples per protocol.

    Raises:
        InfraValidationError: on a load failure, a timeout or a wrong answer.
    """
    from serving.client import TFServingClient
    from serving.protocol import ServingError

    version_dir = Path(version_dir)
    rows = snapshot.request_rows(snapshot.resolve_split(config.test_split, TEST), config.smoke_test_examples)
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
            checked = _check_answers(client, name, version_dir, rows)
        endpoint = config.infra_validation_grpc_target
    else:
        sandbox = sandbox_server(config.model_name, version_dir, config.infra_validation_timeout_s)
        with sandbox as (target, url), TFServingClient(target, url, timeout=30, retries=5) as client:
            _wait_loaded(client, config.model_name, 1, config.infra_validation_timeout_s)
            checked = _check_answers(client, config.model_name, version_dir, rows)
        endpoint = "sandboxed local server"
    result = {"endpoint": endpoint, "seconds": round(time.monotonic() - started, 2), **checked}
    log.info("infra-validation passed: %s", result)
    return result
