"""The step sequence's bookkeeping: state from the manifest, explicit inputs, missing inputs."""

import pytest

from pipeline import runner
from pipeline.core.artifacts import record_stage
from pipeline.core.errors import PipelineError


def test_the_sequence_is_the_documented_one():
    assert runner.STEP_NAMES == (
        "ingest",
        "validate",
        "check_changes",
        "train",
        "evaluate",
        "gate",
        "export",
        "infra_validate",
        "promote_canary",
        "smoke_test",
        "watch_canary",
        "mark_stable",
    )
    assert all(step.help for step in runner.STEPS)


def test_state_comes_from_the_manifest_with_explicit_inputs_on_top(make_config):
    config = make_config(run_id="state")
    record_stage(config, "ingest", {"snapshot": "/a", "fingerprint": "f"})
    record_stage(config, "train", {"model_path": "/m.keras"})
    state = runner.state_from_manifest(config, {"snapshot": "/b", "evaluation": None})
    assert state["ingest"]["snapshot"] == "/b" and state["ingest"]["fingerprint"] == "f"
    assert state["train"]["model_path"] == "/m.keras" and "evaluate" not in state


def test_a_missing_input_names_the_option_that_provides_it():
    with pytest.raises(PipelineError, match="needs 'version_dir' from step 'export': pass --version-dir or"):
        runner.needed({}, "export", "version_dir")
    with pytest.raises(PipelineError, match="needs 'blessed' from step 'evaluate': pass a --run-id"):
        runner.needed({"evaluate": {}}, "evaluate", "blessed")
