"""`make bench`: the training DAG's sharded data path on the Celery stack with two workers, against one process.

The data (10x Fashion-MNIST, 700,000 images, written by `data_scale.write_scaled`, by default)
is ingested and validated twice:

    one process   `python -m pipeline ingest`, then `validate` (the runner's sequential path)
    Celery        the training DAG on deploy/celery_stack.py: PostgreSQL, Redis, and one, then
                  two Celery workers on the default queue (concurrency 1 each). `ingest_plan` plans,
                  `ingest_part` is mapped over the parts, `ingest` merges them; then
                  `validation_parts`, the mapped `measure_part` and `validate`. The training
                  queue has no worker, so the run stops being measured at `train`.

It reports each path's wall time (the Celery path from `ingest_plan`'s start to `validate`'s
end, as Airflow recorded them), and which worker ran each mapped task (from the workers' logs).
Both snapshots must be the same (their fingerprints are compared). Needs PostgreSQL on
127.0.0.1:5432 (trust auth) and Redis on 127.0.0.1:6379.

    .venv/bin/python bench/sharded_ingest.py [--data-dir /usr/share/datasets/fashion-mnist]
        [--scale 10] [--part-mb 64] [--shards 8] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.data_scale import write_scaled  # noqa: E402
from bench.report import write_report  # noqa: E402
from deploy import airflow_api, celery_stack  # noqa: E402

POSTGRES_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
REDIS_URL = "redis://127.0.0.1:6379/0"
DAG_ID = "fashion_mnist_training"
DATA_TASKS = ("ingest_plan", "ingest_part", "ingest", "validation_parts", "measure_part", "validate")
MAPPED = ("ingest_part", "measure_part")


def single_process(data_source: str, workdir: Path, options: list[str]) -> dict:
    """Ingest, then validate, each a `python -m pipeline` process; their wall times and the snapshot."""
    figures = {}
    for step in ("ingest", "validate"):
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", step, "--data-source", data_source, "--workdir", str(workdir)]
            + ["--run-id", "single", *options],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"pipeline {step} failed: {result.stderr[-3000:]}")
        figures[f"{step}_seconds"] = round(time.perf_counter() - started, 1)
        if step == "ingest":
            figures["fingerprint"] = json.loads(result.stdout)["fingerprint"]
    figures["seconds"] = round(figures["ingest_seconds"] + figures["validate_seconds"], 1)
    return figures


def _dag_folder(folder: Path, settings: dict) -> None:
    folder.mkdir(parents=True)
    for dag_file in [*(ROOT / "dags").glob("*.py"), ROOT / "dags" / ".airflowignore"]:
        shutil.copy(dag_file, folder / dag_file.name)
    (folder / "settings.yaml").write_text(yaml.safe_dump(settings))


def _admin_sql(statement: str) -> None:
    """Runs one statement on the PostgreSQL server as its admin (CREATE / DROP DATABASE)."""
    import psycopg2

    admin = psycopg2.connect(POSTGRES_ADMIN_DSN, connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(statement)
    admin.close()


def _forget_queues(suffix: str) -> None:
    import redis

    broker = redis.Redis.from_url(REDIS_URL)
    for key in broker.scan_iter(f"*{suffix}*"):
        broker.delete(key)


def _task_instances(base: str, token: str, run_id: str) -> list[dict]:
    url = f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=1000"
    return airflow_api.request(url, token=token)[1]["task_instances"]


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _worker_of(stack: celery_stack.Stack, workers: list[str], run_id: str) -> dict[tuple[str, int], str]:
    """(task id, map index) -> the worker whose log says it executed that task instance of `run_id`."""
    ran = {}
    for worker in workers:
        for line in stack.log(worker).splitlines():
            if "Executing workload in Celery" in line and run_id in line:
                task = re.search(r"task_id='([^']+)'", line)
                index = re.search(r"map_index=(-?\d+)", line)
                if task:
                    ran[(task.group(1), int(index.group(1)) if index else -1)] = worker
    return ran


def celery_path(data_source: str, scratch: Path, pipeline_options: dict, workers: int) -> dict:
    """Runs the training DAG's data tasks on the Celery stack; their wall time and who ran what."""
    suffix = uuid.uuid4().hex[:8]
    default_queue, train_queue = f"default_{suffix}", f"train_{suffix}"
    home = scratch / "airflow"
    work = scratch / "work"
    settings = {
        "schedule": None,
        "drift_schedule": None,
        "pool": "gpu_training",
        "queue": train_queue,  # no worker takes it: the run is measured up to `train`
        "retries": 0,
        "pipeline": {
            "data_source": data_source,
            "workdir": str(work),
            "model_base_path": str(work / "models"),
            "model_name": "fashion_mnist",
            "serving_config_file": str(work / "serving" / "models.config"),
            **pipeline_options,
        },
    }
    _dag_folder(home / "dags", settings)
    database = f"airflow_bench_{suffix}"
    _admin_sql(f"CREATE DATABASE {database}")
    port = str(_free_port())
    base_env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__PORT": port,
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": default_queue,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env = celery_stack.celery_env(
        base_env,
        database_url=POSTGRES_URL.format(name=database),
        broker_url=REDIS_URL,
        jwt_secret=secrets.token_urlsafe(32),
    )
    stack = celery_stack.Stack(home / "logs-stack")
    base = f"http://localhost:{port}"
    try:
        airflow_api.prepare_database(env, settings["pool"])
        stack.start(celery_stack.service_commands(airflow_api.AIRFLOW, [default_queue] * workers), env, cwd=home)

        def check_alive():
            if stack.dead():
                raise celery_stack.StackError(f"{stack.dead()} exited:\n" + stack.log(stack.dead()[0])[-3000:])

        token, _ = airflow_api.wait_and_log_in(base, home, check_alive)
        dag_url = f"{base}/api/v2/dags/{DAG_ID}"
        airflow_api.wait_until(lambda: airflow_api.request(dag_url, token=token)[0] == 200, 240, "the DAG")
        status, reply = airflow_api.request(
            f"{dag_url}/dagRuns",
            "POST",
            {"logical_date": None, "conf": {"force": True, "force_reason": "bench"}},
            token,
        )
        if status != 200:
            raise RuntimeError(f"triggering the DAG failed: HTTP {status} {reply}")
        run_id = reply["dag_run_id"]

        def validated():
            check_alive()
            states = {ti["task_id"]: ti["state"] for ti in _task_instances(base, token, run_id)}
            if "failed" in states.values() or "upstream_failed" in states.values():
                raise RuntimeError(f"the run failed: {states}")
            return states.get("validate") == "success"

        airflow_api.wait_until(validated, 3600, "validate to finish", interval=2)
        instances = [ti for ti in _task_instances(base, token, run_id) if ti["task_id"] in DATA_TASKS]
        names = [name for name in stack.processes if name.startswith("worker-")]
        ran = _worker_of(stack, names, run_id)
        airflow_api.request(f"{dag_url}/dagRuns/{run_id}", "PATCH", {"state": "failed"}, token)  # stop at `train`
    finally:
        stack.stop()
        _forget_queues(suffix)
        _admin_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    return _celery_figures(instances, ran, names, work)


