"""What both DAG files share: the deployment settings, the stable-model asset and the task wrapper.

Not a DAG file itself (`.airflowignore` lists it); Airflow puts the DAG folder on
`sys.path`, so the DAG files import it by name. Each task body is one call of
`run_step`, which runs one step of `pipeline.runner` and passes the run's state (artifact
paths and numbers, never arrays) on through XCom.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import timedelta
from pathlib import Path

from airflow.sdk import Asset, Param, get_current_context
from airflow.sdk.exceptions import AirflowFailException

from pipeline.core.config import trigger_form_fields, trigger_form_schema
from pipeline.core.errors import PipelineError
from pipeline.dag_settings import describe_trigger, drift_asset, load_settings, run_config

log = logging.getLogger(__name__)

# Task processes import TensorFlow after this file: no INFO/WARNING lines from its C++ side (a
# deployment can set its own level). What it writes regardless (start-up, CUDA probing) goes
# through `native_stderr_to_logging` in `run_step`, not straight to stderr, which Airflow shows
# as red ERROR lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# XCom key of the one-line outcome the project's Airflow plugin copies into the DAG run's note.
RUN_NOTE_KEY = "run_note"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SETTINGS = load_settings(Path(__file__).with_name("settings.yaml"), PROJECT_ROOT)
STABLE_MODEL = Asset(*SETTINGS.stable_model_asset())
DRIFT_DETECTED = Asset(*drift_asset(SETTINGS))  # the training DAG is also scheduled on it


def default_task_args() -> dict:
    """Retries, backoff, timeout and the failure line of every task, from the deployment settings."""
    return {
        "retries": SETTINGS.retries,
        "retry_delay": timedelta(seconds=SETTINGS.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(seconds=SETTINGS.max_retry_delay_seconds),
        "execution_timeout": timedelta(minutes=SETTINGS.task_timeout_minutes),
        "on_failure_callback": log_failure,
    }


def trigger_params() -> dict[str, Param]:
    """The trigger form: one typed, bounded `Param` per form option of the pipeline's config."""
    return {name: Param(**schema) for name, schema in trigger_form_schema(SETTINGS.base_config()).items()}


def describe_attempts(try_number: int, max_tries: int, exception: BaseException | None) -> str:
    """Says truthfully how a failed task was tried: a pipeline error is never retried."""
    if isinstance(exception, AirflowFailException):
        return f"attempt {try_number}, not retried (a pipeline error: retrying cannot fix it)"
    return f"attempt {try_number} of {max_tries + 1}, no retries left"


def log_failure(context) -> None:
    """Failure callback: one clear line naming the run, the task, the attempts and the error.

    Also leaves that line for the DAG run's note (the plugin copies it when the run fails).
    """
    ti = context["ti"]
    exception = context.get("exception")
    attempts = describe_attempts(ti.try_number, ti.max_tries, exception)
    log.error("FAILED dag=%s run=%s task=%s (%s): %s", ti.dag_id, ti.run_id, ti.task_id, attempts, exception)
    with contextlib.suppress(Exception):  # The note is a courtesy; the failure is what matters.
        ti.xcom_push(key=RUN_NOTE_KEY, value=f"failed at {ti.task_id} ({attempts}): {exception}"[:990])


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
        message = f"{type(err).__name__}: {err}"
    # Raised outside the except block and without its cause: the task log shows the message, not
    # the pipeline's internal traceback (the error is expected; its message says what to fix).
    raise AirflowFailException(message)


def run_step(name: str, state: dict | None = None) -> dict | None:
    """Runs step `name` of the pipeline on the run's state.

    Returns:
        The new state for the next task, or None when the step stops the run (the reason is
        logged and pushed to XCom as `stop_reason`; a short-circuit task then skips the rest).
    """
    from pipeline import runner
    from pipeline.core.native_logs import native_stderr_to_logging

    with native_stderr_to_logging(logging.getLogger("tensorflow.native")):
        outcome = fail_on_pipeline_error(runner.run_step, name, current_config(), state or {}, who())
    if outcome.stop_reason:
        log.info("stopping the run after %s: %s", name, outcome.stop_reason)
        get_current_context()["ti"].xcom_push(key="stop_reason", value=outcome.stop_reason)
        return None
    return outcome.state


def run_report() -> dict:
    """Writes the run's report page and says what the run did; the summary becomes the run's note."""
    from pipeline import runner

    outputs = fail_on_pipeline_error(runner.report_from_manifest, current_config())
    log.info("run outcome: %s; report %s", outputs["summary"], outputs["report_path"])
    get_current_context()["ti"].xcom_push(key=RUN_NOTE_KEY, value=outputs["summary"])
    return outputs


def outcome_extra(state: dict) -> dict:
    """The stable-model asset event's extra data: the promoted version and the run's outcome."""
    from pipeline.release.report import run_outcome

    exported = state["export"]
    return {"version": exported["version"], "version_dir": exported["version_dir"], **run_outcome(state).to_dict()}


def run_drift_check() -> dict | None:
    """Judges the request logs since the last check; returns the result when they drifted, else None.

    The one-line result becomes the drift run's note either way.
    """
    from pipeline.release.drift import check_drift

    result = fail_on_pipeline_error(check_drift, current_config()).to_dict()
    log.info("%s", result["summary"])
    get_current_context()["ti"].xcom_push(key=RUN_NOTE_KEY, value=result["summary"][:990])
    return result if result["drifted"] else None
