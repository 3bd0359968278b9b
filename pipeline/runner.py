"""The one step sequence of the pipeline, run the same way by the CLI and by the Airflow DAG.

    ingest -> validate -> check_changes -> train -> evaluate -> gate -> export
    -> infra_validate -> promote_canary -> smoke_test -> watch_canary -> mark_stable

A run's state is its manifest: `{step name: that step's outputs}` (paths and numbers, never
arrays). Each step reads the outputs of earlier steps from the state, returns its own,
and `run_step` records them in `runs/<run_id>/manifest.json`. `check_changes` and `gate`
can stop a run: later steps are skipped, nothing is served differently; `watch_canary`
stops it after rolling a failed canary back. The CLI runs
`STEPS` in one process (`run_pipeline`); the DAG runs one step per task (`run_step`),
passing the state from task to task through XCom.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core import lineage
from pipeline.core.artifacts import new_run_id, read_json, read_manifest, record_stage
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.data.snapshot import Snapshot

log = logging.getLogger(__name__)

State = dict[str, dict[str, Any]]

# Explicit inputs a user can give instead of a run's manifest: option -> (step, output).
INPUT_OPTIONS = {
    "snapshot": ("ingest", "snapshot"),
    "model_path": ("train", "model_path"),
    "evaluation": ("evaluate", "evaluation_path"),
    "version_dir": ("export", "version_dir"),
}


def with_run_id(config: PipelineConfig) -> PipelineConfig:
    """Returns the config with a run_id, generating a new one if unset."""
    return config if config.run_id else config.replace(run_id=new_run_id())


def needed(state: State, step: str, output: str) -> Any:
    """Returns an earlier step's output from the state.

    Raises:
        PipelineError: naming the option that provides it, if it is missing.
    """
    try:
        return state[step][output]
    except KeyError:
        option = next((o for o, where in INPUT_OPTIONS.items() if where == (step, output)), None)
        how = f"--{option.replace('_', '-')} or " if option else ""
        raise PipelineError(
            f"this step needs '{output}' from step '{step}': pass {how}a --run-id whose earlier steps produced it"
        ) from None


def _snapshot(state: State) -> Snapshot:
    return Snapshot.load(needed(state, "ingest", "snapshot"))


# The state key under which the DAG hands ingest the plan its mapped tasks wrote the parts of.
INGEST_PLAN = "ingest_plan"


def ingest_parts(config: PipelineConfig) -> list[dict[str, Any]]:
    """Plans ingest; returns its parts (one mapped task each in the DAG)."""
    from pipeline.data.ingest import plan_ingest

    return [dataclasses.asdict(part) for part in plan_ingest(config).parts]


def write_ingest_part(config: PipelineConfig, part: dict[str, Any]) -> str:
    """Writes one part of the ingest plan; returns the part's folder."""
    from pipeline.data.ingest import IngestPart, write_part

    return write_part(config, IngestPart(**part))