def _celery_figures(instances: list[dict], ran: dict, workers: list[str], work: Path) -> dict:
    by_task: dict[str, list[dict]] = {}
    for ti in instances:
        by_task.setdefault(ti["task_id"], []).append(ti)
    start = min(_time(ti["start_date"]) for ti in by_task["ingest_plan"])
    ingest_end = max(_time(ti["end_date"]) for ti in by_task["ingest"])
    end = max(_time(ti["end_date"]) for ti in by_task["validate"])
    tasks = {}
    for task, tis in by_task.items():
        tasks[task] = [
            {
                "map_index": ti["map_index"],
                "seconds": round((_time(ti["end_date"]) - _time(ti["start_date"])).total_seconds(), 1),
                "worker": ran.get((task, ti["map_index"]), "?"),
            }
            for ti in sorted(tis, key=lambda ti: ti["map_index"])
        ]
    shares = {
        worker: {task: sum(1 for entry in tasks.get(task, []) if entry["worker"] == worker) for task in MAPPED}
        for worker in workers
    }
    snapshots = [p for p in (work / "snapshots").iterdir() if (p / "snapshot.json").is_file()]
    fingerprint = json.loads((snapshots[0] / "snapshot.json").read_text())["fingerprint"] if snapshots else None
    return {
        "seconds": round((end - start).total_seconds(), 1),
        "ingest_seconds": round((ingest_end - start).total_seconds(), 1),
        "validate_seconds": round((end - ingest_end).total_seconds(), 1),
        "tasks": tasks,
        "shares": shares,
        "fingerprint": fingerprint,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def markdown(results: dict) -> str:
    single, runs = results["single_process"], results["celery"]
    most = runs[str(max(int(workers) for workers in runs))]
    same = "yes" if all(run["fingerprint"] == single["fingerprint"] for run in runs.values()) else "NO"
    lines = [
        "# The sharded DAG path on Celery with two workers, against one process",
        "",
        f"{results['machine']}, {results['date']}. Data: `{results['data_source']}` ({results['rows']:,} rows); "
        f"`ingest_part_mb` {results['part_mb']}, `snapshot_shards` {results['shards']}. The Celery stack: "
        "PostgreSQL, Redis, the Airflow services and 1 or 2 workers on the default queue (concurrency 1 each), "
        "all on this machine. The Celery path is timed from `ingest_plan`'s start to `validate`'s end as "
        "Airflow recorded them; the one-process path is `python -m pipeline ingest` then `validate` (each a "
        f"fresh process). Every path made the same snapshot: {same} (fingerprint {single['fingerprint'][:12]}).",
        "",
        "| path | ingest s | validate s | total s | vs one process |",
        "|---|---|---|---|---|",
        f"| one process | {single['ingest_seconds']} | {single['validate_seconds']} | {single['seconds']} | 1.00x |",
    ]
    for workers, run in sorted(runs.items()):
        lines.append(
            f"| Celery, {workers} worker{'s' if workers != '1' else ''} | {run['ingest_seconds']} "
            f"| {run['validate_seconds']} | {run['seconds']} | {single['seconds'] / run['seconds']:.2f}x |"
        )
    lines += [
        "",
        "Mapped task instances each worker ran (the run with the most workers):",
        "",
        "| worker | " + " | ".join(f"`{task}`" for task in MAPPED) + " |",
        "|---|" + "---|" * len(MAPPED),
    ]
    for worker, share in most["shares"].items():
        lines.append(f"| {worker} | " + " | ".join(str(share[task]) for task in MAPPED) + " |")
    lines += ["", "| task | map index | seconds | worker |", "|---|---|---|---|"]
    for task in DATA_TASKS:
        for entry in most["tasks"].get(task, []):
            lines.append(f"| `{task}` | {entry['map_index']} | {entry['seconds']} | {entry['worker']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--scale", type=int, default=10, help="Copies of Fashion-MNIST (data_scale.write_scaled).")
    parser.add_argument("--part-mb", type=float, default=64.0, help="ingest_part_mb: source values per ingest part.")
    parser.add_argument("--shards", type=int, default=8, help="snapshot_shards: shard files per split.")
    parser.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2],
        help="Celery workers on the default queue, one stack per count (comma-separated).",
    )
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the stack and drop its database
    options = {"ingest_part_mb": args.part_mb, "snapshot_shards": args.shards}
    with tempfile.TemporaryDirectory(prefix="sharded-ingest-") as scratch:
        scratch = Path(scratch)
        data_source = f"idx:{write_scaled(Path(args.data_dir), scratch / 'data', args.scale)}"
        single = single_process(data_source, scratch / "work-single", ["--snapshot-shards", str(args.shards)])
        print("one process:", single, flush=True)
        celery = {}
        for workers in args.workers:
            celery[str(workers)] = celery_path(data_source, scratch / f"celery-{workers}", options, workers)
            print(f"celery, {workers} workers:", {k: v for k, v in celery[str(workers)].items() if k != "tasks"})
        rows = sum(
            json.loads(p.read_text())["splits"][s]
            for p in (scratch / "work-single" / "snapshots").glob("*/snapshot.json")
            for s in ("train", "test")
        )
    results = {
        "machine": f"{os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "data_source": f"idx:{args.data_dir}" + (f", {args.scale}x" if args.scale > 1 else ""),
        "rows": rows,
        "part_mb": args.part_mb,
        "shards": args.shards,
        "single_process": single,
        "celery": celery,
    }
    write_report(Path(args.out_dir), "sharded_ingest", results, markdown(results))


if __name__ == "__main__":
    main()
