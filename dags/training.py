"""Train, gate, validate and promote each model of the deployment: one DAG per model, `<model>_training`.

ingest_plan -> ingest_part (mapped: one per part of the source) -> ingest
-> validation_parts -> measure_part (mapped: one per shard file) -> validate -> check_changes
-> train -> evaluate -> gate -> export
-> infra_validate -> promote_canary -> smoke_test -> watch_canary [-> approve] -> mark_stable -> report

Each task runs one step of `pipeline.runner` (the same sequence `python -m pipeline run`
runs) and hands the run's state (artifact paths, never arrays) to the next task.
`check_changes` and `gate` short-circuit: the tasks after them are skipped (not failed)
with the reason in the log and in XCom (`stop_reason`), and what is served does not
change. `report` runs after every run that did not fail: it writes the run's report page
(metrics, baseline, slices, confusion matrix or predictions, curves, model card; the "Run
report" tab) and says what the run did, which becomes the run's note: "promoted version N
...", "not blessed: ...", "canary version N rolled back: ...", "skipped: ...". Data errors
fail at once; other failures (a serving endpoint down) retry with exponential backoff.

`watch_canary` gives the canary its share of live traffic and waits in the triggerer (no
worker slot) while its errors, latency and agreement with `stable` are judged; a failing
canary is rolled back automatically and `mark_stable` is skipped. With `approval_required`
in the model's settings, `approve` then asks a person (Airflow's Required Actions);
Reject or no answer in time withdraws the canary.

Each model has its own pool and queue (its settings, else the deployment's), its own
stable-model and drift assets, and its own entry in the shared serving config: promoting,
rolling back or withdrawing one model never touches another's versions or labels.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, TriggerRule, dag, task
from dag_helpers import (
    MODELS,
    SETTINGS,
    CanaryWatchOperator,
    CandidateApprovalOperator,
    default_task_args,
    drift_detected,
    ingest_from_parts,
    log_run_failure,
    measure_validation_part,
    outcome_extra,
    plan_ingest,
    plan_validation,
    run_report,
    run_step,
    stable_model,
    trigger_params,
    validate_from_parts,
    write_ingest_part,
)
from mlops_timetables import UpcomingCronTimetable

from pipeline.dag_settings import ModelSettings


def _schedule(model: ModelSettings):
    # A new or unpaused deployment, or one whose scheduler was down at 02:00, waits for the next
    # 02:00 instead of training at once (Airflow's own cron timetable runs the latest past slot).
    # Drift in the request logs (the drift DAG's asset event) also starts a run.
    if not model.schedule:
        return None
    return AssetOrTimeSchedule(
        timetable=UpcomingCronTimetable(model.schedule, timezone="UTC"), assets=[drift_detected(model)]
    )


def training_dag(model: ModelSettings):
    """The training DAG of one model."""
    stable = stable_model(model)

    @dag(
        dag_id=model.training_dag_id,
        schedule=_schedule(model),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["ml", "training", "serving", model.name],
        doc_md=__doc__,
        default_args=default_task_args(),
        on_failure_callback=log_run_failure,
        params=trigger_params(model),
    )
    def training():
        _tasks(model, stable)

    return training()


def _tasks(model: ModelSettings, stable) -> None:
    # Ingest fans out over parts of the source (dynamic task mapping: Celery or Kubernetes
    # workers share the reading and writing); `ingest` merges the parts into the snapshot. A
    # retried part that was written is kept, and a rerun of unchanged data reuses the plan.
    @task
    def ingest_plan() -> list[dict]:
        return plan_ingest()

    @task(map_index_template="{{ part_name }}")
    def ingest_part(part: dict) -> str:
        return write_ingest_part(part)

    @task
    def ingest(parts: list[dict], part_folders: list[str]) -> dict:
        return ingest_from_parts(parts, part_folders)

    # Validation fans out over the snapshot's shard files (dynamic task mapping: Celery or
    # Kubernetes workers share the reading); `validate` merges the parts in shard order.
    @task
    def validation_parts(state: dict) -> list[dict]:
        return plan_validation(state)

    @task(map_index_template="{{ part_name }}")
    def measure_part(state: dict, part: dict) -> str:
        return measure_validation_part(state, part)

    @task
    def validate(state: dict, part_files: list[str]) -> dict:
        return validate_from_parts(state, part_files)

    # A short-circuit skips the tasks after it but not `report` (trigger rule none_failed).
    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def check_changes(state: dict) -> dict | None:
        return run_step("check_changes", state)

    @task(
        pool=model.pool,
        queue=model.queue,
        executor_config=SETTINGS.train_executor_config(),
        execution_timeout=timedelta(minutes=model.train_timeout_minutes),
    )
    def train(state: dict) -> dict:
        return run_step("train", state)

    @task
    def evaluate(state: dict) -> dict:
        return run_step("evaluate", state)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def gate(state: dict) -> dict | None:
        return run_step("gate", state)

    @task
    def export(state: dict) -> dict:
        return run_step("export", state)

    @task
    def infra_validate(state: dict) -> dict:
        return run_step("infra_validate", state)

    @task
    def promote_canary(state: dict) -> dict:
        return run_step("promote_canary", state)

    @task
    def smoke_test(state: dict) -> dict:
        return run_step("smoke_test", state)

    @task(outlets=[stable])
    def mark_stable(state: dict, *, outlet_events=None) -> dict:
        state = run_step("mark_stable", state)
        outlet_events[stable].extra = outcome_extra(state)
        return state

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def report() -> dict:
        return run_report()

    parts = ingest_plan()
    state = ingest(parts, ingest_part.expand(part=parts))
    part_files = measure_part.partial(state=state).expand(part=validation_parts(state))
    state = validate(state, part_files)
    for step in (check_changes, train, evaluate, gate, export, infra_validate, promote_canary, smoke_test):
        state = step(state)
    state = CanaryWatchOperator(task_id="watch_canary", state=state).output
    if model.approval_required:
        state = CandidateApprovalOperator(
            task_id="approve", state=state, response_timeout=timedelta(minutes=model.approval_timeout_minutes)
        ).output
    mark_stable(state) >> report()


for _model in MODELS:
    globals()[_model.training_dag_id] = training_dag(_model)
