"""Run the whole product on one machine: the local serving server, Airflow, and the demo.

    python deploy/local.py serving-start | serving-stop | serving-status
    python deploy/local.py airflow      # airflow standalone + serving (make airflow)
    python deploy/local.py airflow --executor celery   # CeleryExecutor, PostgreSQL, Redis, 2 workers
    python deploy/local.py demo         # the training DAG end to end, then predictions (make demo)
    python deploy/local.py tensorboard  # TensorBoard over every run's training logs (make tensorboard)

Everything lives inside the project: AIRFLOW_HOME=airflow_home/, artifacts/ for data,
models, the serving config and the serving server's pid and log.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy import celery_stack  # noqa: E402
from pipeline.dag_settings import load_settings  # noqa: E402
from serving import launcher  # noqa: E402
from serving.polling import poll_until  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SERVING_DIR = ROOT / "artifacts" / "serving"
PID_FILE = SERVING_DIR / "server.pid"
LOG_FILE = SERVING_DIR / "server.log"
AIRFLOW_HOME = ROOT / "airflow_home"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
CELERY_DATABASE = "airflow_mlops"
CELERY_DATABASE_URL = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{CELERY_DATABASE}"
CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"


def _settings():
    return load_settings(ROOT / "dags" / "settings.yaml", ROOT)


def airflow_env() -> dict[str, str]:
    """Environment for Airflow commands: project-local home, our DAGs, sized for a small machine."""
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # One line per HTTP request (the UI polls several per second) buries everything else.
            "AIRFLOW__LOGGING__NAMESPACE_LEVELS": "http.access=WARNING",
            "AIRFLOW__API__PORT": env.get("AIRFLOW__API__PORT", "8080"),
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            "PATH": str(VENV_BIN) + os.pathsep + env.get("PATH", ""),
            "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        }
    )
    return env


def _port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host.replace("localhost", "127.0.0.1"), int(port))) == 0


def serving_running() -> int | None:
    """Returns the pid of our serving server if it is alive (not a zombie, not a reused pid)."""
    import psutil

    if not PID_FILE.exists():
        return None
    pid = int(PID_FILE.read_text())
    try:
        process = psutil.Process(pid)
        # The server outlives the command that started it; a parent that does not reap its
        # children (a container's init) leaves it a zombie after it exits, which signal 0 reaches.
        # A process on its way out has released its memory, and with it its command line: it is
        # still ours until it is a zombie or gone.
        command = process.cmdline()
        if process.status() != psutil.STATUS_ZOMBIE and (not command or "serving.server" in command):
            return pid
    except psutil.Error:
        pass
    PID_FILE.unlink(missing_ok=True)
    return None


def serving_start() -> None:
    """Starts `python -m serving.server` on the promotion config file, in the background."""
    config = _settings().base_config()
    if (pid := serving_running()) is not None:
        print(
            f"serving: already running (pid {pid}), gRPC {config.serving_grpc_target}, REST {config.serving_rest_url}"
        )
        return
    grpc_port = int(config.serving_grpc_target.rsplit(":", 1)[1])
    rest_port = int(config.serving_rest_url.rsplit(":", 1)[1])
    if _port_open(config.serving_grpc_target):
        sys.exit(f"serving: port {grpc_port} is taken by another process; stop it or change dags/settings.yaml")
    config_file = Path(config.serving_config_file)
    config_file.parent.mkdir(parents=True, exist_ok=True)
    if not config_file.exists():
        config_file.write_text("model_config_list {\n}\n")
    try:
        server = launcher.start(
            # The file holds the labels promotion last wrote; they name versions not loaded yet at start.
            [
                f"--model_config_file={config_file}",
                "--file_system_poll_wait_seconds=1",
                "--allow_version_labels_for_unavailable_models",
                # Config reloads may only name model folders under the pipeline's model base path,
                # and request logs (the logging_config promotion writes) under the request log folder.
                f"--model_base_path_roots={Path(config.model_base_path).resolve()}",
                f"--request_log_roots={Path(config.request_log_dir).resolve()}",
                # Published every 10 s: the drift check and a canary watch read only published files.
                "--request_log_rotate_seconds=10",
                # Per-version counters for the canary watch (and Prometheus).
                f"--monitoring_config_file={ROOT / 'serving' / 'monitoring.config'}",
            ],
            log_path=LOG_FILE,
            grpc_port=grpc_port,
            rest_port=rest_port,
            python=str(VENV_BIN / "python"),
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            detach=True,
        )
    except launcher.ServerStartError:
        sys.exit(f"serving: failed to start; see {LOG_FILE}")
    PID_FILE.write_text(str(server.pid))
    print(f"serving: started (pid {server.pid}), gRPC {server.grpc_target}, REST {server.rest_url}")
    print(f"serving: log {LOG_FILE}")


def serving_stop() -> None:
    if (pid := serving_running()) is None:
        print("serving: not running")
        return
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    try:
        poll_until(lambda: serving_running() is None, timeout_s=60, interval_s=0.1)
    except TimeoutError:
        sys.exit(f"serving: pid {pid} did not exit within 60 s of SIGTERM; see {LOG_FILE}")
    PID_FILE.unlink(missing_ok=True)
    print(f"serving: stopped (pid {pid}) in {time.monotonic() - started:.1f} s")


def _airflow(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "airflow"), *args], cwd=ROOT, env=env or airflow_env(), check=check)


def _quiet_airflow(*args: str, env: dict[str, str] | None = None) -> None:
    """Runs an Airflow command, showing its output only if it fails."""
    result = subprocess.run(
        [str(VENV_BIN / "airflow"), *args], cwd=ROOT, env=env or airflow_env(), capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"airflow {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-3000:]}")


def airflow_prepare(env: dict[str, str] | None = None) -> None:
    """Migrates the metadata DB and creates the training pool."""
    settings = _settings()
    print("airflow: migrating the metadata DB")
    _quiet_airflow("db", "migrate", env=env)
    _quiet_airflow("pools", "set", settings.pool, "1", "GPU training slots (one per GPU)", env=env)


def _api_healthy(port: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def print_ui_address(port: str) -> None:
    """Says once where the UI is and where its admin password is."""
    print(f"airflow: UI at http://localhost:{port} (user admin, password in {AIRFLOW_HOME / PASSWORDS_FILE})")
    print("airflow: Ctrl-C stops Airflow; `make serving-stop` stops serving")


def airflow_standalone() -> None:
    """`airflow standalone` with the project's DAGs, plus the serving server; its output goes to a log file."""
    airflow_prepare()
    serving_start()
    env = airflow_env()
    port = env["AIRFLOW__API__PORT"]
    log_path = AIRFLOW_HOME / "logs" / "standalone.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "airflow"), "standalone"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    print(f"airflow: starting the scheduler, DAG processor, triggerer and API server (log {log_path})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        poll_until(lambda: process.poll() is not None or _api_healthy(port), timeout_s=300, interval_s=1)
        if process.poll() is None:
            print_ui_address(port)
            process.wait()
        print(f"airflow: exited ({process.returncode}); its log ends with:\n{_tail(log_path)}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        if process.poll() is None:
            print("airflow: stopping")
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def airflow_celery(database_url: str, broker_url: str, default_workers: int = 1) -> None:
    """Airflow on the CeleryExecutor: PostgreSQL, Redis, default-queue workers and a training-queue worker."""
    from sqlalchemy.engine import make_url

    database = make_url(database_url)
    host, port = database.host, database.port or 5432
    try:
        celery_stack.require_service(f"//{host}:{port}", "PostgreSQL (the metadata DB)")
        celery_stack.require_service(broker_url, "Redis (the Celery broker)")
    except celery_stack.StackError as err:
        sys.exit(f"airflow: {err}")
    admin_dsn = f"host={host} port={port} user={database.username or 'postgres'} dbname=postgres"
    celery_stack.ensure_database(admin_dsn, database.database)
    env = celery_stack.celery_env(
        airflow_env(), database_url=database_url, broker_url=broker_url, jwt_secret=secrets.token_urlsafe(32)
    )
    airflow_prepare(env)
    serving_start()
    queues = [celery_stack.DEFAULT_QUEUE] * default_workers + [_settings().queue]
    stack = celery_stack.Stack(AIRFLOW_HOME / "logs" / "services")
    stack.start(celery_stack.service_commands(str(VENV_BIN / "airflow"), queues), env, cwd=ROOT)
    port = env["AIRFLOW__API__PORT"]
    print(f"airflow: CeleryExecutor, metadata DB {database_url}, broker {broker_url}")
    print(f"airflow: workers on queues {', '.join(queues)}; service logs in {stack.log_dir}")
    print_ui_address(port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while not stack.dead():
            time.sleep(2)
        dead = stack.dead()[0]
        print(f"airflow: {dead} exited; its log ends with:\n{stack.log(dead)[-2000:]}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        print("airflow: stopping the services")
        stack.stop()


def _test_images(count: int):
    import numpy as np

    from pipeline.data.idx import KNOWN_CLASS_NAMES, read_folder_split

    source = Path(_settings().base_config().data_source.split(":", 1)[1])
    images, labels = read_folder_split(source, "test")
    names = KNOWN_CLASS_NAMES.get(source.name, [str(i) for i in range(10)])
    picks = np.linspace(0, len(labels) - 1, count).astype(int)
    return images[picks], [names[i] for i in labels[picks]]


DEMO_SAMPLE = 1000  # test images asked for, spread evenly over the test set
DEMO_SHOWN = 10  # of them printed row by row


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def sample_lines(truth: list[str], grpc_names: list[str], rest_names: list[str], probabilities) -> list[str]:
    """What the demo prints of its sample: a few rows, then the accuracy over all of it.

    Args:
        truth: The true class names of the sample.
        grpc_names: The class names answered over gRPC.
        rest_names: The class names answered over REST.
        probabilities: The gRPC answer's probabilities, a row per image.

    Returns:
        The lines to print.
    """
    step = max(len(truth) // DEMO_SHOWN, 1)
    lines = [f"{'true label':<12} {'predicted':<12} probability   (every {step}th image of the sample)"]
    for index in range(0, len(truth), step):
        mark = "ok" if grpc_names[index] == truth[index] else "WRONG"
        lines.append(f"{truth[index]:<12} {grpc_names[index]:<12} {float(max(probabilities[index])):.3f}  {mark}")
    correct = sum(name == expected for name, expected in zip(grpc_names, truth, strict=True))
    lines.append(
        f"\ndemo: {correct} of {len(truth)} test images spread over the test set answered right over gRPC "
        f"({correct / len(truth):.1%}); REST gave {'the same' if grpc_names == rest_names else 'DIFFERENT'} answers"
    )
    return lines


def demo() -> None:
    """Runs the training DAG end to end with `airflow dags test`, then asks the served model."""
    airflow_prepare()
    serving_start()
    started = time.monotonic()
    result = _airflow("dags", "test", _settings().model_list()[0].training_dag_id, check=False)
    minutes = (time.monotonic() - started) / 60
    if result.returncode != 0:
        sys.exit(f"demo: the DAG run failed ({minutes:.1f} min); see the task logs above")
    print(f"\ndemo: DAG run finished in {minutes:.1f} min")

    from serving.client import TFServingClient

    config = _settings().base_config()
    images, truth = _test_images(DEMO_SAMPLE)
    with TFServingClient(config.serving_grpc_target, config.serving_rest_url) as client:
        stable = client.predict(config.model_name, {"images": images[:1]}, label="stable").version
        print(
            f"demo: serving {config.model_name} version {stable} as 'stable' "
            f"(gRPC {config.serving_grpc_target}, REST {config.serving_rest_url})\n"
        )
        answers = {
            protocol: client.predict(config.model_name, {"images": images}, label="stable", protocol=protocol)
            for protocol in ("grpc", "rest")
        }
    grpc_names, rest_names = (_names(answers[p]["class_names"]) for p in ("grpc", "rest"))
    print("\n".join(sample_lines(truth, grpc_names, rest_names, answers["grpc"]["probabilities"])))
    reports = sorted((Path(config.workdir) / "runs").glob("*/report.html"), key=lambda path: path.stat().st_mtime)
    if reports:
        outcome = json.loads((reports[-1].parent / "manifest.json").read_text())["report"]
        print(f"demo: run outcome (the DAG run's note): {outcome['summary']}")
        print(f"demo: run report {reports[-1]}")
    lineage = [json.loads(line) for line in (Path(config.workdir) / "lineage.jsonl").read_text().splitlines()]
    gate = next((e for e in reversed(lineage) if e["event"] == "gate"), None)
    if gate:
        print(
            f"demo: last gate decision: {'blessed' if gate['blessed'] else 'NOT blessed'}, "
            f"test {gate['metric']} {gate['score']:.4f} over the whole test split"
        )
    print(
        f"demo: the serving server keeps running (pid {serving_running()}); "
        "stop it with `.venv/bin/python deploy/local.py serving-stop`"
    )


def tensorboard_command(logdir: Path, port: int) -> list[str]:
    """TensorBoard over every run's training logs (`runs/<run_id>/train/tensorboard`), on loopback."""
    return [str(VENV_BIN / "tensorboard"), f"--logdir={logdir}", "--host=127.0.0.1", f"--port={port}"]


def tensorboard(port: int) -> None:
    """Serves the TensorBoard logs of every run (make tensorboard)."""
    logdir = _settings().base_config().workdir_path / "runs"
    print(f"tensorboard: http://localhost:{port} shows the training logs of every run under {logdir}")
    print("tensorboard: each run is <run_id>/train/tensorboard/{train,validation}; Ctrl-C stops it")
    os.execv(str(VENV_BIN / "tensorboard"), tensorboard_command(logdir, port))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument(
        "command", choices=["airflow", "demo", "serving-start", "serving-status", "serving-stop", "tensorboard"]
    )
    parser.add_argument("--port", type=int, default=6006, help="tensorboard: the port to serve on.")
    parser.add_argument(
        "--executor",
        choices=["standalone", "celery"],
        default="standalone",
        help="airflow: `airflow standalone` (SQLite), or the CeleryExecutor with PostgreSQL and Redis.",
    )
    parser.add_argument("--database-url", default=CELERY_DATABASE_URL, help="celery: the metadata DB.")
    parser.add_argument("--broker-url", default=CELERY_BROKER_URL, help="celery: the Celery broker.")
    parser.add_argument(
        "--default-workers",
        type=int,
        default=1,
        help="celery: workers on the default queue (they share ingest's and validation's mapped parts).",
    )
    args = parser.parse_args()
    if args.command == "airflow" and args.executor == "celery":
        airflow_celery(args.database_url, args.broker_url, args.default_workers)
        return
    commands = {
        "serving-start": serving_start,
        "serving-stop": serving_stop,
        "serving-status": lambda: print(f"serving: pid {serving_running()}"),
        "airflow": airflow_standalone,
        "demo": demo,
        "tensorboard": lambda: tensorboard(args.port),
    }
    commands[args.command]()


if __name__ == "__main__":
    main()
