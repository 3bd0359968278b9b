"""Roll `stable` back to an earlier published version of the Fashion-MNIST model.

Trigger with the version to serve; the decision (who, why, from which version) goes to
the lineage log, and the stable-model asset gets an event like any promotion.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from pipeline.deployment import describe_trigger, load_settings, run_config
from pipeline.errors import PipelineError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SETTINGS = load_settings(Path(__file__).with_name("settings.yaml"), PROJECT_ROOT)
STABLE_MODEL = Asset(*SETTINGS.stable_model_asset())


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
    },  # fmt: skip
)
def fashion_mnist_rollback():
    @task(outlets=[STABLE_MODEL])
    def rollback(*, outlet_events=None) -> dict:
        from pipeline import runner

        context = get_current_context()
        run = context["dag_run"]
        config = run_config(SETTINGS, {}, run.run_id)
        who = describe_trigger(run.run_type, getattr(run, "triggering_user_name", None))
        try:
            result = runner.rollback_step(config, context["params"]["version"], who, context["params"]["reason"])
        except PipelineError as err:
            raise AirflowFailException(f"{type(err).__name__}: {err}") from err
        outlet_events[STABLE_MODEL].extra = {"version": result["stable"], "rollback": True}
        return result

    rollback()


fashion_mnist_rollback()
