"""Stage steps with plain inputs and outputs, and the whole pipeline in order.

Each `*_step` function takes the config and artifact paths (strings) and returns a
JSON-serialisable dict of output paths and numbers, recorded in the run manifest.
The CLI and orchestrators (Airflow tasks) call these, passing paths, never arrays.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.artifacts import new_run_id, read_manifest, record_stage
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError
from pipeline.snapshot import Snapshot

log = logging.getLogger(__name__)

STAGES = ("ingest", "validate", "train", "evaluate", "export")


def with_run_id(config: PipelineConfig) -> PipelineConfig:
    """Returns the config with a run_id, generating a new one if unset."""
    return config if config.run_id else config.replace(run_id=new_run_id())


def ingest_step(config: PipelineConfig) -> dict[str, Any]:
    """Ingests the data source; returns the snapshot path, fingerprint and split sizes."""
    from pipeline.ingest import ingest

    snapshot = ingest(config)
    outputs = {
        "snapshot": str(snapshot.path),
        "fingerprint": snapshot.fingerprint,
        "splits": snapshot.splits,
        "class_names": snapshot.class_names,
    }
    record_stage(config, "ingest", outputs)
    return outputs


def validate_step(config: PipelineConfig, snapshot_path: str) -> dict[str, Any]:
    """Validates a snapshot; returns report paths. Raises DataValidationError if severe."""
    from pipeline.validate import validate

    outputs = validate(config, Snapshot.load(snapshot_path)).to_dict()
    record_stage(config, "validate", outputs)
    return outputs


def train_step(config: PipelineConfig, snapshot_path: str) -> dict[str, Any]:
    """Trains a model on a snapshot; returns the model path and training summary."""
    from pipeline.train import train

    outputs = train(config, Snapshot.load(snapshot_path)).to_dict()
    record_stage(config, "train", outputs)
    return outputs


def evaluate_step(config: PipelineConfig, snapshot_path: str, model_path: str) -> dict[str, Any]:
    """Evaluates a model and applies the gate; returns evaluation.json's path and the decision."""
    from pipeline.evaluate import evaluate

    outputs = evaluate(config, Snapshot.load(snapshot_path), model_path).to_dict()
    record_stage(config, "evaluate", outputs)
    return outputs


def export_step(config: PipelineConfig, snapshot_path: str, model_path: str, evaluation_path: str) -> dict[str, Any]:
    """Exports a blessed model and publishes it as the next version (never pruning served ones)."""
    from pipeline import lineage
    from pipeline.export import export
    from pipeline.promotion import read_state

    served = read_state(config).versions
    outputs = export(config, Snapshot.load(snapshot_path), model_path, evaluation_path, served).to_dict()
    record_stage(config, "export", outputs)
    lineage.record(config, "exported", version=outputs["version"], version_dir=outputs["version_dir"])
    return outputs


def unchanged_step(config: PipelineConfig, fingerprint: str, by: str) -> str | None:
    """Returns why this run has nothing to do (data, config, code equal the stable model's), or None."""
    from pipeline import lineage
    from pipeline.promotion import unchanged_reason

    reason = unchanged_reason(config, fingerprint)
    if reason:
        lineage.record(config, "skipped_unchanged", data_fingerprint=fingerprint, reason=reason, by=by)
    return reason


def gate_step(config: PipelineConfig, evaluated: dict[str, Any], fingerprint: str, by: str) -> bool:
    """Records the gate decision (metrics, reasons, data, config) in the lineage log; returns it."""
    from pipeline import lineage

    lineage.record(
        config, "gate", blessed=evaluated["blessed"], accuracy=evaluated["accuracy"],
        baseline_version=evaluated["baseline_version"], baseline_accuracy=evaluated["baseline_accuracy"],
        reasons=evaluated["reasons"], data_fingerprint=fingerprint, config=config.to_dict(), by=by,
    )  # fmt: skip
    return bool(evaluated["blessed"])


def infra_validate_step(config: PipelineConfig, snapshot_path: str, version_dir: str) -> dict[str, Any]:
    """Serves the candidate in a sandbox and checks its answers; raises InfraValidationError."""
    from pipeline.infra_validate import infra_validate

    outputs = infra_validate(config, Snapshot.load(snapshot_path), version_dir)
    record_stage(config, "infra_validate", outputs)
    return outputs


def promote_canary_step(config: PipelineConfig, version: int, by: str) -> dict[str, Any]:
    """Points `canary` at the new version (stable unchanged)."""
    from pipeline.promotion import promote_canary

    outputs = promote_canary(config, version, by)
    record_stage(config, "promote_canary", outputs)
    return outputs


