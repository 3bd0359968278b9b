"""Infra-validation against real serving processes: the sandbox, a dedicated server, and failures."""

from __future__ import annotations

import shutil

import pytest

from pipeline.core.errors import InfraValidationError
from pipeline.release.infra_validate import infra_validate
from serving.sample_models import write_broken_version
from tests.support import export_candidate, start_test_server


@pytest.fixture(scope="module")
def candidate(trained_run, tmp_path_factory):
    config = trained_run["config"].replace(
        model_base_path=str(tmp_path_factory.mktemp("candidates")), smoke_test_examples=16
    )
    return config, export_candidate(trained_run, config).version_dir


def test_sandboxed_server_loads_and_answers_like_the_model(candidate, trained_run):
    config, version_dir = candidate
    result = infra_validate(config, trained_run["snapshot"], version_dir)
    assert result["endpoint"] == "sandboxed local server"
    assert result["warmup_requests"] == config.warmup_requests
    assert result["grpc"] == result["rest"] == 16


def test_dedicated_serving_endpoint(candidate, trained_run, tmp_path):
    config, version_dir = candidate
    local = start_test_server(tmp_path, tmp_path / "server.log")
    try:
        dedicated = config.replace(
            infra_validation_grpc_target=local.grpc_target, infra_validation_rest_url=local.rest_url
        )
        result = infra_validate(dedicated, trained_run["snapshot"], version_dir)
        assert result["endpoint"] == local.grpc_target and result["rest"] == 16
    finally:
        assert local.stop() == 0


def test_a_candidate_that_does_not_load_is_blocked(candidate, trained_run, tmp_path):
    config, _ = candidate
    broken = write_broken_version(tmp_path / "models" / config.model_name, 7)
    with pytest.raises(InfraValidationError, match="the candidate did not load: version 1 failed to load"):
        infra_validate(config, trained_run["snapshot"], broken)


def test_a_candidate_that_loads_too_slowly_is_blocked(candidate, trained_run, tmp_path):
    config, version_dir = candidate
    copy = shutil.copytree(version_dir, tmp_path / "models" / config.model_name / "1")
    with pytest.raises(InfraValidationError, match="did not load within 0.5s"):
        infra_validate(config.replace(infra_validation_timeout_s=0.5), trained_run["snapshot"], copy)


def test_wrong_answers_are_blocked(candidate, trained_run, tmp_path, make_config):
    """The dedicated server finds a different model (an MLP) where the candidate (a CNN) should be."""
    from pipeline.training.evaluate import evaluate
    from pipeline.training.train import train

    config, version_dir = candidate
    other = make_config(model="mlp", run_id="impostor", model_base_path=str(tmp_path / "impostor"), min_accuracy=0.0)
    trained = train(other, trained_run["snapshot"])
    evaluated = evaluate(other, trained_run["snapshot"], trained.model_path)
    impostor = export_candidate({**trained_run, "train": trained, "evaluate": evaluated}, other)
    assert impostor.version == int(version_dir.name) == 1  # same number, other weights

    local = start_test_server(tmp_path, tmp_path / "server.log")
    try:
        misconfigured = config.replace(
            infra_validation_grpc_target=local.grpc_target,
            infra_validation_rest_url=local.rest_url,
            serving_model_base_path=str(tmp_path / "impostor"),  # where that server looks for versions
        )
        with pytest.raises(InfraValidationError, match=r"\d+ of 16 answers over grpc differ from the model's"):
            infra_validate(misconfigured, trained_run["snapshot"], version_dir)
    finally:
        assert local.stop() == 0


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_a_table_model_is_validated_on_real_rows_with_its_classify_or_regress_warmup(table_run, tmp_path, task):
    run = table_run(task)
    config = run["config"].replace(model_base_path=str(tmp_path), smoke_test_examples=20)
    version_dir = export_candidate(run, config).version_dir
    result = infra_validate(config, run["snapshot"], version_dir)
    # The last warmup record is a Classify (or Regress) request on tf.Examples: it ran too.
    assert result["warmup_requests"] == config.warmup_requests
    assert result["grpc"] == result["rest"] == 20
