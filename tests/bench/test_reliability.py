"""`make reliability`'s scenarios at short sizes: real faults, real processes, zero failures allowed."""

from __future__ import annotations

import pytest

from bench import reliability


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The benchmark's own workspace: a data subset and a 1-epoch model, made with the CLI."""
    return reliability.prepare_workspace(tmp_path_factory.mktemp("reliability"))


def _run(name, workspace):
    result = reliability.SCENARIOS[name](workspace, **reliability.SHORT[name])
    assert result["failures"] == 0, result
    return result


def test_fuzzed_rest_http_and_grpc_requests_never_get_a_5xx_unknown_or_a_hang(workspace):
    result = _run("fuzz", workspace)
    assert result["fuzz_cases"] == reliability.SHORT["fuzz"]["cases"]
    assert result["server_memory_high_water_mb"] < 4096


def test_hot_swaps_under_load_fail_no_request_and_answer_from_the_stable_of_the_moment(workspace):
    result = _run("hot_swap", workspace)
    assert result["requests_sent"] == reliability.SHORT["hot_swap"]["requests"]
    assert (
        result["swaps"] == reliability.SHORT["hot_swap"]["promotions"] * 2 + reliability.SHORT["hot_swap"]["rollbacks"]
    )


def test_killed_and_overlapping_exports_publish_nothing_incomplete(workspace):
    result = _run("export_faults", workspace)
    assert result["unloadable_versions"] == 0 and result["requests_sent"] > 0


def test_a_killed_server_comes_back_with_the_stable_on_disk(workspace):
    result = _run("serving_killed", workspace)
    assert result["faults_injected"] == reliability.SHORT["serving_killed"]["kills"]


def test_idle_and_slow_connections_and_sigterm(workspace):
    result = _run("connections", workspace)  # SIGTERM ended it within the grace (see the scenario)
    assert result["connections_held"] == 250


def test_killed_training_resumes_from_its_backup_and_passes_the_gate(workspace):
    result = _run("training_killed", workspace)
    assert result["faults_injected"] == 1 and result["blessed"]
    assert result["epochs_after_resume"] == list(range(reliability.SHORT["training_killed"]["epochs"]))


def test_full_and_read_only_disks_fail_clearly_and_change_nothing(workspace):
    result = reliability.SCENARIOS["disk_full"](workspace)
    if "skipped" in result:  # mounting a small tmpfs needs root with CAP_SYS_ADMIN
        pytest.skip(f"disk-full scenario not runnable here: {result['skipped']}")
    assert result["failures"] == 0, result


def test_full_size_rest_batches_are_answered_and_the_servers_memory_is_measured(workspace):
    result = _run("large_requests", workspace)
    assert result["requests_sent"] == 2 * reliability.SHORT["large_requests"]["requests"]
    for memory in result["memory"].values():
        assert memory["peak_mb"] >= memory["after_mb"] > 0 and memory["peak_mb"] >= memory["idle_mb"]
