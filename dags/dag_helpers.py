"""What the DAG files share: the deployment settings, each model's assets and config, the task wrapper.

Not a DAG file itself (`.airflowignore` lists it); Airflow puts the DAG folder on
`sys.path`, so the DAG files import it by name. The DAG files build one DAG of each kind per
model of the deployment (`<model>_training`, `<model>_drift`, `<model>_rollback`); a task finds
its model from its DAG's id. Each task body is one call of `run_step`, which runs one step of
`pipeline.runner` and passes the run's state (artifact paths and numbers, never arrays) on
through XCom.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, BaseOperator, Param, get_current_context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, DownstreamTasksSkipped

from pipeline.core.config import trigger_form_fields, trigger_form_schema
from pipeline.core.errors import PipelineError
from pipeline.dag_settings import ModelSettings, describe_trigger, load_settings, run_config

log = logging.getLogger(__name__)

# Task processes import TensorFlow after this file: no INFO/WARNING lines from its C++ side (a
# deployment can set its own level). What it writes regardless (start-up, CUDA probing) goes
# through `native_stderr_to_logging` in `_call_pipeline`, not straight to stderr, which Airflow shows
# as red ERROR lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# XCom key of the one-line outcome the project's Airflow plugin copies into the DAG run's note.
RUN_NOTE_KEY = "run_note"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SETTINGS = load_settings(Path(__file__).with_name("settings.yaml"), PROJECT_ROOT)
MODELS = SETTINGS.model_list()


def stable_model(model: ModelSettings) -> Asset:
    """The asset that changes when the model's `stable` moves."""
    return Asset(*model.stable_model_asset())


def drift_detected(model: ModelSettings) -> Asset:
    """The asset the model's drift check updates; the model's training DAG is also scheduled on it."""
    return Asset(*model.drift_asset())


def current_model() -> ModelSettings:
    """The model of the running task's DAG."""
    return SETTINGS.model_for_dag(get_current_context()["dag"].dag_id)


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


def trigger_params(model: ModelSettings) -> dict[str, Param]:
    """The model's trigger form: one typed, bounded `Param` per form option of its config."""
    return {name: Param(**schema) for name, schema in trigger_form_schema(model.base_config()).items()}


def describe_attempts(try_number: int, max_tries: int, exception: BaseException | None) -> str:
    """Says truthfully how a failed task was tried: a pipeline error is never retried."""
    if isinstance(exception, AirflowFailException):
        return f"attempt {try_number}, not retried (a pipeline error: retrying cannot fix it)"
    return f"attempt {try_number} of {max_tries + 1}, no retries left"


def log_failure(context) -> None:
    """A task's failure callback: one clear line naming the run, the task, the attempts and the error.

    Also leaves that line for the DAG run's note (the plugin copies it when the run fails).
    """
    ti = context["ti"]
    exception = context.get("exception")
    attempts = describe_attempts(ti.try_number, ti.max_tries, exception)
    log.error("FAILED dag=%s run=%s task=%s (%s): %s", ti.dag_id, ti.run_id, ti.task_id, attempts, exception)
    with contextlib.suppress(Exception):  # The note is a courtesy; the failure is what matters.
        ti.xcom_push(key=RUN_NOTE_KEY, value=f"failed at {ti.task_id} ({attempts}): {exception}"[:990])


def log_run_failure(context) -> None:
    """The DAG's failure callback: one line naming the run and why it failed.

    It runs in the DAG processor, which cannot write XComs (a push there is never answered and
    stalls parsing until the DAGs are deactivated as stale); the failed task's own callback
    (`log_failure`) has left the run's note.
    """
    run = context.get("dag_run")
    log.error(
        "FAILED dag=%s run=%s: %s",
        getattr(run, "dag_id", None),
        getattr(run, "run_id", None),
        context.get("reason") or context.get("exception"),
    )


def current_config():
    """This run's config: its model's settings, then the trigger form's values."""
    context = get_current_context()
    form = {name: context["params"][name] for name in trigger_form_fields() if name in context["params"]}
    return run_config(current_model(), form, context["dag_run"].run_id)


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


def _call_pipeline(function, *args):
    """Calls a pipeline function as a task body: TensorFlow's native stderr is logged at its level
    (`native_stderr_to_logging`), and a PipelineError fails the task (`fail_on_pipeline_error`)."""
    from pipeline.core.native_logs import native_stderr_to_logging

    with native_stderr_to_logging(logging.getLogger("tensorflow.native")):
        return fail_on_pipeline_error(function, *args)


def run_step(name: str, state: dict | None = None) -> dict | None:
    """Runs step `name` of the pipeline on the run's state.

    Returns:
        The new state for the next task, or None when the step stops the run (the reason is
        logged and pushed to XCom as `stop_reason`; a short-circuit task then skips the rest).
    """
    from pipeline import runner

    outcome = _call_pipeline(runner.run_step, name, current_config(), state or {}, who())
    if outcome.stop_reason:
        log.info("stopping the run after %s: %s", name, outcome.stop_reason)
        get_current_context()["ti"].xcom_push(key="stop_reason", value=outcome.stop_reason)
        return None
    return outcome.state


def plan_ingest() -> list[dict]:
    """The parts ingest writes, one mapped task each."""
    from pipeline import runner

    return _call_pipeline(runner.ingest_parts, current_config())  # `tfds:` sources read with TensorFlow


def write_ingest_part(part: dict) -> str:
    """Writes one part of the ingest plan; returns its folder."""
    from pipeline import runner

    get_current_context()["part_name"] = f"part {part['index'] + 1} of {part['parts']} ({part['split']})"
    return _call_pipeline(runner.write_ingest_part, current_config(), part)


