"""Train, gate, validate and promote the Fashion-MNIST classifier.

ingest -> validate -> check_changes -> train -> evaluate -> gate -> export
-> infra_validate -> promote_canary -> smoke_test -> mark_stable

Each task calls one function of `pipeline.runner`; artifacts move between tasks as
paths in XCom. `check_changes` and `gate` short-circuit: the tasks after them are
skipped (not failed) with the reason in the log and in XCom, and what is served does
not change. Data errors fail at once; other failures (a serving endpoint down) retry
with exponential backoff.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, CronTriggerTimetable, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from pipeline.deployment import describe_trigger, load_settings, run_config
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SETTINGS = load_settings(Path(__file__).with_name("settings.yaml"), PROJECT_ROOT)
BASE = SETTINGS.base_config()
STABLE_MODEL = Asset(*SETTINGS.stable_model_asset())
PARAM_FIELDS = (
    "data_source",
    "model",
    "epochs",
    "batch_size",
    "learning_rate",
    "min_accuracy",
    "max_regression",
    "force",
)


def log_failure(context) -> None:
    """Failure callback: one clear line naming the run, the task, the attempt and the error."""
    ti = context["ti"]
    log.error(
        "FAILED dag=%s run=%s task=%s try=%s/%s error=%s",
        ti.dag_id, ti.run_id, ti.task_id, ti.try_number, ti.max_tries + 1, context.get("exception"),
    )  # fmt: skip


def _config():
    context = get_current_context()
    params = {name: context["params"][name] for name in PARAM_FIELDS if name in context["params"]}
    return run_config(SETTINGS, params, context["dag_run"].run_id)


def _who() -> str:
    run = get_current_context()["dag_run"]
    return describe_trigger(run.run_type, getattr(run, "triggering_user_name", None))


def _step(function, *args):
    """Runs a pipeline step; a PipelineError (bad data, refused model) fails without retries."""
    try:
        return function(*args)
    except PipelineError as err:
        raise AirflowFailException(f"{type(err).__name__}: {err}") from err


@dag(
    dag_id="fashion_mnist_training",
    # A new or unpaused deployment waits for the next 02:00 instead of training at once.
    schedule=CronTriggerTimetable(SETTINGS.schedule, timezone="UTC") if SETTINGS.schedule else None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["ml", "training", "serving"],
    doc_md=__doc__,
    default_args={
        "retries": SETTINGS.retries,
        "retry_delay": timedelta(seconds=SETTINGS.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(seconds=SETTINGS.max_retry_delay_seconds),
        "execution_timeout": timedelta(minutes=SETTINGS.task_timeout_minutes),
        "on_failure_callback": log_failure,
    },
    on_failure_callback=log_failure,
    params={
        "data_source": Param(
            BASE.data_source,
            type="string",
            pattern=r"^(idx|tfds):.+",
            title="Data source",
            description="idx:<folder of MNIST-format IDX files> or tfds:<TFDS dataset name>",
        ),
        "model": Param(BASE.model, type="string", enum=["cnn", "mlp"], title="Model", description="Model builder"),
        "epochs": Param(
            BASE.epochs,
            type="integer",
            minimum=1,
            maximum=500,
            title="Epochs",
            description="Maximum training epochs (early stopping may end sooner)",
        ),
        "batch_size": Param(
            BASE.batch_size,
            type="integer",
            minimum=1,
            maximum=8192,
            title="Batch size",
            description="Global batch size, split across GPUs",
        ),
        "learning_rate": Param(
            BASE.learning_rate,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            title="Learning rate",
            description="Peak learning rate (Adam, cosine decay)",
        ),
        "min_accuracy": Param(
            BASE.min_accuracy,
            type="number",
            minimum=0,
            maximum=1,
            title="Minimum accuracy",
            description="Gate: the candidate needs at least this test accuracy",
        ),
        "max_regression": Param(
            BASE.max_regression,
            type="number",
            minimum=0,
            maximum=1,
            title="Maximum regression",
            description="Gate: largest accuracy drop allowed against the published model",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Retrain and promote even if data, config and code are unchanged",
        ),
    },  # fmt: skip
)
def fashion_mnist_training():
    from pipeline import runner

    @task
    def ingest() -> dict:
        return _step(runner.ingest_step, _config())

    @task
    def validate(ingested: dict) -> dict:
        return _step(runner.validate_step, _config(), ingested["snapshot"])

    @task.short_circuit
    def check_changes(ingested: dict) -> bool:
        reason = _step(runner.unchanged_step, _config(), ingested["fingerprint"], _who())
        if reason:
            log.info("skipping the rest of the run: %s", reason)
            get_current_context()["ti"].xcom_push(key="skip_reason", value=reason)
        return reason is None

    @task(pool=SETTINGS.pool, queue=SETTINGS.queue, execution_timeout=timedelta(minutes=SETTINGS.train_timeout_minutes))
    def train(ingested: dict) -> dict:
        return _step(runner.train_step, _config(), ingested["snapshot"])

    @task
    def evaluate(ingested: dict, trained: dict) -> dict:
        return _step(runner.evaluate_step, _config(), ingested["snapshot"], trained["model_path"])

    @task.short_circuit
    def gate(ingested: dict, evaluated: dict) -> bool:
        blessed = _step(runner.gate_step, _config(), evaluated, ingested["fingerprint"], _who())
        reasons = "; ".join(evaluated["reasons"])
        log.info("gate: %s (%s)", "BLESSED" if blessed else "NOT blessed: stopping before export", reasons)
        get_current_context()["ti"].xcom_push(key="reasons", value=evaluated["reasons"])
        return blessed

    @task
    def export(ingested: dict, trained: dict, evaluated: dict) -> dict:
        return _step(
            runner.export_step, _config(), ingested["snapshot"], trained["model_path"], evaluated["evaluation_path"]
        )

    @task
    def infra_validate(ingested: dict, exported: dict) -> dict:
        return _step(runner.infra_validate_step, _config(), ingested["snapshot"], exported["version_dir"])

    @task
    def promote_canary(exported: dict, validated: dict) -> dict:
        return _step(runner.promote_canary_step, _config(), exported["version"], _who())

    @task
    def smoke_test(ingested: dict, exported: dict, promoted: dict) -> dict:
        return _step(runner.smoke_test_step, _config(), ingested["snapshot"], exported["version_dir"])

    @task(outlets=[STABLE_MODEL])
    def mark_stable(exported: dict, smoked: dict, *, outlet_events=None) -> dict:
        result = _step(runner.mark_stable_step, _config(), exported["version"], _who())
        outlet_events[STABLE_MODEL].extra = {"version": exported["version"], "version_dir": exported["version_dir"]}
        return result

    ingested = ingest()
    validated = validate(ingested)
    changed = check_changes(ingested)
    trained = train(ingested)
    validated >> changed >> trained
    evaluated = evaluate(ingested, trained)
    blessed = gate(ingested, evaluated)
    exported = export(ingested, trained, evaluated)
    blessed >> exported
    infra = infra_validate(ingested, exported)
    promoted = promote_canary(exported, infra)
    smoked = smoke_test(ingested, exported, promoted)
    mark_stable(exported, smoked)


fashion_mnist_training()
