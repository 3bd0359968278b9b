"""Roll a model's `stable` back to an earlier published version: one DAG per model, `<model>_rollback`.

Trigger with the version to serve; the decision (who, why, from which version) goes to
the lineage log, and the model's stable-model asset gets an event like any promotion. Other
models' versions and labels are not touched.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task
from dag_helpers import MODELS, RUN_NOTE_KEY, current_config, fail_on_pipeline_error, stable_model, who

from pipeline.dag_settings import ModelSettings


def _describe(row: dict) -> str:
    """'version 3, test accuracy 0.9320 (stable)': a version with its gate metric and labels."""
    metrics = row["metrics"]
    metric = row["gate_metric"] if row["gate_metric"] in metrics else next(iter(metrics), None)
    text = f"version {row['version']}" + (f", test {metric} {metrics[metric]:.4f}" if metric else "")
    return text + (f" ({', '.join(row['labels'])})" if row["labels"] else "")


def version_param(model: ModelSettings) -> Param:
    """The version field: a list of the model's published versions with their gate metric and labels.

    Read when the DAG file is parsed (every few seconds), so it follows new versions.
    """
    from pipeline.release.report import registry_rows

    rows = registry_rows(model.base_config())
    if not rows:
        return Param(1, type="integer", minimum=1, title="Version", description="No version is published yet.")
    stable = next((row["version"] for row in rows if "stable" in row["labels"]), None)
    display = {str(row["version"]): _describe(row) for row in rows}
    return Param(
        next((row["version"] for row in rows if row["version"] != stable), rows[0]["version"]),
        type="integer",
        enum=[row["version"] for row in rows],
        values_display=display,
        title="Version",
        description=f"Published version to label stable (now stable: {stable if stable else 'none'}).",
    )


def rollback_dag(model: ModelSettings):
    """The rollback DAG of one model."""
    stable = stable_model(model)

    @dag(
        dag_id=model.rollback_dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["ml", "serving", model.name],
        doc_md=__doc__,
        params={
            "version": version_param(model),
            "reason": Param(
                "", type="string", maxLength=500, title="Reason", description="Why (kept in the lineage log)"
            ),
        },
    )
    def rollback_model():
        @task(outlets=[stable])
        def rollback(*, outlet_events=None) -> dict:
            from pipeline import runner

            params = get_current_context()["params"]
            result = fail_on_pipeline_error(
                runner.rollback, current_config(), params["version"], who(), params["reason"]
            )
            summary = f"rolled back: stable is version {result['stable']} (was {result['previous_stable']})"
            summary += f": {params['reason']}" if params["reason"] else ""
            outlet_events[stable].extra = {"version": result["stable"], "rollback": True, "summary": summary}
            get_current_context()["ti"].xcom_push(key=RUN_NOTE_KEY, value=summary)
            return result

        rollback()

    return rollback_model()


for _model in MODELS:
    globals()[_model.rollback_dag_id] = rollback_dag(_model)
