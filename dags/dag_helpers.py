"""What both DAG files share: the deployment settings, the stable-model asset and the task wrapper.

Not a DAG file itself (`.airflowignore` lists it); Airflow puts the DAG folder on
`sys.path`, so the DAG files import it by name. Each task body is one call of
`run_step`, which runs one step of `pipeline.runner` and passes the run's state (artifact
paths and numbers, never arrays) on through XCom.
"""

from __future__ import annotations

import logging
from pathlib import Path

from airflow.sdk import Asset, Param, get_current_context
from airflow.sdk.exceptions import AirflowFailException

from pipeline.core.config import trigger_form_fields, trigger_form_schema
from pipeline.core.errors import PipelineError
from pipeline.dag_settings import describe_trigger, load_settings, run_config

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SETTINGS = load_settings(Path(__file__).with_name("settings.yaml"), PROJECT_ROOT)
STABLE_MODEL = Asset(*SETTINGS.stable_model_asset())


def trigger_params() -> dict[str, Param]:
    """The trigger form: one typed, bounded `Param` per form option of the pipeline's config."""
    return {name: Param(**schema) for name, schema in trigger_form_schema(SETTINGS.base_config()).items()}


def log_failure(context) -> None:
    """Failure callback: one clear line naming the run, the task, the attempt and the error."""
    ti = context["ti"]
    log.error(
        "FAILED dag=%s run=%s task=%s try=%s/%s error=%s",
        ti.dag_id,
        ti.run_id,
        ti.task_id,
        ti.try_number,
        ti.max_tries + 1,
        context.get("exception"),
    )


def current_config():
    """This run's config: the deployment settings, then the trigger form's values."""
    context = get_current_context()
    form = {name: context["params"][name] for name in trigger_form_fields() if name in context["params"]}
    return run_config(SETTINGS, form, context["dag_run"].run_id)


def who() -> str:
    """Who or what started this run, for the lineage log."""
    run = get_current_context()["dag_run"]
    return describe_trigger(run.run_type, getattr(run, "triggering_user_name", None))


def fail_on_pipeline_error(function, *args, **kwargs):
    """Calls `function`; a PipelineError (bad data, refused model) fails the task without retries."""
    try:
        return function(*args, **kwargs)
    except PipelineError as err:
        raise AirflowFailException(f"{type(err).__name__}: {err}") from err


def run_step(name: str, state: dict | None = None) -> dict | None:
    """Runs step `name` of the pipeline on the run's state.

    Returns:
        The new state for the next task, or None when the step stops the run (the reason is
        logged and pushed to XCom as `stop_reason`; a short-circuit task then skips the rest).
    """
    from pipeline import runner

    outcome = fail_on_pipeline_error(runner.run_step, name, current_config(), state or {}, who())
    if outcome.stop_reason:
        log.info("stopping the run after %s: %s", name, outcome.stop_reason)
        get_current_context()["ti"].xcom_push(key="stop_reason", value=outcome.stop_reason)
        return None
    return outcome.state
