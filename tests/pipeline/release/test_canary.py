"""The canary on live traffic: real requests through a real server, judged against stable, rolled back.

The bad canary is what a gate cannot catch: a model trained on data whose labels were shifted by
one class (a labelling bug). It scores as well on its own (equally shifted) test split as the good
model does, so a lax gate blesses it; on live traffic it disagrees with `stable` almost always.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import runner
from pipeline.core import lineage
from pipeline.release import canary, promotion
from pipeline.release.promotion import ServingState, apply_state, read_state
from pipeline.release.report import CANARY_ROLLED_BACK, run_outcome
from serving.client import TFServingClient
from tests.support import Traffic, export_candidate, start_test_server, train_small_run

GOOD, SAME_AGAIN, PERMUTED = 1, 2, 3


@pytest.fixture(scope="module")
def permuted_run(tmp_path_factory, permuted_idx_dir):
    """A 1-epoch model trained on the subset with every label shifted by one class (a lax gate blesses it)."""
    run = train_small_run(tmp_path_factory.mktemp("permuted"), f"idx:{permuted_idx_dir}", "permuted")
    assert run["evaluate"].blessed, run["evaluate"].reasons
    return run


@pytest.fixture(scope="module")
def live(trained_run, permuted_run, tmp_path_factory):
    """A server with versions 1 (good), 2 (the same model again) and 3 (permuted labels), request logs on."""
    root = tmp_path_factory.mktemp("canary")
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    server = start_test_server(
        root,
        root / "server.log",
        f"--monitoring_config_file={root / 'monitoring.config'}",
        f"--model_base_path_roots={root / 'models'}",
        f"--request_log_roots={root / 'request_logs'}",
        "--request_log_rotate_seconds=1",
    )
    config = trained_run["config"].replace(
        workdir=str(root / "work"),
        model_base_path=str(root / "models"),
        serving_config_file=str(root / "serving" / "models.config"),
        serving_grpc_target=server.grpc_target,
        serving_rest_url=server.rest_url,
        request_log_sampling_rate=1.0,
        request_log_dir=str(root / "request_logs"),
        canary_watch_seconds=8.0,
        canary_traffic_percent=50,
        canary_min_requests=20,
        canary_max_latency_ratio=5.0,  # two cores shared with the traffic: latency is not what is tested
        run_id="canary-test",
    )
    for run in (trained_run, trained_run, permuted_run):
        export_candidate(run, config)
    yield config, server
    server.stop()


def _release(config, version: int) -> None:
    apply_state(config, ServingState(GOOD, GOOD))
    promotion.promote_canary(config, version, "test")
    assert read_state(config) == ServingState(GOOD, version, traffic_percent=0)  # no live traffic before the watch


def _test_images(fashion_subset) -> np.ndarray:
    return fashion_subset["t10k"][0].reshape(-1, 28, 28)


def test_a_canary_that_agrees_with_stable_passes_and_keeps_its_share(live, fashion_subset):
    config, server = live
    _release(config, SAME_AGAIN)
    with Traffic(server.grpc_target, _test_images(fashion_subset)) as traffic:
        outcome = canary.watch(config, SAME_AGAIN, "test")
    assert outcome["passed"] and not outcome["rolled_back"], outcome["reasons"]
    assert outcome["figures"]["agreement"] == 1.0 and outcome["figures"]["canary_requests"] >= 20
    assert {GOOD, SAME_AGAIN} <= set(traffic.versions)  # both answered live requests
    assert read_state(config) == ServingState(GOOD, SAME_AGAIN, traffic_percent=50)  # until mark_stable
    events = [entry["event"] for entry in lineage.read(config)]
    assert events[-2:] == ["canary_traffic", "canary_passed"]


def test_a_canary_trained_on_permuted_labels_is_rolled_back_with_the_reason(live, fashion_subset):
    config, server = live
    _release(config, PERMUTED)
    state = {"export": {"version": PERMUTED, "version_dir": str(config.model_dir / str(PERMUTED))}}
    with Traffic(server.grpc_target, _test_images(fashion_subset)) as traffic:
        outcome = runner.run_step("watch_canary", config, state, "test")
    assert outcome.stop_reason and outcome.stop_reason.startswith("canary rolled back: FAIL: predicted class equal")
    assert outcome.outputs["figures"]["agreement"] < 0.5
    assert PERMUTED in traffic.versions  # it did answer live requests before it was caught
    assert read_state(config) == ServingState(GOOD, GOOD)  # canary back on stable, the split gone
    record = lineage.read(config)[-1]
    assert record["event"] == "canary_rolled_back" and record["rolled_back_version"] == PERMUTED
    assert record["by"] == canary.WATCHED_BY and "predicted class equal to stable's" in record["reasons"][0]
    assert record["labels"] == {"stable": GOOD, "canary": GOOD}
    assert run_outcome(outcome.state).outcome == CANARY_ROLLED_BACK
    with TFServingClient(server.grpc_target, server.rest_url) as client:
        images = _test_images(fashion_subset)[:8]
        assert {client.predict("fashion_mnist", {"images": images}).version for _ in range(10)} == {GOOD}


def test_in_shadow_mode_no_client_sees_the_canary_and_it_is_still_caught(live, fashion_subset):
    config, server = live
    config = config.replace(canary_traffic_percent=0, canary_shadow=True)
    _release(config, PERMUTED)
    with Traffic(server.grpc_target, _test_images(fashion_subset)) as traffic:
        outcome = canary.watch(config, PERMUTED, "test")
    assert set(traffic.versions) == {GOOD}  # every answer came from stable
    assert outcome["rolled_back"] and outcome["figures"]["compared"] >= 20, outcome["reasons"]
    assert read_state(config) == ServingState(GOOD, GOOD)


def test_a_canary_without_enough_traffic_is_not_made_stable(live):
    config, _ = live
    config = config.replace(canary_watch_seconds=2.0)
    _release(config, SAME_AGAIN)
    outcome = canary.watch(config, SAME_AGAIN, "test")
    assert outcome["rolled_back"] and outcome["reasons"][0] == "FAIL: 0 canary answers (canary_min_requests 20)"
    assert read_state(config) == ServingState(GOOD, GOOD)


def test_no_watch_without_a_configured_window_or_a_stable_version(live):
    config, _ = live
    assert "no canary watch configured" in canary.watch(config.replace(canary_watch_seconds=0), 2, "test")["skipped"]
    apply_state(config, ServingState(None, GOOD))
    assert "nothing stable" in canary.watch(config, GOOD, "test")["skipped"]


def test_agreement_waits_for_published_request_logs_and_fails_only_at_the_end(live, fashion_subset, tmp_path):
    config, server = live
    _release(config, SAME_AGAIN)
    plan = canary.start_watch(config, SAME_AGAIN, "test")
    config = config.replace(request_log_dir=str(tmp_path / "not-yet-published"))  # the judge sees no log file yet
    with TFServingClient(server.grpc_target, server.rest_url) as client:
        images = _test_images(fashion_subset)[:8]
        while canary._window(canary.scrape(config), plan, SAME_AGAIN).requests < 20:
            client.predict("fashion_mnist", {"images": images})
    during = canary.judge(config, plan, final=False)
    assert not during.decided  # enough answers counted, none logged yet: no verdict on that
    assert during.reasons[-1].startswith("waiting: predicted class equal to stable's on 0 of 0 logged")
    at_the_end = canary.judge(config, plan, final=True)
    assert at_the_end.decided and not at_the_end.passed
    assert at_the_end.reasons[0].startswith("FAIL: predicted class equal to stable's on 0 of 0")