def smoke_test_step(config: PipelineConfig, snapshot_path: str, version_dir: str) -> dict[str, Any]:
    """Calls the canary over gRPC and REST with real images; on failure puts `canary` back on stable."""
    from pipeline.infra_validate import reference_answers
    from pipeline.promotion import read_state, restore, smoke_test

    snapshot = Snapshot.load(snapshot_path)
    images, _ = snapshot.split_arrays(f"{config.test_split.split('[', 1)[0]}[:{config.smoke_test_examples}]")
    images = images[..., 0] if images.shape[-1] == 1 else images
    expected = reference_answers(Path(version_dir), images)
    try:
        outputs = smoke_test(config, images, expected)
    except PipelineError:
        restore(config, read_state(config))
        raise
    record_stage(config, "smoke_test", outputs)
    return outputs


def mark_stable_step(config: PipelineConfig, version: int, by: str) -> dict[str, Any]:
    """Moves `stable` to the version that passed its smoke test."""
    from pipeline.promotion import mark_stable

    outputs = mark_stable(config, version, by)
    record_stage(config, "mark_stable", outputs)
    return outputs


def rollback_step(config: PipelineConfig, version: int, by: str, reason: str = "") -> dict[str, Any]:
    """Moves `stable` back to an earlier version and records the decision."""
    from pipeline.promotion import rollback

    return rollback(config, version, by, reason)


def manifest_inputs(config: PipelineConfig) -> dict[str, str]:
    """Returns the artifact paths a run has produced so far, by input name."""
    manifest = read_manifest(config)
    found = {}
    for stage, key, name in (
        ("ingest", "snapshot", "snapshot"),
        ("train", "model_path", "model_path"),
        ("evaluate", "evaluation_path", "evaluation"),
    ):
        if key in manifest.get(stage, {}):
            found[name] = manifest[stage][key]
    return found


@dataclasses.dataclass
class StageReport:
    """One line of the run summary."""

    stage: str
    status: str  # 'ok', 'skipped' or 'failed'
    seconds: float
    detail: str
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)


def _timed(reports: list[StageReport], stage: str, call: Callable[[], dict], describe: Callable[[dict], str]):
    started = time.monotonic()
    log.info("stage %s: starting", stage)
    try:
        outputs = call()
    except PipelineError as err:
        reports.append(StageReport(stage, "failed", round(time.monotonic() - started, 1), str(err)))
        raise
    reports.append(StageReport(stage, "ok", round(time.monotonic() - started, 1), describe(outputs), outputs))
    return outputs


def run_pipeline(config: PipelineConfig, reports: list[StageReport] | None = None) -> list[StageReport]:
    """Runs every stage in order; export only if the gate blessed the model.

    Args:
        config: The config; a run_id is generated if unset.
        reports: A list to append stage reports to as they finish (so a caller can
            print what ran even when a stage raises).

    Returns:
        The stage reports.

    Raises:
        PipelineError: from the first failing stage (reports hold what ran before it).
    """
    from pipeline.export import ensure_writable

    reports = [] if reports is None else reports
    config = with_run_id(config)
    ensure_writable(config.model_dir)  # Fail before hours of training, not after.
    ingested = _timed(
        reports, "ingest", lambda: ingest_step(config),
        lambda o: f"{o['snapshot']} (fingerprint {o['fingerprint'][:12]}, splits {o['splits']})",
    )  # fmt: skip
    snapshot = ingested["snapshot"]
    _timed(
        reports, "validate", lambda: validate_step(config, snapshot),
        lambda o: f"{o['anomalies']} anomalies (report {o['report_path']})",
    )  # fmt: skip
    trained = _timed(
        reports, "train", lambda: train_step(config, snapshot),
        lambda o: f"{o['epochs_run']} epochs, best val_accuracy {o['best_val_accuracy']:.4f} "
        f"on {o['hardware']['strategy']}/{o['hardware']['dtype_policy']}",
    )  # fmt: skip
    evaluated = _timed(
        reports, "evaluate", lambda: evaluate_step(config, snapshot, trained["model_path"]),
        lambda o: f"test accuracy {o['accuracy']:.4f}: {'BLESSED' if o['blessed'] else 'NOT blessed'}",
    )  # fmt: skip
    if not evaluated["blessed"]:
        reports.append(StageReport("export", "skipped", 0.0, "not blessed: " + "; ".join(evaluated["reasons"])))
        return reports
    _timed(
        reports, "export",
        lambda: export_step(config, snapshot, trained["model_path"], evaluated["evaluation_path"]),
        lambda o: f"version {o['version']} at {o['version_dir']}",
    )  # fmt: skip
    return reports


def format_summary(reports: list[StageReport], run_id: str | None = None) -> str:
    """Renders the stage reports as a fixed-width table."""
    lines = [f"run {run_id}" if run_id else "run summary"]
    lines.append(f"{'stage':<10} {'status':<8} {'seconds':>8}  detail")
    lines.append(f"{'-' * 10} {'-' * 8} {'-' * 8}  {'-' * 40}")
    for report in reports:
        lines.append(f"{report.stage:<10} {report.status:<8} {report.seconds:>8.1f}  {report.detail}")
    return "\n".join(lines)
