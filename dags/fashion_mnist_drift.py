"""Watch what the served Fashion-MNIST model sees; when it drifts from the training data, ask for retraining.

check_drift -> request_retraining

`check_drift` reads the request logs the serving server wrote since the last check
(sampled Predict calls as PredictionLog records; `request_log_sampling_rate` in
dags/settings.yaml), compares their pixel statistics and predicted-class distribution with
the stable model's training data, and writes a report (JSON + PNG) under
`<workdir>/monitoring/`. When a threshold is passed, `request_retraining` emits an event on
the drift asset; the training DAG is scheduled on it (besides its nightly slot), so drift
starts a training run without a person. Without drift the second task is skipped; either
way the run's note says what was found.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task
from dag_helpers import DRIFT_DETECTED, SETTINGS, default_task_args, run_drift_check
from mlops_timetables import UpcomingCronTimetable


@dag(
    dag_id="fashion_mnist_drift",
    schedule=UpcomingCronTimetable(SETTINGS.drift_schedule, timezone="UTC") if SETTINGS.drift_schedule else None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["ml", "monitoring", "serving"],
    doc_md=__doc__,
    default_args=default_task_args(),
)
def fashion_mnist_drift():
    @task.short_circuit
    def check_drift() -> dict | None:
        return run_drift_check()

    @task(outlets=[DRIFT_DETECTED])
    def request_retraining(result: dict, *, outlet_events=None) -> dict:
        outlet_events[DRIFT_DETECTED].extra = {
            "summary": result["summary"],
            "requests": result["requests"],
            "report_path": result["report_path"],
        }
        return result

    request_retraining(check_drift())


fashion_mnist_drift()
