"""Fixtures of the release tests: a model repository with published versions."""

from __future__ import annotations

import pytest

from tests.support import export_candidate


@pytest.fixture
def published(trained_run, tmp_path):
    """A config whose model folder holds versions 1 and 2 of the shared trained model (no labels yet)."""
    config = trained_run["config"].replace(
        model_base_path=str(tmp_path / "models"),
        serving_config_file=str(tmp_path / "serving" / "models.config"),
        serving_grpc_target=None,
        workdir=str(tmp_path / "work"),
    )
    for _ in range(2):
        export_candidate(trained_run, config)
    return config
