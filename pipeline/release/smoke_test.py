"""Smoke test: the served model answers real images over gRPC and REST as the SavedModel does.

`check_answers` is shared with infra-validation; `smoke_test` runs it through the
`canary` label after promotion and puts `canary` back on the stable version if it fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import model_repo
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import PipelineError, PromotionError, ServingUnavailableError
from pipeline.data.snapshot import Snapshot
from pipeline.release.promotion import CANARY, read_state, restore, serving_client


def check_answers(
    client,
    model_name: str,
    images: np.ndarray,
    expected_class_ids: np.ndarray,
    *,
    error: type[PipelineError],
    label: str | None = None,
) -> dict[str, Any]:
    """Predicts `images` over gRPC (and REST when the client has a URL); both must answer as expected.

    Args:
        client: A `serving.client.TFServingClient`.
        model_name: The served model.
        images: uint8 images as clients send them.
        expected_class_ids: The SavedModel's own answers.
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
        result = client.predict(model_name, {model_repo.INPUT_NAME: images}, label=label, protocol=protocol)
        got = np.asarray(result["class_ids"]).astype(np.int64)
        if not np.array_equal(got, expected_class_ids):
            wrong = int((got != expected_class_ids).sum())
            raise error(f"{wrong} of {len(got)} answers over {protocol} differ from the model's")
        results[protocol] = {"examples": len(got), "version": result.version}
    return results


def smoke_test(config: PipelineConfig, snapshot: Snapshot, version_dir: str | Path, label: str = CANARY):
    """Calls the served model by `label` with real test images; on failure `canary` goes back to stable.

    Raises:
        PromotionError: naming the protocol and the mismatch or the refused request.
        ServingUnavailableError: when the endpoint is down (retry later).
    """
    from serving.protocol import ServingError

    images = snapshot.request_images(config.test_split, config.smoke_test_examples)
    expected = model_repo.predict_saved_model(version_dir, images)["class_ids"]
    try:
        with serving_client(config) as client:
            try:
                return check_answers(client, config.model_name, images, expected, error=PromotionError, label=label)
            except ServingError as err:
                if err.code.name == "UNAVAILABLE":
                    raise ServingUnavailableError(
                        f"serving endpoint {config.serving_grpc_target}: {err.message}"
                    ) from err
                raise PromotionError(f"smoke test failed: {err.code.name}: {err.message}") from err
    except PromotionError:
        restore(config, read_state(config))
        raise