def ingest_from_parts(parts: list[dict], part_folders: list[str]) -> dict | None:
    """The ingest step, merging the parts the mapped tasks wrote into the snapshot.

    `part_folders` (the mapped tasks' results) are the plan's own part folders: the task takes
    them so that it runs after every part.
    """
    from pipeline import runner

    return run_step("ingest", {runner.INGEST_PLAN: {"folder": parts[0]["plan"]}})


def plan_validation(state: dict) -> list[dict]:
    """The parts of the snapshot that validation measures, one mapped task each."""
    from pipeline import runner

    return fail_on_pipeline_error(runner.validation_parts, current_config(), state)


def measure_validation_part(state: dict, part: dict) -> str:
    """Measures one part (a shard file of a split); returns its file's path."""
    from pipeline import runner

    get_current_context()["part_name"] = f"{part['split']} shard {part['shard'] + 1} of {part['shards']}"
    return _call_pipeline(runner.measure_validation_part, current_config(), state, part)


def validate_from_parts(state: dict, part_files: list[str]) -> dict | None:
    """The validate step, merging the part files the mapped tasks wrote."""
    from pipeline import runner

    return run_step("validate", {**state, runner.VALIDATION_PARTS: {"files": list(part_files)}})


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


def _stop_after(task_id: str, reason: str) -> None:
    """Ends the run's release path after `task_id`: the reason in the log and XCom, `mark_stable` skipped."""
    log.warning("stopping the run after %s: %s", task_id, reason)
    get_current_context()["ti"].xcom_push(key="stop_reason", value=reason)
    raise AirflowSkipException(reason)


class CanaryWatchOperator(BaseOperator):
    """`watch_canary`: opens the canary's live traffic and waits in the triggerer, holding no worker slot.

    A canary that fails a check is rolled back (`canary` back on `stable`, its traffic ended,
    the reasons in the lineage log) and the task is skipped, so `mark_stable` is skipped too
    and the run's note says why. Without a configured watch the state passes straight through.

    Args:
        state: The run's state (an XComArg of the task before).
    """

    template_fields = ("state",)

    def __init__(self, *, state, **kwargs):
        super().__init__(**kwargs)
        self.state = state

    def execute(self, context):
        from mlops_triggers import CanaryWatchTrigger

        from pipeline import runner

        config = current_config()
        # Opening the watch loads the candidate's answers (TensorFlow): its native lines are not errors.
        plan = _call_pipeline(runner.begin_canary_watch, config, self.state, who())
        if "skipped" in plan:
            log.info("no canary watch: %s", plan["skipped"])
            return {**self.state, "watch_canary": plan}
        self.defer(
            trigger=CanaryWatchTrigger(config.to_dict(), plan),
            method_name="execute_complete",
            timeout=timedelta(seconds=config.canary_watch_seconds + 600),
        )

    def execute_complete(self, context, event: dict):
        from pipeline import runner

        verdict = {key: value for key, value in event.items() if key != "plan"}
        outcome = fail_on_pipeline_error(
            runner.finish_canary_watch, current_config(), self.state, event["plan"], verdict, who()
        )
        log.info("canary watch: %s", "; ".join(outcome.outputs["reasons"]))
        if outcome.stop_reason:
            _stop_after(self.task_id, outcome.stop_reason)
        return outcome.state


class CandidateApprovalOperator(ApprovalOperator):
    """`approve`: a person approves the candidate (Airflow's human-in-the-loop form) before `stable` moves.

    The form shows the candidate's metrics against stable, per-class recall, the gate's rules
    and the canary watch. Reject, or no answer within `response_timeout`, puts `canary` back on
    `stable` (`canary_rejected` in the lineage log, with who) and skips `mark_stable`.

    Args:
        state: The run's state (an XComArg of the task before).
    """

    template_fields = (*ApprovalOperator.template_fields, "state")

    def __init__(self, *, state, response_timeout: timedelta, **kwargs):
        super().__init__(
            subject="Promote the candidate to stable?",
            body="(filled in when the task runs)",
            defaults=ApprovalOperator.REJECT,  # no answer in time: rejected
            response_timeout=response_timeout,
            **kwargs,
        )
        self.state = state

    def execute(self, context):
        from pipeline.release.report import approval_markdown

        version = self.state["export"]["version"]
        self.subject = f"Promote {current_config().model_name} version {version} to stable?"
        self.body = approval_markdown(self.state)
        return super().execute(context)

    def execute_complete(self, context, event: dict):
        try:
            answer = super().execute_complete(context, event)
        except DownstreamTasksSkipped:  # a Reject (or the timeout's default): mark_stable is being skipped
            self._record(event, approved=False)
            raise
        return self._record(answer, approved=answer["chosen_options"] == [self.APPROVE])

    def _record(self, answer: dict, approved: bool) -> dict:
        """Records the decision in the lineage log; a rejection withdraws the canary. Returns the new state."""
        from pipeline import runner

        user = answer.get("responded_by_user") or {}
        by = user.get("name") or user.get("id") or f"nobody within {self.response_timeout} (timeout: rejected)"
        outcome = fail_on_pipeline_error(runner.record_approval, current_config(), self.state, approved, by)
        if outcome.stop_reason:
            log.warning("%s: canary withdrawn", outcome.stop_reason)
            get_current_context()["ti"].xcom_push(key="stop_reason", value=outcome.stop_reason)
        return outcome.state
