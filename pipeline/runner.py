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
    """Exports a blessed model and publishes it as the next version."""
    from pipeline.export import export

    outputs = export(config, Snapshot.load(snapshot_path), model_path, evaluation_path).to_dict()
    record_stage(config, "export", outputs)
    return outputs


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
