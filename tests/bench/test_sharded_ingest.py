"""bench/sharded_ingest.py: reading what Airflow and the Celery workers recorded (the run itself: `make bench`)."""

from __future__ import annotations

from bench import sharded_ingest
from deploy import celery_stack

# The shape of the line a Celery worker logs for each task instance it runs (Airflow 3.1's celery provider).
WORKER_LINE = (
    "2026-12-04T18:32:01.769975Z [info     ] [61fb88e2] Executing workload in Celery: dag_rel_path=PurePosixPath("
    "'training.py') log_path='dag_id=fashion_mnist_training/run_id={run}/task_id={task}/{where}attempt=1.log' "
    "ti=TaskInstanceDTO(id=UUID('01a2'), task_id='{task}', dag_id='fashion_mnist_training', run_id='{run}', "
    "try_number=1, map_index={index}, hostname='')"
)


def _line(task: str, index: int, run: str = "manual__1") -> str:
    where = f"map_index={index}/" if index >= 0 else ""
    return WORKER_LINE.format(task=task, index=index, run=run, where=where)


def test_each_task_instance_is_put_to_the_worker_whose_log_ran_it(tmp_path):
    stack = celery_stack.Stack(tmp_path)
    (tmp_path / "worker-a.log").write_text(
        "\n".join([_line("ingest_plan", -1), _line("ingest_part", 0), _line("ingest_part", 2, run="manual__0")])
    )
    (tmp_path / "worker-b.log").write_text(_line("ingest_part", 1) + "\nready.\n")
    ran = sharded_ingest._worker_of(stack, ["worker-a", "worker-b"], "manual__1")
    assert ran == {("ingest_plan", -1): "worker-a", ("ingest_part", 0): "worker-a", ("ingest_part", 1): "worker-b"}


def test_the_figures_and_report_of_both_paths(tmp_path):
    def instance(task, index, start, end):
        return {
            "task_id": task,
            "map_index": index,
            "start_date": f"2026-12-04T10:00:{start:02d}Z",
            "end_date": f"2026-12-04T10:00:{end:02d}Z",
        }

    instances = [
        instance("ingest_plan", -1, 0, 5),
        instance("ingest_part", 0, 6, 20),
        instance("ingest_part", 1, 6, 22),
        instance("ingest", -1, 23, 25),
        instance("validation_parts", -1, 26, 27),
        instance("measure_part", 0, 28, 31),
        instance("validate", -1, 32, 33),
    ]
    ran = {("ingest_part", 0): "worker-a", ("ingest_part", 1): "worker-b", ("measure_part", 0): "worker-b"}
    snapshot = tmp_path / "snapshots" / "data-abc"
    snapshot.mkdir(parents=True)
    (snapshot / "snapshot.json").write_text('{"fingerprint": "abc123abc123ff"}')
    figures = sharded_ingest._celery_figures(instances, ran, ["worker-a", "worker-b"], tmp_path)
    assert (figures["seconds"], figures["ingest_seconds"], figures["validate_seconds"]) == (33.0, 25.0, 8.0)
    assert figures["shares"] == {
        "worker-a": {"ingest_part": 1, "measure_part": 0},
        "worker-b": {"ingest_part": 1, "measure_part": 1},
    }
    single = {"ingest_seconds": 30.0, "validate_seconds": 10.0, "seconds": 40.0, "fingerprint": "abc123abc123ff"}
    report = sharded_ingest.markdown(
        {
            "machine": "2 CPUs",
            "date": "2026-12-04",
            "data_source": "idx:x",
            "rows": 10,
            "part_mb": 1,
            "shards": 2,
            "single_process": single,
            "celery": {"2": figures},
        }
    )
    assert "| Celery, 2 workers | 25.0 | 8.0 | 33.0 | 1.21x |" in report
    assert "made the same snapshot: yes" in report and "| worker-b | 1 | 1 |" in report
