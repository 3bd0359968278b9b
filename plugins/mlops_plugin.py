"""The project's Airflow plugin: run outcomes as run notes, run reports and the registry in the UI.

- Registers `UpcomingCronTimetable` (the training DAG's schedule; the scheduler must know it).
- A listener copies the one-line outcome a run's tasks leave in XCom (key `run_note`:
  "promoted version 3 ...", "not blessed: ...", "skipped: ...", "failed at train ...") into the
  DAG run's note, so the run page and the runs list tell a promotion from a rejection.
  It never replaces a note a person wrote.
- A FastAPI app on the API server (`/mlops`) serves each run's report page (written by the
  pipeline's `report` step, found through the run's model) and each model's registry page
  (published versions, labels, the task's metrics), behind Airflow's own login and DAG
  permissions; external views put them in the UI: a "Run report" tab on every DAG run and a
  "Model registry" entry in the navigation (every model of the deployment, each linked).

Install: put this folder on Airflow's plugins path (`[core] plugins_folder`); the Airflow
image copies it to /opt/airflow/plugins. Everything it shows comes from `pipeline`.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse
from mlops_timetables import UpcomingCronTimetable

log = logging.getLogger(__name__)

RUN_NOTE_KEY = "run_note"  # The key dags/dag_helpers.py pushes.
URL_PREFIX = "/mlops"
NOTE_MAX_CHARS = 1000  # The size of Airflow's dag_run_note.content column.


def latest_run_note(session, dag_id: str, run_id: str) -> str | None:
    """The newest `run_note` XCom any task of the run pushed, or None."""
    from airflow.models.xcom import XComModel

    rows = session.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id, key=RUN_NOTE_KEY)).all()
    if not rows:
        return None
    newest = max(rows, key=lambda row: row.timestamp)
    return str(XComModel.deserialize_value(newest))[:NOTE_MAX_CHARS]


def write_run_note(dag_run) -> None:
    """Sets the DAG run's note from its tasks' `run_note`, unless the run has no such XCom or a note.

    In the scheduler the run is bound to the scheduler's session, which commits the note with
    the run's new state; `dag.test()` hands over a detached run, so the note gets its own session.
    """
    from sqlalchemy.orm import Session

    session = Session.object_session(dag_run)
    if session is not None:
        _set_note(session, dag_run)
        return
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as own_session:
        _set_note(own_session, own_session.get(DagRun, dag_run.id))


def _set_note(session, dag_run) -> None:
    if dag_run is None or dag_run.note:
        return
    note = latest_run_note(session, dag_run.dag_id, dag_run.run_id)
    if note:
        dag_run.note = note


class RunNoteListener:
    """Writes run notes when DAG runs end (called in the scheduler, inside its session)."""

    @hookimpl
    def on_dag_run_success(self, dag_run, msg: str) -> None:
        write_run_note(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run, msg: str) -> None:
        write_run_note(dag_run)


@functools.cache
def _settings():
    from airflow.configuration import conf

    from pipeline.dag_settings import load_settings

    dags_folder = Path(conf.get("core", "dags_folder"))
    # As dags/dag_helpers.py: relative paths in settings.yaml are relative to the project root.
    return load_settings(dags_folder / "settings.yaml", dags_folder.parent)


def _page(title: str, message: str, status_code: int) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>{title}</title><p>{message}</p>", status_code=status_code)


def _requires_dag_read():
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET"))


def _model(dag_id: str):
    """The deployment's model a DAG belongs to, or None (a DAG of no model)."""
    from pipeline.core.errors import ConfigError

    try:
        return _settings().model_for_dag(dag_id)
    except ConfigError:
        return None


def build_reports_app() -> FastAPI:
    """The `/mlops` app: `/runs/{dag_id}/{run_id}` (run report), `/registry` and `/registry/{dag_id}`."""
    import html

    app = FastAPI(title="Keras MLOps pipeline reports")

    @app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse, dependencies=[_requires_dag_read()])
    def run_report(dag_id: str, run_id: str) -> HTMLResponse:
        from pipeline.dag_settings import run_config
        from pipeline.release.report import report_path

        model = _model(dag_id)
        path = report_path(run_config(model, {}, run_id)) if model else None
        if path is None or not path.exists():
            return _page(
                "No report",
                f"No report for run {html.escape(run_id)} of {html.escape(dag_id)}: the report task writes it at "
                "the end of every training run that did not fail.",
                404,
            )
        return HTMLResponse(path.read_text())

    @app.get("/registry", response_class=HTMLResponse, dependencies=[_requires_dag_read()])
    def registry_index() -> HTMLResponse:
        links = "".join(
            f'<li><a href="{URL_PREFIX}/registry/{html.escape(model.training_dag_id)}">'
            f"{html.escape(model.name)}</a></li>"
            for model in _settings().model_list()
        )
        return HTMLResponse(f"<!doctype html><title>Model registry</title><h1>Models</h1><ul>{links}</ul>")

    @app.get("/registry/{dag_id}", response_class=HTMLResponse, dependencies=[_requires_dag_read()])
    def registry(dag_id: str) -> HTMLResponse:
        from pipeline.release.report import render_registry

        model = _model(dag_id)
        if model is None:
            return _page("No model", f"{html.escape(dag_id)} is not a DAG of a model of this deployment.", 404)
        return HTMLResponse(
            render_registry(model.base_config(), f"{URL_PREFIX}/runs/{html.escape(model.training_dag_id)}/")
        )

    return app


class MlopsPlugin(AirflowPlugin):
    """Timetable, run notes, run reports and the model registry of the Keras MLOps pipeline."""

    name = "keras_mlops"
    timetables = [UpcomingCronTimetable]
    listeners = [RunNoteListener()]
    fastapi_apps = [{"app": build_reports_app(), "url_prefix": URL_PREFIX, "name": "Keras MLOps reports"}]
    external_views = [
        {
            "name": "Run report",
            "href": URL_PREFIX + "/runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "run_report",
        },
        {
            "name": "Model registry",
            "href": f"{URL_PREFIX}/registry",
            "destination": "nav",
            "category": "browse",
            "url_route": "model_registry",
        },
    ]
