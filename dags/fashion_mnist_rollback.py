"""Roll `stable` back to an earlier published version of the Fashion-MNIST model.

Trigger with the version to serve; the decision (who, why, from which version) goes to
the lineage log, and the stable-model asset gets an event like any promotion.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task
from dag_helpers import STABLE_MODEL, current_config, fail_on_pipeline_error, who


@dag(
    dag_id="fashion_mnist_rollback",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["ml", "serving"],
    doc_md=__doc__,
    params={
        "version": Param(
            1, type="integer", minimum=1, title="Version", description="Published version to label stable"
        ),
        "reason": Param("", type="string", maxLength=500, title="Reason", description="Why (kept in the lineage log)"),
    },
)
def fashion_mnist_rollback():
    @task(outlets=[STABLE_MODEL])
    def rollback(*, outlet_events=None) -> dict:
        from pipeline import runner

        params = get_current_context()["params"]
        result = fail_on_pipeline_error(runner.rollback, current_config(), params["version"], who(), params["reason"])
        outlet_events[STABLE_MODEL].extra = {"version": result["stable"], "rollback": True}
        return result

    rollback()


fashion_mnist_rollback()
