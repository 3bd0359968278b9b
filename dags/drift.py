"""Watch what each served model sees; when it drifts from the training data, ask for retraining.

One DAG per model of the deployment, `<model>_drift`: check_drift -> request_retraining

`check_drift` reads the request logs the serving server wrote since the last check
(sampled Predict calls as PredictionLog records with the model's named features;
`request_log_sampling_rate` in dags/settings.yaml), compares every feature and the
predictions with the stable model's training data, and writes a report (JSON + PNG, drifted
features first) under `<workdir>/monitoring/<model>/`. When a threshold is passed,
`request_retraining` emits an event on the model's drift asset; the model's training DAG is
scheduled on it (besides its nightly slot), so drift starts a training run without a person.
Without drift the second task is skipped; either way the run's note says what was found.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task
from dag_helpers import MODELS, default_task_args, drift_detected, run_drift_check
from mlops_timetables import UpcomingCronTimetable

from pipeline.dag_settings import ModelSettings


def drift_dag(model: ModelSettings):
    """The drift DAG of one model."""
    detected = drift_detected(model)

    @dag(
        dag_id=model.drift_dag_id,
        schedule=UpcomingCronTimetable(model.drift_schedule, timezone="UTC") if model.drift_schedule else None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["ml", "monitoring", "serving", model.name],
        doc_md=__doc__,
        default_args=default_task_args(),
    )
    def drift():
        @task.short_circuit
        def check_drift() -> dict | None:
            return run_drift_check()

        @task(outlets=[detected])
        def request_retraining(result: dict, *, outlet_events=None) -> dict:
            outlet_events[detected].extra = {
                "summary": result["summary"],
                "requests": result["requests"],
                "report_path": result["report_path"],
            }
            return result

        request_retraining(check_drift())

    return drift()


for _model in MODELS:
    globals()[_model.drift_dag_id] = drift_dag(_model)
