"""Serving-config bookkeeping of promotion, without a serving endpoint (the DAG tests cover one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.errors import PromotionError
from pipeline.release.promotion import ServingState, apply_state, read_state, render_config, rollback
from tests.support import export_candidate


@pytest.fixture
def published(trained_run, tmp_path):
    config = trained_run["config"].replace(
        model_base_path=str(tmp_path / "models"),
        serving_config_file=str(tmp_path / "serving" / "models.config"),
        serving_grpc_target=None,
        workdir=str(tmp_path / "work"),
    )
    for _ in range(2):
        export_candidate(trained_run, config)
    return config


def test_labels_round_trip_through_the_config_file(published):
    assert read_state(published) == ServingState()
    apply_state(published, ServingState(stable=1, canary=2))
    assert read_state(published) == ServingState(stable=1, canary=2)
    text = Path(published.serving_config_file).read_text()
    assert "versions: 1" in text and "versions: 2" in text and 'base_path: "' in text


def test_other_models_in_a_shared_config_are_kept(published):
    other = 'model_config_list { config { name: "other" base_path: "/models/other" model_platform: "tensorflow" } }'
    path = Path(published.serving_config_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(other)
    apply_state(published, ServingState(stable=2, canary=2))
    text = path.read_text()
    assert 'name: "other"' in text and 'base_path: "/models/other"' in text
    assert read_state(published) == ServingState(stable=2, canary=2)


def test_unpublished_versions_are_refused(published):
    apply_state(published, ServingState(stable=1, canary=1))
    with pytest.raises(PromotionError, match=r"version\(s\) \[7\] of fashion_mnist are not published"):
        apply_state(published, ServingState(stable=7, canary=7))
    with pytest.raises(PromotionError, match=r"cannot roll back to version 9: published versions are \[1, 2\]"):
        rollback(published, 9, by="test")
    assert read_state(published) == ServingState(stable=1, canary=1)


def test_empty_state_renders_an_empty_model_list(published):
    assert render_config(published, [], {}) == "model_config_list {\n}\n"