def ingest(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Snapshots the data source; returns the snapshot path, fingerprint and split sizes."""
    from pipeline.data.ingest import finish_ingest
    from pipeline.data.ingest import ingest as ingest_source

    plan = state.get(INGEST_PLAN, {}).get("folder")
    snapshot = finish_ingest(config, plan) if plan else ingest_source(config)
    problem = snapshot.problem
    try:
        config.check_for(problem)  # options naming features or metrics: refused before anything trains
    except ConfigError as err:
        raise ConfigError(f"model {config.model_name!r}: {err}") from None
    return {
        "snapshot": str(snapshot.path),
        "fingerprint": snapshot.fingerprint,
        "splits": snapshot.splits,
        "task": problem.task,
        "label": problem.label,
        "features": {f.key: f.kind for f in problem.features},
        "class_names": snapshot.class_names,
        "dropped_rows": snapshot.dropped_rows,
    }


# The state key under which the DAG hands validate the part files its mapped tasks wrote.
VALIDATION_PARTS = "validation_parts"


def validation_parts(config: PipelineConfig, state: State) -> list[dict[str, Any]]:
    """The parts (split, shard file) validation measures: one mapped task each in the DAG."""
    from pipeline.data.data_validation import validation_parts as parts_of

    return [dataclasses.asdict(part) for part in parts_of(_snapshot(state))]


def measure_validation_part(config: PipelineConfig, state: State, part: dict[str, Any]) -> str:
    """Measures one part of the snapshot for validate; returns the part file's path."""
    from pipeline.data.data_validation import ValidationPart, write_part

    return write_part(config, _snapshot(state), ValidationPart(**part))


def validate(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Validates the snapshot (merging the parts' files when mapped tasks measured them); raises
    DataValidationError if a severe anomaly is found."""
    from pipeline.data.data_validation import validate as validate_snapshot

    files = state.get(VALIDATION_PARTS, {}).get("files")
    return validate_snapshot(config, _snapshot(state), files).to_dict()


def check_changes(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Says why the run has nothing to do (data, config and code equal the stable model's), or None."""
    from pipeline.release.promotion import unchanged_reason

    fingerprint = _snapshot(state).fingerprint
    if config.force:  # Audited: who forced the run, when (the record's time) and why.
        lineage.record(config, "forced", data_fingerprint=fingerprint, reason=config.force_reason, by=by)
    reason = unchanged_reason(config, fingerprint)
    if reason:
        lineage.record(config, "skipped_unchanged", data_fingerprint=fingerprint, reason=reason, by=by)
    return {"skip_reason": reason}


def train(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Trains a model on the snapshot; returns the model path and the training summary."""
    from pipeline.training.train import train as train_model

    return train_model(config, _snapshot(state)).to_dict()


def evaluate(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Evaluates the model and applies the gate's rules; returns evaluation.json's path and the decision."""
    from pipeline.release.promotion import read_state
    from pipeline.training.evaluate import evaluate as evaluate_model

    stable = read_state(config).stable  # the baseline: what serves
    return evaluate_model(config, _snapshot(state), needed(state, "train", "model_path"), stable).to_dict()


def gate(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Records the gate decision of evaluation.json (metrics, reasons, data, config) in the lineage log."""
    evaluation = read_json(needed(state, "evaluate", "evaluation_path"))
    metric = evaluation["gate_metric"]
    baseline = evaluation["baseline"]
    lineage.record(
        config,
        "gate",
        blessed=evaluation["blessed"],
        metric=metric,
        score=evaluation["metrics"][metric],
        metrics=evaluation["metrics"]["headline"],
        baseline_version=baseline["version"],
        baseline_score=baseline["metrics"][metric] if baseline["metrics"] else None,
        reasons=evaluation["reasons"],
        rules=evaluation["rules"],  # one explicit pass/fail check per rule (and class)
        data_fingerprint=_snapshot(state).fingerprint,
        config=config.to_dict(),
        by=by,
    )
    return {"blessed": bool(evaluation["blessed"]), "reasons": evaluation["reasons"]}


def export(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Publishes the blessed model as the next version (never pruning versions that serve)."""
    from pipeline.release.promotion import read_state
    from pipeline.training.export import export as export_model

    outputs = export_model(
        config,
        _snapshot(state),
        needed(state, "train", "model_path"),
        needed(state, "evaluate", "evaluation_path"),
        read_state(config).versions,
        state.get("train", {}).get("model_builder"),
    ).to_dict()
    lineage.record(config, "exported", version=outputs["version"], version_dir=outputs["version_dir"], by=by)
    return outputs


def infra_validate(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Serves the candidate in a sandbox and checks its answers; raises InfraValidationError."""
    from pipeline.release.infra_validate import infra_validate as validate_in_server

    return validate_in_server(config, _snapshot(state), needed(state, "export", "version_dir"))


def promote_canary(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Points `canary` at the new version (`stable` unchanged)."""
    from pipeline.release.promotion import promote_canary as point_canary

    return point_canary(config, _version(state), by)


def smoke_test(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Calls `canary` over gRPC and REST with real images; on failure puts `canary` back on stable."""
    from pipeline.release.smoke_test import smoke_test as call_canary

    if not config.serving_grpc_target:
        return {"skipped": "no serving endpoint configured (serving_grpc_target is none)"}
    return call_canary(config, _snapshot(state), needed(state, "export", "version_dir"))


def watch_canary(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Watches the canary on live traffic against stable; a failing canary is rolled back."""
    from pipeline.release.canary import watch

    return watch(config, _version(state), by)


def begin_canary_watch(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Opens the canary's live traffic; returns the watch plan, or {"skipped": why} (then recorded as the step)."""
    from pipeline.release.canary import start_watch

    plan = start_watch(config, _version(state), by)
    if "skipped" in plan:
        record_stage(config, "watch_canary", plan)
    return plan


def finish_canary_watch(
    config: PipelineConfig, state: State, plan: dict[str, Any], verdict: dict[str, Any], by: str
) -> StepOutcome:
    """`watch_canary` for a watch whose waiting happened elsewhere (the DAG's triggerer): records the verdict."""
    from pipeline.release.canary import conclude

    outputs = conclude(config, plan, verdict, by)
    return _recorded("watch_canary", config, state, outputs, get_step("watch_canary").stop_reason(outputs))


def record_approval(config: PipelineConfig, state: State, approved: bool, by: str, comment: str = "") -> StepOutcome:
    """Records a person's decision on the canary; a rejected one goes back to stable (`canary_rejected`)."""
    from pipeline.release.promotion import withdraw_canary

    version = _version(state)
    lineage.record(config, "approval", version=version, approved=approved, comment=comment, by=by)
    outputs: dict[str, Any] = {"approved": approved, "by": by, "version": version, "comment": comment}
    if not approved:
        outputs["labels"] = withdraw_canary(config, "canary_rejected", [f"not approved by {by}"], by=by)
    return _recorded("approve", config, state, outputs, None if approved else f"not approved by {by}")


def _recorded(
    name: str, config: PipelineConfig, state: State, outputs: dict[str, Any], stop_reason: str | None
) -> StepOutcome:
    """What `run_step` does with a step's outputs, for outputs made outside it (the DAG's deferred tasks)."""
    record_stage(config, name, outputs)
    return StepOutcome(outputs, {**state, name: outputs}, stop_reason)


def mark_stable(config: PipelineConfig, state: State, by: str) -> dict[str, Any]:
    """Moves `stable` to the version that passed its smoke test."""
    from pipeline.release.promotion import mark_stable as point_stable

    return point_stable(config, _version(state), by)


def report(config: PipelineConfig, state: State) -> dict[str, Any]:
    """Says what the run did (promoted, not blessed, skipped) and writes its report page.

    Runs after the last step that ran, whether the run went to the end or stopped early.

    Returns:
        The outcome (`outcome`, `summary`, `version`, `accuracy`) and `report_path`.
    """
    from pipeline.release.report import run_outcome, write_run_report

    outputs = {**run_outcome(state).to_dict(), "report_path": str(write_run_report(config, state))}
    record_stage(config, "report", outputs)
    return outputs


def report_from_manifest(config: PipelineConfig) -> dict[str, Any]:
    """`report` on the state recorded in the run's manifest (what each task of the run wrote)."""
    state = {step: outputs for step, outputs in read_manifest(config).items() if step != "report"}
    return report(config, state)


def _version(state: State) -> int:
    return int(Path(needed(state, "export", "version_dir")).name)


def _not_blessed(outputs: dict[str, Any]) -> str | None:
    return None if outputs["blessed"] else "not blessed: " + "; ".join(outputs["reasons"])


def _rolled_back(outputs: dict[str, Any]) -> str | None:
    from pipeline.release.canary import failed_checks

    if not outputs.get("rolled_back"):
        return None
    return "canary rolled back: " + "; ".join(failed_checks(outputs["reasons"]))


def _watch_summary(outputs: dict[str, Any]) -> str:
    figures = outputs["figures"]
    if outputs["passed"]:
        return f"passed on {figures['canary_requests']} live answers: " + "; ".join(outputs["reasons"])
    return _rolled_back(outputs) or ""


def _not_chief(outputs: dict[str, Any]) -> str | None:
    if outputs.get("is_chief", True):
        return None
    return f"multi-worker training: {outputs['hardware']['task']} took part; the chief evaluates and exports"


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of the sequence.

    Attributes:
        name: The step's name (the DAG's task id, the CLI command with '-' for '_').
        function: (config, state, who) -> the step's outputs.
        summary: One line about the outputs, for the run summary.
        stop_reason: Why the run stops after this step, or None to go on.
        help: What the step does (CLI help).
    """

    name: str
    function: Callable[[PipelineConfig, State, str], dict[str, Any]]
    summary: Callable[[dict[str, Any]], str]
    stop_reason: Callable[[dict[str, Any]], str | None] = lambda outputs: None

    @property
    def help(self) -> str:
        return (self.function.__doc__ or "").splitlines()[0]


STEPS: tuple[Step, ...] = (
    Step(
        "ingest",
        ingest,
        lambda o: (
            f"{o['snapshot']} ({o['task']} of {o['label']!r} from {len(o['features'])} feature(s), "
            f"fingerprint {o['fingerprint'][:12]}, splits {o['splits']}"
            + (
                f", {sum(o['dropped_rows'].values())} rows without a label left out"
                if any(o["dropped_rows"].values())
                else ""
            )
            + ")"
        ),
    ),
    Step("validate", validate, lambda o: f"{o['anomalies']} anomalies (report {o['report_path']})"),
    Step(
        "check_changes",
        check_changes,
        lambda o: o["skip_reason"] or "data, config or code changed since the stable model",
        lambda o: o["skip_reason"],
    ),
    Step(
        "train",
        train,
        lambda o: (
            f"{o['model_builder']}, {o['epochs_run']} epochs, best {o['monitor']} {o['best_val_score']:.4f} "
            f"on {o['hardware']['strategy']}/{o['hardware']['dtype_policy']}"
        ),
        _not_chief,
    ),
    Step(
        "evaluate",
        evaluate,
        lambda o: f"test {o['metric']} {o['score']:.4f}: {'BLESSED' if o['blessed'] else 'NOT blessed'}",
    ),
    Step(
        "gate",
        gate,
        lambda o: ("BLESSED: " if o["blessed"] else "NOT blessed: ") + "; ".join(o["reasons"]),
        _not_blessed,
    ),
    Step("export", export, lambda o: f"version {o['version']} at {o['version_dir']}"),
    Step(
        "infra_validate",
        infra_validate,
        lambda o: (
            f"loaded and answered in {o['endpoint']} ({o['seconds']:.1f}s, {o['warmup_requests']} warmup requests)"
        ),
    ),
    Step("promote_canary", promote_canary, lambda o: f"canary -> {o['canary']}, stable {o['stable']}"),
    Step(
        "smoke_test",
        smoke_test,
        lambda o: o.get("skipped") or ", ".join(f"{p}: {r['examples']} answers ok" for p, r in o.items()),
    ),
    Step(
        "watch_canary",
        watch_canary,
        lambda o: o.get("skipped") or _watch_summary(o),
        _rolled_back,
    ),
    Step("mark_stable", mark_stable, lambda o: f"stable -> {o['stable']} (was {o['previous_stable']})"),
)
STEP_NAMES = tuple(step.name for step in STEPS)


def get_step(name: str) -> Step:
    """Returns the step called `name`."""
    return STEPS[STEP_NAMES.index(name)]


def state_from_manifest(config: PipelineConfig, explicit: dict[str, str] | None = None) -> State:
    """The state of a run so far: its manifest, with explicitly given inputs (INPUT_OPTIONS) on top."""
    state: State = {step: dict(outputs) for step, outputs in read_manifest(config).items()}
    for option, value in (explicit or {}).items():
        if value is not None:
            step, output = INPUT_OPTIONS[option]
            state.setdefault(step, {})[output] = value
    return state


@dataclasses.dataclass(frozen=True)
class StepOutcome:
    """What running one step did: its outputs, the run's new state, and why the run stops (if it does)."""

    outputs: dict[str, Any]
    state: State
    stop_reason: str | None


def run_step(name: str, config: PipelineConfig, state: State, by: str) -> StepOutcome:
    """Runs one step and records its outputs in the run manifest.

    Args:
        name: A name from STEP_NAMES.
        config: The run's config; `run_id` must be set.
        state: Outputs of the earlier steps, by step name.
        by: Who or what started the run (for the lineage log).

    Returns:
        The outcome.

    Raises:
        PipelineError: if the step fails for a reason the user can fix.
    """
    step = get_step(name)
    outputs = step.function(config, state, by)
    if outputs.get("is_chief", True):  # A multi-worker training worker leaves the run's manifest to the chief.
        record_stage(config, name, outputs)
    return StepOutcome(outputs, {**state, name: outputs}, step.stop_reason(outputs))


@dataclasses.dataclass
class StageReport:
    """One line of the run summary."""

    stage: str
    status: str  # 'ok', 'skipped' or 'failed'
    seconds: float
    detail: str
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_pipeline(config: PipelineConfig, by: str, reports: list[StageReport] | None = None) -> list[StageReport]:
    """Runs the whole step sequence in this process, as the DAG does task by task.

    Args:
        config: The config; a run_id is generated if unset.
        by: Who started the run (for the lineage log), e.g. 'cli by alice'.
        reports: A list to append step reports to as they finish (so a caller can
            print what ran even when a step raises).

    Returns:
        The step reports.

    Raises:
        PipelineError: from the first failing step (reports hold what ran before it).
    """
    from pipeline.core.model_repo import ensure_writable

    reports = [] if reports is None else reports
    config = with_run_id(config)
    ensure_writable(config.model_dir)  # Fail before hours of training, not after.
    state: State = {}
    stop_reason = None
    for step in STEPS:
        if stop_reason:
            reports.append(StageReport(step.name, "skipped", 0.0, stop_reason))
            continue
        started = time.monotonic()
        log.info("step %s: starting", step.name)
        try:
            outcome = run_step(step.name, config, state, by)
        except PipelineError as err:
            reports.append(StageReport(step.name, "failed", round(time.monotonic() - started, 1), str(err)))
            raise
        status = "skipped" if outcome.outputs.get("skipped") else "ok"
        seconds = round(time.monotonic() - started, 1)
        reports.append(StageReport(step.name, status, seconds, step.summary(outcome.outputs), outcome.outputs))
        state, stop_reason = outcome.state, outcome.stop_reason
    if state.get("train", {}).get("is_chief", True):
        outputs = report(config, state)
        reports.append(StageReport("report", "ok", 0.0, f"{outputs['summary']} ({outputs['report_path']})", outputs))
    return reports


def rollback(config: PipelineConfig, version: int, by: str, reason: str = "") -> dict[str, Any]:
    """Moves `stable` back to an earlier published version and records the decision."""
    from pipeline.release.promotion import rollback as roll_back

    return roll_back(config, version, by, reason)


def format_summary(reports: list[StageReport], run_id: str | None = None) -> str:
    """Renders the step reports as a fixed-width table."""
    width = max(len(name) for name in STEP_NAMES)
    lines = [f"run {run_id}" if run_id else "run summary"]
    lines.append(f"{'step':<{width}} {'status':<8} {'seconds':>8}  detail")
    lines.append(f"{'-' * width} {'-' * 8} {'-' * 8}  {'-' * 40}")
    for report in reports:
        lines.append(f"{report.stage:<{width}} {report.status:<8} {report.seconds:>8.1f}  {report.detail}")
    return "\n".join(lines)
