"""Deployment settings for orchestrators: the models, their schedules, pools, retries and base configs.

Read from a YAML file (`dags/settings.yaml`) so a deployment changes the schedule, paths or
serving endpoints without editing code. Relative paths are taken from the project root.

A deployment serves one model (the `pipeline` mapping, as `make demo` does) or several:
`models` lists them, each with a `name` (the served model and the DAG ids' prefix:
`<name>_training`, `<name>_drift`, `<name>_rollback`), its own `pipeline` values on top of the
shared ones, and optionally its own schedule, drift schedule, pool, queue, timeouts and
approval settings (the top-level ones otherwise). All share one serving config file, which
holds every model (TF Serving's multi-model `model_config_list`).
"""

from __future__ import annotations

import dataclasses
import glob
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import PipelineConfig, default_model_name, load_config
from pipeline.core.errors import ConfigError

PATH_FIELDS = ("workdir", "model_base_path", "serving_config_file", "tfds_data_dir", "request_log_dir")
LOCAL_SOURCES = ("idx", "csv", "parquet", "images")  # data sources that name a path
DAG_SUFFIXES = ("_training", "_drift", "_rollback")
_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.+:-]")
_MODEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """One model of the deployment, its own settings resolved (the deployment's where it has none).

    Attributes:
        name: The served model's name and the prefix of its DAG ids.
        pipeline: Its PipelineConfig values (the shared ones, its own on top, `model_name` set).
        schedule: Cron of its nightly training (None: manual and drift-triggered only).
        drift_schedule: Cron of its drift check (None: manual only).
        pool: Its training task's pool.
        queue: Its training task's executor queue.
        train_timeout_minutes: Its training task's execution_timeout.
        approval_required: A person approves each of its candidates.
        approval_timeout_minutes: Unanswered this long, an approval counts as rejected.
    """

    name: str
    pipeline: dict[str, Any]
    schedule: str | None
    drift_schedule: str | None
    pool: str
    queue: str
    train_timeout_minutes: float
    approval_required: bool
    approval_timeout_minutes: float

    @property
    def training_dag_id(self) -> str:
        return f"{self.name}_training"

    @property
    def drift_dag_id(self) -> str:
        return f"{self.name}_drift"

    @property
    def rollback_dag_id(self) -> str:
        return f"{self.name}_rollback"

    def base_config(self) -> PipelineConfig:
        """The validated config of this model's runs (before trigger params)."""
        try:
            return load_config(overrides=self.pipeline)
        except ConfigError as err:
            raise ConfigError(f"model {self.name!r}: {err}") from None

    def stable_model_asset(self) -> tuple[str, str]:
        """(name, uri) of the orchestrator asset that changes when this model's `stable` moves."""
        config = self.base_config()
        return (
            f"{config.model_name}_stable_model",
            f"file://{Path(config.model_base_path).resolve()}/{config.model_name}",
        )

    def drift_asset(self) -> tuple[str, str]:
        """(name, uri) of the asset this model's drift check updates when its requests drift."""
        config = self.base_config()
        return (
            f"{config.model_name}_request_drift",
            f"file://{Path(config.request_log_dir).resolve()}/{config.model_name}",
        )


# The settings a model entry may set for itself; the rest are the deployment's.
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelSettings)}


@dataclasses.dataclass(frozen=True)
class DeploymentSettings:
    """How the DAGs run.

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
        models: The models of the deployment (see the module doc); None: one, from `pipeline`.
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
    models: list[dict[str, Any]] | None = None

    def train_executor_config(self) -> dict[str, str]:
        """The training task's executor_config: its pod template under the KubernetesExecutor, if set."""
        return {"pod_template_file": self.train_pod_template_file} if self.train_pod_template_file else {}

    def model_list(self) -> list[ModelSettings]:
        """Every model of the deployment, each with its settings resolved."""
        inherited = {
            "schedule": self.schedule,
            "drift_schedule": self.drift_schedule,
            "pool": self.pool,
            "queue": self.queue,
            "train_timeout_minutes": self.train_timeout_minutes,
            "approval_required": self.approval_required,
            "approval_timeout_minutes": self.approval_timeout_minutes,
        }
        if self.models is None:
            source = self.pipeline.get("data_source") or PipelineConfig().data_source
            name = self.pipeline.get("model_name") or default_model_name(str(source))
            return [ModelSettings(name=name, pipeline=dict(self.pipeline), **inherited)]
        return [
            ModelSettings(
                **{
                    **inherited,
                    **{key: value for key, value in entry.items() if key != "pipeline"},
                    "pipeline": {**self.pipeline, **(entry.get("pipeline") or {}), "model_name": entry["name"]},
                }
            )
            for entry in self.models
        ]

    def model(self, name: str) -> ModelSettings:
        """The model called `name`.

        Raises:
            ConfigError: naming the deployment's models, if there is none.
        """
        models = self.model_list()
        for model in models:
            if model.name == name:
                return model
        raise ConfigError(f"no model {name!r} in the deployment; its models are: {', '.join(m.name for m in models)}")

    def model_for_dag(self, dag_id: str) -> ModelSettings:
        """The model a DAG id belongs to (`<name>_training`, `<name>_drift`, `<name>_rollback`)."""
        for suffix in DAG_SUFFIXES:
            if dag_id.endswith(suffix):
                return self.model(dag_id.removesuffix(suffix))
        raise ConfigError(f"DAG {dag_id!r} is not one of a model's DAGs (<model>{'|'.join(DAG_SUFFIXES)})")

    def base_config(self) -> PipelineConfig:
        """The validated config of the deployment's first model (the only one, without `models`)."""
        return self.model_list()[0].base_config()


