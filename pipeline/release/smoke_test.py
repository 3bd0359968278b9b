"""Smoke test: the served model answers real rows over gRPC and REST as the SavedModel does.

`check_answers` is shared with infra-validation; `smoke_test` runs it through the
`canary` label after promotion and puts `canary` back on the stable version if it fails.
Classification answers must name the same classes; regression answers must agree to
`REGRESSION_RTOL` (the same model, batched differently, rounds a little differently).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import model_repo
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import PipelineError, PromotionError, ServingUnavailableError
from pipeline.data.snapshot import TEST, Snapshot
from pipeline.release.promotion import CANARY, read_state, restore, serving_client

REGRESSION_RTOL = 1e-4


def differing_answers(got: np.ndarray, expected: np.ndarray, rtol: float = REGRESSION_RTOL) -> int:
    """How many answers differ: class ids exactly, predicted values by more than `rtol` of the expected one."""
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return max(len(got), len(expected))
    if expected.dtype.kind == "f":
        return int((~np.isclose(got.astype(np.float64), expected, rtol=rtol, atol=1e-6)).sum())
    return int((got.astype(np.int64) != expected).sum())


def check_answers(
    client,
    model_name: str,
    rows: dict[str, np.ndarray],
    expected: np.ndarray,
    *,
    error: type[PipelineError],
    label: str | None = None,
) -> dict[str, Any]:
    """Predicts `rows` over gRPC (and REST when the client has a URL); both must answer as expected.

    Args:
        client: A `serving.client.TFServingClient`.
        model_name: The served model.
        rows: {input name: values} as clients send them.
        expected: The SavedModel's own answers (`model_repo.answers`): class ids or predicted values.
        error: The exception raised on a wrong answer.
        label: Address the model by this version label instead of the latest version.

    Returns:
        Per protocol: examples checked and the version that answered.

    Raises:
        error: naming the protocol and how many answers differ.
        serving.protocol.ServingError: when a request fails.
    """
    results = {}
    for protocol in ("grpc", "rest") if client.rest_url else ("grpc",):
        result = client.predict(model_name, rows, label=label, protocol=protocol)
        got = model_repo.answers(result.outputs)
        wrong = differing_answers(got, expected)
        if wrong:
            raise error(f"{wrong} of {len(expected)} answers over {protocol} differ from the model's")
        results[protocol] = {"examples": len(got), "version": result.version}
    return results


def smoke_test(config: PipelineConfig, snapshot: Snapshot, version_dir: str | Path, label: str = CANARY):
    """Calls the served model by `label` with real test rows; on failure `canary` goes back to stable.

    Raises:
        PromotionError: naming the protocol and the mismatch or the refused request.
        ServingUnavailableError: when the endpoint is down (retry later).
    """
    from serving.protocol import ServingError

    rows = snapshot.request_rows(snapshot.resolve_split(config.test_split, TEST), config.smoke_test_examples)
    expected = model_repo.answers(model_repo.predict_saved_model(version_dir, rows))
    try:
        with serving_client(config) as client:
            try:
                return check_answers(client, config.model_name, rows, expected, error=PromotionError, label=label)
            except ServingError as err:
                if err.code.name == "UNAVAILABLE":
                    raise ServingUnavailableError(
                        f"serving endpoint {config.serving_grpc_target}: {err.message}"
                    ) from err
                raise PromotionError(f"smoke test failed: {err.code.name}: {err.message}") from err
    except PromotionError:
        restore(config, read_state(config))
        raise
