"""What a run did, in one line and as pages: run outcome, run report, registry."""

from __future__ import annotations

from pipeline.release.promotion import ServingState, apply_state
from pipeline.release.report import registry_rows, render_registry, run_outcome, write_run_report


def test_the_outcome_names_what_the_run_did():
    promoted = run_outcome(
        {
            "evaluate": {"metric": "accuracy", "score": 0.93204},
            "gate": {"blessed": True, "reasons": []},
            "mark_stable": {"stable": 3, "previous_stable": 2},
        }
    )
    assert (promoted.outcome, promoted.version) == ("promoted", 3)
    assert promoted.summary == "promoted version 3 to stable (test accuracy 0.9320; was version 2)"
    rejected = run_outcome(
        {"evaluate": {"metric": "accuracy", "score": 0.8}, "gate": {"blessed": False, "reasons": ["a >= b", "x"]}}
    )
    assert (rejected.outcome, rejected.summary) == ("not_blessed", "not blessed: a >= b; x")
    regression = run_outcome(
        {"evaluate": {"metric": "rmse", "score": 512.25}, "mark_stable": {"stable": 1, "previous_stable": None}}
    )
    assert regression.summary == "promoted version 1 to stable (test rmse 512.2500; was nothing)"
    assert (regression.metric, regression.score) == ("rmse", 512.25)
    skipped = run_outcome({"ingest": {}, "check_changes": {"skip_reason": "nothing changed"}})
    assert (skipped.outcome, skipped.summary) == ("skipped", "skipped: nothing changed")
    assert run_outcome({"ingest": {}, "validate": {}}).summary == "incomplete: the run stopped after validate"


def test_the_registry_lists_versions_newest_first_with_labels_and_metrics(published, trained_run):
    apply_state(published, ServingState(stable=1, canary=2))
    rows = registry_rows(published)
    assert [(row["version"], row["labels"]) for row in rows] == [(2, ["canary"]), (1, ["stable"])]
    assert rows[0]["metrics"]["accuracy"] == trained_run["evaluate"].score and rows[0]["run_id"] == "shared"
    assert rows[0]["task"] == "multiclass" and rows[0]["gate_metric"] == "accuracy"
    page = render_registry(published, "/mlops/runs/fashion_mnist_training/")
    assert '<a href="/mlops/runs/fashion_mnist_training/shared">shared</a>' in page
    assert "<td>1</td><td>stable</td>" in page and "<td>2</td><td>canary</td>" in page
    assert "<th>test accuracy</th><th>test macro_f1</th><th>test log_loss</th>" in page  # the task's metrics


def test_the_registry_of_a_model_without_versions_says_so(make_config):
    assert "no published versions yet" in render_registry(make_config())


def test_the_run_report_shows_metrics_baseline_plots_and_the_model_card(published, trained_run):
    exported = {"version_dir": str(published.model_dir / "2"), "version": 2}
    state = {
        "train": trained_run["train"].to_dict(),
        "evaluate": trained_run["evaluate"].to_dict(),
        "gate": {"blessed": True, "reasons": []},
        "export": exported,
        "mark_stable": {"stable": 2, "previous_stable": 1},
    }
    path = write_run_report(published.replace(run_id="report-test"), state)
    assert path == published.workdir_path / "runs" / "report-test" / "report.html"
    page = path.read_text()
    assert "promoted version 2 to stable" in page and "<h2>Per class</h2>" in page
    assert page.count("data:image/png;base64,") == 2  # confusion matrix and training curves, inline
    assert "Model card" in page and '"model_name": "fashion_mnist"' in page
    assert "<script" not in page  # class names and reasons are escaped, never markup


def test_a_rolled_back_or_rejected_canary_is_the_outcome_and_the_report_shows_the_checks(published, trained_run):
    watch = {
        "version": 2,
        "passed": False,
        "rolled_back": True,
        "reasons": ["FAIL: predicted class equal to stable's on 9 of 90 logged canary answers (10.0%)", "ok: errors"],
        "figures": {"canary_requests": 40, "agreement": 0.1},
    }
    state = {
        "evaluate": trained_run["evaluate"].to_dict(),
        "gate": {"blessed": True, "reasons": []},
        "export": {"version_dir": str(published.model_dir / "2"), "version": 2},
        "watch_canary": watch,
    }
    outcome = run_outcome(state)
    assert (outcome.outcome, outcome.version) == ("canary_rolled_back", 2)
    assert (
        outcome.summary
        == "canary version 2 rolled back: predicted class equal to stable's on 9 of 90 logged canary answers (10.0%)"
    )
    page = write_run_report(published.replace(run_id="rolled-back"), state).read_text()
    assert "<h2>Canary on live traffic</h2><p>ROLLED BACK: canary_requests 40, agreement 0.1</p>" in page
    assert "<td>FAIL</td><td>predicted class equal" in page
    passed = {**watch, "passed": True, "rolled_back": False, "reasons": ["ok: errors"]}
    rejected = {**state, "watch_canary": passed, "approve": {"approved": False, "by": "alice", "version": 2}}
    assert run_outcome(rejected).summary == "version 2 not approved (alice): canary withdrawn"


def test_the_approval_form_compares_the_candidate_with_stable(trained_run):
    from pipeline.release.report import approval_markdown

    state = {
        "evaluate": trained_run["evaluate"].to_dict(),
        "export": {"version": 2},
        "watch_canary": {"passed": True, "reasons": ["ok: 60 canary answers", "ok: agreement 97%"], "figures": {}},
    }
    body = approval_markdown(state)
    accuracy = trained_run["evaluate"].score
    assert body.startswith("**Candidate version 2** against stable (none).")
    assert f"| test accuracy | {accuracy:.4f} | - |" in body
    assert "| T-shirt/top | " in body and "**Gate rules**: pass: " in body
    assert "**Canary watch on live traffic**: ok: 60 canary answers; ok: agreement 97%" in body