def describe_trigger(run_type: object, user: str | None) -> str:
    """Says who or what started a run, for the lineage log: 'manual by admin', 'scheduled'..."""
    kind = getattr(run_type, "value", run_type)
    return f"{kind}" + (f" by {user}" if user else "")


def _resolve_paths(pipeline: dict[str, Any], project_root: str | Path) -> dict[str, Any]:
    """Relative paths (folders, and the path of a local data source) taken from the project root."""
    resolved = dict(pipeline)
    for key in PATH_FIELDS:
        if resolved.get(key) and not Path(resolved[key]).is_absolute():
            resolved[key] = str(Path(project_root) / resolved[key])
    source = resolved.get("data_source")
    if isinstance(source, str) and ":" in source:
        kind, _, location = source.partition(":")
        if kind in LOCAL_SOURCES and not Path(location).is_absolute():
            resolved["data_source"] = f"{kind}:{Path(project_root) / location}"
    return resolved


def _check_source_exists(model: ModelSettings, path: str | Path) -> None:
    """A local data source must be there when the DAGs are parsed: a missing one is named at once."""
    source = model.pipeline.get("data_source") or PipelineConfig().data_source
    kind, _, location = source.partition(":")
    if kind not in LOCAL_SOURCES:
        return
    present = glob.glob(location) if any(char in location for char in "*?[") else Path(location).exists()
    if not present:
        raise ConfigError(f"{path}: model {model.name!r}: data_source {source!r}: no such file or folder")


def _check_models(raw_models: Any, path: str | Path) -> None:
    if not isinstance(raw_models, list) or not raw_models:
        raise ConfigError(f"{path}: models must be a list of mappings with a name and pipeline values")
    seen: set[str] = set()
    for index, entry in enumerate(raw_models):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{path}: models[{index}] has no name")
        name = entry["name"]
        if not isinstance(name, str) or not _MODEL_NAME.match(name):
            raise ConfigError(
                f"{path}: models[{index}]: name {name!r} must be 1-64 letters, digits or '_', starting with a letter"
            )
        if name in seen:
            raise ConfigError(f"{path}: model {name!r} is listed twice")
        seen.add(name)
        unknown = sorted(set(entry) - MODEL_FIELDS)
        if unknown:
            raise ConfigError(f"{path}: model {name!r}: unknown setting(s): {', '.join(unknown)}")
        if "model_name" in (entry.get("pipeline") or {}):
            raise ConfigError(f"{path}: model {name!r}: pipeline.model_name is the model's name; leave it out")


def load_settings(path: str | Path, project_root: str | Path) -> DeploymentSettings:
    """Loads deployment settings; relative paths in `pipeline` are resolved from `project_root`.

    Raises:
        ConfigError: one line naming the setting (and the model): unknown keys, a model listed twice,
            a local data source that is missing, or an invalid pipeline value.
    """
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in dataclasses.fields(DeploymentSettings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    pipeline = _resolve_paths(raw.get("pipeline") or {}, project_root)
    models = raw.get("models")
    if models is not None:
        _check_models(models, path)
        models = [{**entry, "pipeline": _resolve_paths(entry.get("pipeline") or {}, project_root)} for entry in models]
    settings = DeploymentSettings(**{**raw, "pipeline": pipeline, "models": models})
    for model in settings.model_list():  # fail at parse time on bad values, naming the model
        try:
            model.base_config()
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        _check_source_exists(model, path)
    return settings


def run_config(model: ModelSettings, params: dict[str, Any], run_id: str) -> PipelineConfig:
    """Builds one run's config: the model's settings, then trigger params, with a path-safe run id.

    Raises:
        ConfigError: if a param is not a config option or its value is invalid.
    """
    safe_run_id = _RUN_ID_UNSAFE.sub("_", run_id)[:128]
    return load_config(overrides={**model.pipeline, **params, "run_id": safe_run_id})
