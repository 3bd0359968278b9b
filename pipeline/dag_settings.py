"""Deployment settings for orchestrators: schedule, pools, retries and the pipeline's base config.

Read from a YAML file (`dags/settings.yaml`) so a deployment changes the schedule, paths or
serving endpoints without editing code. Relative paths are taken from the project root.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import PipelineConfig, load_config
from pipeline.core.errors import ConfigError

PATH_FIELDS = ("workdir", "model_base_path", "serving_config_file", "tfds_data_dir", "request_log_dir")
_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.+:-]")


@dataclasses.dataclass(frozen=True)
class DeploymentSettings:
    """How the training DAG runs.

    Attributes:
        schedule: Cron expression of the nightly run (None: manual only). A drift event
            (the drift DAG's asset) also starts a run, whatever the schedule.
        drift_schedule: Cron expression of the drift check on the request logs (None: manual only).
        pool: Airflow pool of the training task (sized to the GPUs of a deployment).
        queue: Executor queue of the training task (routes it to GPU workers).
        retries: Retries of every task (data errors fail at once, without retries).
        retry_delay_seconds: First retry delay; it doubles up to max_retry_delay_seconds.
        max_retry_delay_seconds: Longest retry delay.
        task_timeout_minutes: execution_timeout of every task but training.
        train_timeout_minutes: execution_timeout of the training task.
        train_pod_template_file: KubernetesExecutor only: the pod template the training task runs
            in (GPU requests, node selector); other executors ignore it.
        approval_required: A person approves each candidate before `stable` moves (Airflow's
            human-in-the-loop approval task, after the canary watch).
        approval_timeout_minutes: Unanswered this long, the approval counts as rejected.
        pipeline: PipelineConfig values every run starts from (trigger params override them).
    """

    schedule: str | None = "0 2 * * *"
    drift_schedule: str | None = "0 * * * *"
    pool: str = "gpu_training"
    queue: str = "gpu"
    retries: int = 2
    retry_delay_seconds: float = 60
    max_retry_delay_seconds: float = 900
    task_timeout_minutes: float = 30
    train_timeout_minutes: float = 240
    train_pod_template_file: str | None = None
    approval_required: bool = False
    approval_timeout_minutes: float = 24 * 60
    pipeline: dict[str, Any] = dataclasses.field(default_factory=dict)

    def train_executor_config(self) -> dict[str, str]:
        """The training task's executor_config: its pod template under the KubernetesExecutor, if set."""
        return {"pod_template_file": self.train_pod_template_file} if self.train_pod_template_file else {}

    def base_config(self) -> PipelineConfig:
        """Returns the validated config the settings describe (before trigger params)."""
        return load_config(overrides=self.pipeline)

    def stable_model_asset(self) -> tuple[str, str]:
        """Returns (name, uri) of the orchestrator asset that changes when `stable` moves."""
        config = self.base_config()
        return (
            f"{config.model_name}_stable_model",
            f"file://{Path(config.model_base_path).resolve()}/{config.model_name}",
        )


def drift_asset(settings: DeploymentSettings) -> tuple[str, str]:
    """Returns (name, uri) of the orchestrator asset the drift check updates when requests drift."""
    config = settings.base_config()
    return f"{config.model_name}_request_drift", f"file://{Path(config.request_log_dir).resolve()}/{config.model_name}"


def describe_trigger(run_type: object, user: str | None) -> str:
    """Says who or what started a run, for the lineage log: 'manual by admin', 'scheduled'..."""
    kind = getattr(run_type, "value", run_type)
    return f"{kind}" + (f" by {user}" if user else "")


def load_settings(path: str | Path, project_root: str | Path) -> DeploymentSettings:
    """Loads deployment settings; relative paths in `pipeline` are resolved from `project_root`.

    Raises:
        ConfigError: for unknown keys or invalid pipeline values.
    """
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in dataclasses.fields(DeploymentSettings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    pipeline = dict(raw.get("pipeline") or {})
    for key in PATH_FIELDS:
        if pipeline.get(key) and not Path(pipeline[key]).is_absolute():
            pipeline[key] = str(Path(project_root) / pipeline[key])
    settings = DeploymentSettings(**{**raw, "pipeline": pipeline})
    settings.base_config()  # fail at parse time on bad values
    return settings


def run_config(settings: DeploymentSettings, params: dict[str, Any], run_id: str) -> PipelineConfig:
    """Builds one run's config: settings, then trigger params, with a path-safe run id.

    Raises:
        ConfigError: if a param is not a config option or its value is invalid.
    """
    safe_run_id = _RUN_ID_UNSAFE.sub("_", run_id)[:128]
    return load_config(overrides={**settings.pipeline, **params, "run_id": safe_run_id})
