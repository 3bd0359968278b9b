"""`make reliability`: faults injected for real into the real pipeline and server, with figures.

Each scenario starts real processes (`python -m serving.server`, `python -m pipeline ...`),
injects a fault (SIGKILL, overlapping writers, hostile input, hot swaps under load, a full
disk, thousands of idle connections), checks that nothing was lost or served wrong, and
returns its figures. `make reliability` runs the long versions and writes
bench/results/reliability.{json,md}; `make test` runs the short ones
(tests/bench/test_reliability.py) and asserts zero failures.

    .venv/bin/python bench/reliability.py [--scenarios fuzz,hot_swap,...] [--short]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_report  # noqa: E402
from pipeline.core.config import PipelineConfig  # noqa: E402
from pipeline.core.model_repo import published_versions  # noqa: E402
from pipeline.data.idx import read_folder_split, write_idx_folder  # noqa: E402
from serving import launcher  # noqa: E402
from serving.client import TFServingClient  # noqa: E402
from serving.protocol import ServingError  # noqa: E402

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
X = np.array([[1.0, 2.0, 3.0]], np.float32)
SERVER_FLAGS = (
    "--file_system_poll_wait_seconds=0.2",
    "--max_num_load_retries=2",
    "--load_retry_interval_micros=200000",
)


@dataclasses.dataclass
class Workspace:
    """What the scenarios work on: a scratch folder, a small data set and one trained, evaluated model."""

    root: Path
    data_source: str
    snapshot: Path
    model_path: Path
    evaluation_path: Path


def prepare_workspace(root: Path, train_examples: int = 2000, test_examples: int = 500) -> Workspace:
    """Writes a Fashion-MNIST subset as IDX files, then ingests, trains (1 epoch) and evaluates with the CLI."""
    data = root / "data" / "fashion-mnist"
    write_idx_folder(
        data,
        {
            "train": read_folder_split(DATA_DIR, "train", limit=train_examples),
            "t10k": read_folder_split(DATA_DIR, "test", limit=test_examples),
        },
    )
    common = [*_pipeline_flags(root, f"idx:{data}"), "--run-id", "reliability"]
    snapshot = _cli(["ingest", *common])["snapshot"]
    model = _cli(["train", *common, "--snapshot", snapshot, "--epochs", "1"])["model_path"]
    evaluation = _cli(["evaluate", *common, "--snapshot", snapshot, "--model-path", model])["evaluation_path"]
    return Workspace(root, f"idx:{data}", Path(snapshot), Path(model), Path(evaluation))


def _pipeline_flags(root: Path, data_source: str) -> list[str]:
    return [
        "--workdir",
        str(root / "work"),
        "--data-source",
        data_source,
        "--batch-size",
        "64",
        "--min-accuracy",
        "0.5",
        "--warmup-requests",
        "4",
        "--serving-grpc-target",
        "none",
        # Everything inside the workspace: never the demo's models or its stable baseline.
        "--model-base-path",
        str(root / "models"),
        "--serving-config-file",
        str(root / "serving" / "models.config"),
    ]


def _cli(args: list[str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise RuntimeError(f"pipeline {args[0]} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def _scenario_dir(work: Workspace, name: str) -> Path:
    """A fresh folder for one run of a scenario."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work.root))


def _memory_mb(pid: int, field: str) -> float:
    """A process's memory figure from /proc/<pid>/status: VmHWM (its peak) or VmRSS (resident now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _scaler_versions(base: Path, versions: range) -> None:
    """Version v answers y = v * x, so every answer says which version computed it."""
    from serving.sample_models import save_scaler

    for version in versions:
        save_scaler(base, version, float(version))


def _start(folder: Path, *flags: str, ports: tuple[int, int] | None = None) -> launcher.LocalServer:
    folder.mkdir(parents=True, exist_ok=True)
    grpc_port, rest_port = ports or (None, None)
    return launcher.start(
        [*SERVER_FLAGS, *flags], log_path=folder / "server.log", grpc_port=grpc_port, rest_port=rest_port
    )


def _model_config(name: str, base: Path, extra: str = "") -> str:
    return (
        f"model_config_list {{ config {{ name: '{name}' base_path: '{base}' model_platform: 'tensorflow' {extra} }} }}"
    )


# --- fuzzing --------------------------------------------------------------------------------------


def fuzz(work: Workspace, cases: int, derandomize: bool = False) -> dict:
    """Hypothesis-generated REST bodies, raw HTTP requests and gRPC PredictRequests.

    Every answer must be a 4xx (INVALID_ARGUMENT, NOT_FOUND, ...) or a valid prediction:
    never a 5xx, UNKNOWN/INTERNAL or a hang; the server's memory high-water mark is reported.
    """
    import grpc
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    folder = _scenario_dir(work, "fuzz")
    _scaler_versions(folder / "models" / "scaler", range(1, 2))
    config = folder / "fuzz.config"
    config.write_text(_model_config("scaler", folder / "models" / "scaler"))
    server = _start(folder, f"--model_config_file={config}", "--rest_api_max_request_bytes=1000000")
    failures: list[str] = []
    counts = {"rest_body": 0, "deep_json": 0, "raw_http": 0, "grpc": 0}
    allowed_grpc = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "UNIMPLEMENTED", "OUT_OF_RANGE"}
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=40,
    )
    bodies = st.one_of(
        json_values.map(lambda v: {"instances": v}),
        json_values.map(lambda v: {"inputs": v}),
        json_values.map(lambda v: {"inputs": {"x": v}}),
        st.dictionaries(st.sampled_from(["instances", "inputs", "signature_name", "examples", "x"]), json_values),
        json_values,
    ).map(lambda v: json.dumps(v).encode())
    # Deep nesting around NumPy's and TensorFlow's 64-dimension limit and past the JSON parser's depth.
    depths = st.sampled_from([63, 64, 65, 66]) | st.integers(min_value=1, max_value=2000)
    leaves = st.sampled_from(["1", "1.5", '"a"', "[]", "{}", "null", "true", '{"b64": "AA=="}'])
    wrappers = st.sampled_from(
        [
            '{"instances": V}',
            '{"instances": [V, V]}',
            '{"instances": [{"x": V}]}',
            '{"inputs": V}',
            '{"inputs": {"x": V}}',
            '{"examples": [{"x": V}]}',
            '{"signature_name": V, "instances": [[1, 2, 3]]}',
            "V",
        ]
    )
    deep_bodies = st.builds(
        lambda depth, leaf, wrapper: wrapper.replace("V", "[" * depth + leaf + "]" * depth).encode(),
        depths,
        leaves,
        wrappers,
    )
    raw_bodies = st.binary(max_size=300) | bodies
    paths = st.sampled_from(
        [
            "/v1/models/scaler:predict",
            "/v1/models/scaler/versions/1:predict",
            "/v1/models/scaler/labels/stable:predict",
            "/v1/models/scaler:classify",
            "/v1/models/scaler:regress",
            "/v1/models/scaler/metadata",
            "/v1/models/scaler",
            "/v1/models/nope:predict",
        ]
    ) | st.text(alphabet="/v1modelsc:%.?&=#x9 \u00e9", max_size=40).map(lambda p: "/" + p)
    fuzz_settings = settings(
        max_examples=max(cases // len(counts), 1),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=derandomize,  # fixed examples in `make test`, fresh ones in `make reliability`
    )

    @fuzz_settings
    @given(path=paths, body=raw_bodies)
    def rest_body(path, body):
        counts["rest_body"] += 1
        connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        try:
            quoted = urllib.parse.quote(path, safe="/:?&=%#")  # http.client sends ASCII request lines only
            connection.request("POST", quoted, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        if response.status >= 500 or (response.status == 200 and not payload.startswith(b"{")):
            failures.append(f"REST {path} {body[:200]!r} -> {response.status} {payload[:200]!r}")

    @fuzz_settings
    @given(
        path=st.sampled_from(["/v1/models/scaler:predict", "/v1/models/scaler/versions/1:predict"]),
        body=deep_bodies,
    )
    def deep_json(path, body):
        counts["deep_json"] += 1
        connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        try:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        if response.status >= 500:
            failures.append(f"REST {path} {body[:80]!r}...({len(body)} bytes) -> {response.status} {payload[:200]!r}")

    header_values = st.text(alphabet="0123456789abcdef-, e", max_size=12)

    @fuzz_settings
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "BREW", "G\tT"]),
        path=paths,
        length=st.none() | header_values,
        extra=st.lists(st.tuples(st.text(alphabet="ABCxyz-", min_size=1, max_size=8), header_values), max_size=3),
        body=st.binary(max_size=200),
    )
    def raw_http(method, path, length, extra, body):
        counts["raw_http"] += 1
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
        if length is not None:
            head += f"Content-Length: {length}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in extra) + "Connection: close\r\n\r\n"
        reply = b""
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
            with contextlib.suppress(OSError):  # the server may close before it has read everything
                sock.sendall(head.encode("utf-8", "surrogateescape") + body)
                sock.shutdown(socket.SHUT_WR)
            try:
                while chunk := sock.recv(65536):
                    reply += chunk
            except TimeoutError:
                failures.append(f"raw HTTP hang: {head!r}")
                return
            except ConnectionResetError:
                pass
        status_line = reply.split(b"\r\n", 1)[0]
        if reply and (not status_line.startswith(b"HTTP/1.1 ") or status_line[9:10] == b"5"):
            failures.append(f"raw HTTP {head!r} -> {status_line!r}")

    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    dims = st.lists(st.integers(min_value=-2, max_value=2**40) | st.integers(min_value=0, max_value=4), max_size=4)

    @fuzz_settings
    @given(
        model=st.sampled_from(["scaler", "nope", "", "scaler/1"]),
        version=st.none() | st.integers(min_value=-1, max_value=2**63 - 1),
        label=st.none() | st.sampled_from(["stable", "x", ""]),
        name=st.sampled_from(["x", "y", ""]),
        dtype=st.integers(min_value=0, max_value=130),
        shape=dims,
        content=st.binary(max_size=64),
        floats=st.lists(st.floats(width=32), max_size=8),
        ints=st.lists(st.integers(min_value=-(2**31), max_value=2**31 - 1), max_size=8),
        strings=st.lists(st.binary(max_size=8), max_size=3),
    )
    def grpc_predict(model, version, label, name, dtype, shape, content, floats, ints, strings):
        counts["grpc"] += 1
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        elif label is not None:
            request.model_spec.version_label = label
        proto = tensor_pb2.TensorProto(dtype=dtype)
        for size in shape:
            proto.tensor_shape.dim.add(size=size)
        proto.tensor_content = content
        proto.float_val.extend(floats)
        proto.int_val.extend(ints)
        proto.string_val.extend(strings)
        request.inputs[name].CopyFrom(proto)
        try:
            stub.Predict(request, timeout=30)
        except grpc.RpcError as err:
            if err.code().name not in allowed_grpc:
                failures.append(f"gRPC {request!r:.300} -> {err.code().name}: {(err.details() or '')[:200]}")

    started = time.monotonic()
    try:
        for prop in (rest_body, deep_json, raw_http, grpc_predict):
            prop()
        alive = server.process.poll() is None
    finally:
        channel.close()
        high_water = _memory_mb(server.pid, "VmHWM")
        server.stop()
    return {
        "fuzz_cases": sum(counts.values()),
        "cases_by_kind": counts,
        "failures": len(failures) + (0 if alive else 1),
        "failure_examples": failures[:5],
        "server_memory_high_water_mb": round(high_water, 1),
        "seconds": round(time.monotonic() - started, 1),
    }


# --- memory after large requests --------------------------------------------------------------------


def large_requests(work: Workspace, requests: int, concurrency: int = 4, rows: int = 4096) -> dict:
    """Full-size REST batches (4096 Fashion-MNIST-shaped images, ~14 MB of JSON each, `concurrency` at a
    time), with the server's
    heap trimming on (the default) and off: its resident memory idle, at its peak and 3 s after the last
    request. Every answer is checked against the pixel means computed here."""
    from serving.sample_models import save_pixel_mean

    folder = _scenario_dir(work, "large_requests")
    save_pixel_mean(folder / "models" / "pixels", 1)
    config = folder / "pixels.config"
    config.write_text(_model_config("pixels", folder / "models" / "pixels"))
    images = np.random.default_rng(0).integers(0, 256, (rows, 28, 28), dtype=np.uint8)
    body = json.dumps({"instances": images.tolist()}).encode()
    expected = images.reshape(rows, -1).mean(axis=1)
    failures: list[str] = []
    memory = {}
    started = time.monotonic()
    for mode, flags in (("trimmed", ()), ("untrimmed", ("--heap_trim_threshold_bytes=0",))):
        server = _start(folder / mode, f"--model_config_file={config}", "--rest_api_max_request_bytes=67108864", *flags)
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=120)
            one = json.dumps({"instances": images[:1].tolist()}).encode()
            connection.request("POST", "/v1/models/pixels:predict", one, {"Content-Type": "application/json"})
            connection.getresponse().read()
            time.sleep(1.5)
            idle = _memory_mb(server.pid, "VmRSS")
            connection.close()

            def send(_: int, port: int = server.rest_port, mode: str = mode) -> str | None:
                sender = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                try:
                    sender.request("POST", "/v1/models/pixels:predict", body, {"Content-Type": "application/json"})
                    response = sender.getresponse()
                    payload = response.read()
                finally:
                    sender.close()
                if response.status != 200:
                    return f"{mode}: {response.status} {payload[:200]!r}"
                answer = np.array(json.loads(payload)["predictions"], np.float64)
                if answer.shape != expected.shape or not np.allclose(answer, expected, rtol=1e-5):
                    return f"{mode}: wrong pixel means"
                return None

            with ThreadPoolExecutor(concurrency) as pool:
                failures += [f for f in pool.map(send, range(requests)) if f]
            time.sleep(3.0)
            memory[mode] = {
                "idle_mb": round(idle, 1),
                "peak_mb": round(_memory_mb(server.pid, "VmHWM"), 1),
                "after_mb": round(_memory_mb(server.pid, "VmRSS"), 1),
            }
        finally:
            server.stop()
    return {
        "requests_sent": 2 * requests,
        "request_mb": round(len(body) / 2**20, 1),
        "failures": len(failures),
        "failure_examples": failures[:5],
        "memory": memory,
        "server_memory_high_water_mb": memory["trimmed"]["peak_mb"],
        "held_after_mb": {mode: round(m["after_mb"] - m["idle_mb"], 1) for mode, m in memory.items()},
        "seconds": round(time.monotonic() - started, 1),
    }


# --- hot swap under load -------------------------------------------------------------------------


def _promotion_setup(work: Workspace, name: str, versions: int) -> tuple[Path, PipelineConfig, tuple[str, ...]]:
    """Scaler versions 1..`versions`, `stable` on 1 in the promotion config file, and the server's flags."""
    from pipeline.release import promotion

    folder = _scenario_dir(work, name)
    _scaler_versions(folder / "models" / "scaler", range(1, versions + 1))
    config_file = folder / "serving" / "models.config"
    config = PipelineConfig(
        workdir=str(folder / "work"),
        model_base_path=str(folder / "models"),
        model_name="scaler",
        serving_config_file=str(config_file),
        serving_grpc_target=None,
    ).validate()
    promotion.mark_stable(config, 1, by="reliability")  # the file the server starts with
    return folder, config, (f"--model_config_file={config_file}", "--allow_version_labels_for_unavailable_models")


def hot_swap(work: Workspace, requests: int, promotions: int, rollbacks: int, concurrency: int = 32) -> dict:
    """gRPC and REST clients ask for `stable` while versions are promoted and rolled back.

    Each version v answers v * x, so every answer names its version; it must be one that was
    `stable` at some moment of that request. At the end `stable` is where the last action put it.
    """
    from pipeline.release import promotion

    folder, config, flags = _promotion_setup(work, "hot_swap", promotions + 1)
    server = _start(folder, *flags)
    config = config.replace(serving_grpc_target=server.grpc_target)
    changes: list[tuple[float, float, int]] = [(float("-inf"), float("-inf"), 1)]  # (before, after, new stable)
    answers: list[tuple[float, float, int]] = []
    failures: list[str] = []
    lock = threading.Lock()
    sent, label_moves = [0], [0]
    done = threading.Event()

    def client_loop(index: int) -> None:
        protocol = "grpc" if index % 2 == 0 else "rest"
        with TFServingClient(server.grpc_target, server.rest_url, protocol, timeout=30, retries=0) as client:
            while not done.is_set():
                with lock:
                    if sent[0] >= requests:
                        return
                    sent[0] += 1
                started = time.monotonic()
                try:
                    y = client.predict("scaler", {"x": X}, label="stable")["y"]
                    with lock:
                        answers.append((started, time.monotonic(), round(float(np.asarray(y).ravel()[0]))))
                except ServingError as err:
                    with lock:
                        failures.append(f"{protocol}: {err}")

    def actions() -> None:
        plan = [("promote", v) for v in range(2, promotions + 2)]
        for index in range(rollbacks):  # rollbacks interleaved after the first promotions
            plan.insert(2 + 2 * index, ("rollback", 1 + index))
        for index, (kind, version) in enumerate(plan):
            while sent[0] < requests * (index + 1) / (len(plan) + 1) and not done.is_set():
                time.sleep(0.01)  # spread the actions over the whole load
            before = time.monotonic()
            if kind == "promote":
                promotion.promote_canary(config, version, by="reliability")
                promotion.mark_stable(config, version, by="reliability")
                label_moves[0] += 2
            else:
                promotion.rollback(config, version, by="reliability", reason="reliability run")
                label_moves[0] += 1
            changes.append((before, time.monotonic(), version))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        actions()
        for thread in threads:
            thread.join()
        with TFServingClient(server.grpc_target, timeout=30) as client:
            final = client.predict("scaler", {"x": X}, label="stable").version
    finally:
        done.set()
        server.stop()
    expected_final = changes[-1][2]
    # The version of change i may answer from the moment that change starts until the next
    # change has finished (during a change either label target is a correct answer).
    windows = [
        (before, changes[i + 1][1] if i + 1 < len(changes) else float("inf"), version)
        for i, (before, _, version) in enumerate(changes)
    ]
    wrong = sum(
        1
        for began, ended, version in answers
        if version not in {v for start, end, v in windows if start <= ended and began <= end}
    )
    file_stable = promotion.read_state(config).stable
    return {
        "requests_sent": len(answers) + len(failures),
        "failures": len(failures) + wrong + int(final != expected_final) + int(file_stable != expected_final),
        "failed_requests": len(failures),
        "answers_from_a_version_not_stable_then": wrong,
        "swaps": label_moves[0],
        "final_stable": final,
        "failure_examples": failures[:5],
        "seconds": round(time.monotonic() - started, 1),
    }


# --- export and publish killed ---------------------------------------------------------------------


def _export_process(work: Workspace, model_base_path: Path, run_id: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "export",
            *_pipeline_flags(work.root, work.data_source),
            "--run-id",
            run_id,
            "--snapshot",
            str(work.snapshot),
            "--model-path",
            str(work.model_path),
            "--evaluation",
            str(work.evaluation_path),
            "--model-base-path",
            str(model_base_path),
            "--keep-versions",
            "4",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def export_faults(work: Workspace, kills: int, overlapping: int) -> dict:
    """Exports SIGKILLed at random moments and exports run two at a time, while a server polls the folder.

    Nothing incomplete may be published: every version the server sees loads, a client
    predicting the latest version all along gets no error, and no half-written folder is left.
    """
    folder = _scenario_dir(work, "export_faults")
    models = folder / "models"
    name = "fashion_mnist"
    config = folder / "export.config"
    config.write_text(_model_config(name, models / name, "model_version_policy { all {} }"))
    (models / name).mkdir(parents=True, exist_ok=True)
    server = _start(folder, f"--model_config_file={config}")
    images = np.zeros((1, 28, 28), np.uint8)
    served, client_errors, stop = [0], [], threading.Event()

    def client_loop() -> None:
        with TFServingClient(server.grpc_target, timeout=30, retries=0) as client:
            while not stop.is_set():
                try:
                    client.predict(name, {"images": images})
                    served[0] += 1
                except ServingError as err:
                    if "Servable not found" not in err.message:  # before the first version is published
                        client_errors.append(str(err))
                time.sleep(0.005)

    started = time.monotonic()
    rng = random.Random(7)
    failed_exports: list[str] = []
    killed = 0
    client = threading.Thread(target=client_loop)
    client.start()
    try:
        timing = time.monotonic()
        first = _export_process(work, models, "export-first")
        if first.wait(timeout=600) != 0:
            failed_exports.append(first.stderr.read().decode()[-500:])
        export_seconds = time.monotonic() - timing
        attempts = 0
        while killed < kills and attempts < 2 * kills:  # an export that finished first is not a kill
            process = _export_process(work, models, f"export-kill-{attempts}")
            attempts += 1
            time.sleep(rng.uniform(0.5, 0.9 * export_seconds))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                killed += 1
            process.wait()
        for index in range(0, overlapping, 2):
            pair = [_export_process(work, models, f"export-overlap-{index + i}") for i in range(2)]
            for process in pair:
                if process.wait(timeout=600) != 0:
                    failed_exports.append(process.stderr.read().decode()[-500:])
        last = _export_process(work, models, "export-last")  # also cleans what the killed ones left
        if last.wait(timeout=600) != 0:
            failed_exports.append(last.stderr.read().decode()[-500:])
        time.sleep(1.0)  # two polls
        with TFServingClient(server.grpc_target, timeout=30) as status_client:
            states = status_client.status(name)
    finally:
        stop.set()
        client.join()
        server.stop()
    versions = published_versions(models / name)
    unloadable = [s for s in states if s["version"] in versions and s["state"] != "AVAILABLE"]
    leftovers = [p.name for p in (models / name).iterdir() if p.name.startswith(".tmp-")]
    return {
        "faults_injected": killed,
        "overlapping_exports": overlapping,
        "versions_published": len(versions) and versions[-1],
        "unloadable_versions": len(unloadable),
        "requests_sent": served[0] + len(client_errors),
        "failures": len(unloadable) + len(client_errors) + len(failed_exports) + len(leftovers),
        "failure_examples": (client_errors + failed_exports + leftovers)[:5],
        "seconds": round(time.monotonic() - started, 1),
    }


# --- serving killed ---------------------------------------------------------------------------------


def serving_killed(work: Workspace, kills: int) -> dict:
    """The server SIGKILLed at random moments of promotions, then restarted on the same ports and file.

    An interrupted promotion is retried (as Airflow retries the task); after each restart the
    server must serve, from disk alone, the `stable` the config file names.
    """
    from pipeline.release import promotion

    folder, config, flags = _promotion_setup(work, "serving_killed", kills + 1)
    server = _start(folder, *flags)
    ports = (server.grpc_port, server.rest_port)
    config = config.replace(serving_grpc_target=server.grpc_target)
    rng = random.Random(11)
    mismatches, retries, between_steps, started = [], 0, 0, time.monotonic()
    try:
        for version in range(2, kills + 2):
            outcome: list[BaseException] = []
            if version % 2 == 0:  # killed between a promotion's two steps: canary moved, stable not yet
                promotion.promote_canary(config, version, by="reliability")
                server.process.send_signal(signal.SIGKILL)
                between_steps += 1
            else:  # killed at a random moment of a promotion in flight

                def promote(target: int = version, result: list = outcome) -> None:
                    try:
                        promotion.promote_canary(config, target, by="reliability")
                        promotion.mark_stable(config, target, by="reliability")
                    except BaseException as err:  # noqa: BLE001  (judged below)
                        result.append(err)

                worker = threading.Thread(target=promote)
                worker.start()
                time.sleep(rng.uniform(0.0, 0.3))  # a promotion takes ~0.3 s here
                server.process.send_signal(signal.SIGKILL)
                worker.join()
            server.process.wait()
            server = _start(folder, *flags, ports=ports)
            canary_on_disk = promotion.read_state(config).canary
            on_disk = promotion.read_state(config).stable
            with TFServingClient(server.grpc_target, timeout=30) as client:
                if client.predict("scaler", {"x": X}, label="stable").version != on_disk:
                    mismatches.append(f"after kill {version - 1}: file says stable {on_disk}")
                if client.predict("scaler", {"x": X}, label="canary").version != canary_on_disk:
                    mismatches.append(f"after kill {version - 1}: file says canary {canary_on_disk}")
            if outcome:  # the promotion was cut off (serving unavailable or refused mid-way)
                retries += 1
            promotion.promote_canary(config, version, by="reliability")  # the retry (a no-op if it had finished)
            promotion.mark_stable(config, version, by="reliability")
        with TFServingClient(server.grpc_target, timeout=30) as client:
            final = client.predict("scaler", {"x": X}, label="stable").version
    finally:
        server.stop()
    return {
        "faults_injected": kills,
        "killed_between_promotion_steps": between_steps,
        "promotions_cut_off_and_retried": retries,
        "swaps": kills * 2,
        "failures": len(mismatches) + int(final != kills + 1),
        "failure_examples": mismatches[:5],
        "seconds": round(time.monotonic() - started, 1),
    }


# --- connections --------------------------------------------------------------------------------------


def connections(work: Workspace, idle: int, slow: int, requests: int = 200, tolerance_s: float = 0.0) -> dict:
    """Idle keep-alive and slow (half-sent) connections held open while normal requests go on, then SIGTERM.

    SIGTERM must end the server within its 5 s grace (plus `tolerance_s`, which `make test`
    allows for a machine busy with other tests; the report allows none).
    """
    folder = _scenario_dir(work, "connections")
    _scaler_versions(folder / "models" / "scaler", range(1, 2))
    config = folder / "c.config"
    config.write_text(_model_config("scaler", folder / "models" / "scaler"))
    server = _start(folder, f"--model_config_file={config}", "--shutdown_grace_seconds=5")

    def latencies() -> list[float]:
        measured = []
        with TFServingClient(server.grpc_target, server.rest_url, "rest", timeout=10, retries=0) as client:
            for _ in range(requests):
                began = time.perf_counter()
                client.predict("scaler", {"x": X})
                measured.append(time.perf_counter() - began)
        return measured

    started = time.monotonic()
    sockets: list[socket.socket] = []
    failures: list[str] = []
    try:
        quiet = latencies()
        sockets += [socket.create_connection(("127.0.0.1", server.rest_port)) for _ in range(idle)]
        for _ in range(slow):
            sock = socket.create_connection(("127.0.0.1", server.rest_port))
            sock.sendall(b'POST /v1/models/scaler:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"inst')
            sockets.append(sock)
        loaded = latencies()
        term = time.monotonic()
        code = server.stop(timeout_s=30)
        exit_seconds = time.monotonic() - term
        if code != 0 or exit_seconds > 5 + tolerance_s:  # --shutdown_grace_seconds=5
            failures.append(f"SIGTERM with {len(sockets)} connections open: exit {code} after {exit_seconds:.1f}s")
    except (ServingError, OSError) as err:
        failures.append(str(err))
        quiet, loaded, exit_seconds = [0.0], [0.0], float("nan")
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
    p50 = (float(np.median(quiet)) * 1000, float(np.median(loaded)) * 1000)
    return {
        "faults_injected": idle + slow,
        "connections_held": idle + slow,
        "requests_sent": 2 * requests,
        "p50_ms_quiet": round(p50[0], 2),
        "p50_ms_with_connections_held": round(p50[1], 2),
        "sigterm_exit_seconds": round(exit_seconds, 2),
        "failures": len(failures),
        "failure_examples": failures,
        "seconds": round(time.monotonic() - started, 1),
    }


# --- training killed ------------------------------------------------------------------------------------


def training_killed(work: Workspace, epochs: int = 3) -> dict:
    """`pipeline train` SIGKILLed after its first epoch, then run again with the same run id.

    The second run must resume from the BackupAndRestore checkpoint (epoch 0 not trained
    again: the history lists each epoch once) and its model must pass the gate.
    """
    folder = _scenario_dir(work, "training_killed")
    common = [*_pipeline_flags(folder, work.data_source), "--run-id", "killed", "--snapshot", str(work.snapshot)]
    command = [sys.executable, "-m", "pipeline", "train", *common, "--epochs", str(epochs)]
    log_csv = folder / "work" / "runs" / "killed" / "train" / "training_log.csv"
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while process.poll() is None and time.monotonic() < deadline:
        if log_csv.exists() and len(log_csv.read_text().splitlines()) >= 2:  # header + epoch 0
            break
        time.sleep(0.05)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = _cli(["train", *common, "--epochs", str(epochs)])
    history = json.loads(Path(resumed["history_path"]).read_text())
    evaluation = _cli(["evaluate", *common, "--model-path", resumed["model_path"]])
    gate = _cli(["gate", *common, "--evaluation", evaluation["evaluation_path"]])
    failures = []
    if history["epoch"] != list(range(epochs)):
        failures.append(f"history epochs {history['epoch']}")
    if not gate.get("blessed"):
        failures.append(f"gate: {gate}")
    return {
        "faults_injected": int(killed),
        "epochs_after_resume": history["epoch"],
        "blessed": bool(gate.get("blessed")),
        "failures": len(failures) + int(not killed),
        "failure_examples": failures,
        "seconds": round(time.monotonic() - started, 1),
    }


# --- disk full --------------------------------------------------------------------------------------------


def disk_full(work: Workspace) -> dict:
    """Exports into a model folder on a 1 MiB file system (full) and a read-only one, while a version serves.

    Each must fail with a clear error, leave nothing half-written, and leave serving unchanged.
    """
    folder = _scenario_dir(work, "disk_full")
    mounts = {"full": folder / "full", "read_only": folder / "read_only"}
    for kind, mount in mounts.items():
        mount.mkdir(parents=True, exist_ok=True)
        options = "size=1m" if kind == "full" else "size=64m"
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
        if result.returncode != 0:
            return {"skipped": f"cannot mount a small file system here ({result.stderr.decode().strip()})"}
    started = time.monotonic()
    failures, messages = [], {}
    try:
        ro_models = mounts["read_only"] / "fashion_mnist"
        seeded = _export_process(work, mounts["read_only"], "disk-seed")  # one good version first
        if seeded.wait(timeout=600) != 0:
            failures.append("seeding the read-only folder failed")
        subprocess.run(["mount", "-o", "remount,ro", str(mounts["read_only"])], check=True)
        config = folder / "disk.config"
        config.write_text(_model_config("fashion_mnist", ro_models))
        server = _start(folder, f"--model_config_file={config}")
        try:
            for kind, target in mounts.items():
                before = sorted(p.name for p in (target / "fashion_mnist").iterdir()) if kind == "read_only" else []
                process = _export_process(work, target, f"disk-{kind}")
                code = process.wait(timeout=600)
                messages[kind] = process.stderr.read().decode().strip().splitlines()[-1:]
                after_dir = target / "fashion_mnist"
                after = sorted(p.name for p in after_dir.iterdir()) if after_dir.exists() else []
                if code == 0:
                    failures.append(f"{kind}: export succeeded")
                expected = "No space left on device" if kind == "full" else "is not writable (Read-only file system"
                if not messages[kind] or expected not in messages[kind][0]:
                    failures.append(f"{kind}: unclear error {messages[kind]}")
                if kind == "read_only" and after != before:
                    failures.append(f"read_only: folder changed {before} -> {after}")
                if kind == "full" and [n for n in after if not n.startswith(".")]:
                    failures.append(f"full: left {after}")
            with TFServingClient(server.grpc_target, timeout=30) as client:
                if client.predict("fashion_mnist", {"images": np.zeros((1, 28, 28), np.uint8)}).version != 1:
                    failures.append("serving changed")
        finally:
            server.stop()
    finally:
        for mount in mounts.values():
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return {
        "faults_injected": 2,
        "errors_reported": messages,
        "failures": len(failures),
        "failure_examples": failures,
        "seconds": round(time.monotonic() - started, 1),
    }


# --- report -------------------------------------------------------------------------------------------------

LONG = {
    "fuzz": {"cases": 6000},
    "hot_swap": {"requests": 20000, "promotions": 5, "rollbacks": 2},
    "export_faults": {"kills": 50, "overlapping": 20},
    "serving_killed": {"kills": 5},
    "connections": {"idle": 500, "slow": 200},
    "training_killed": {},
    "disk_full": {},
    "large_requests": {"requests": 20},
}
SHORT = {
    "fuzz": {"cases": 300, "derandomize": True},
    "hot_swap": {"requests": 1500, "promotions": 3, "rollbacks": 1, "concurrency": 16},
    "export_faults": {"kills": 2, "overlapping": 2},
    "serving_killed": {"kills": 2},
    "connections": {"idle": 200, "slow": 50, "requests": 50, "tolerance_s": 3.0},
    "training_killed": {"epochs": 2},
    "disk_full": {},
    "large_requests": {"requests": 3},
}
SCENARIOS: dict[str, Callable[..., dict]] = {
    "fuzz": fuzz,
    "hot_swap": hot_swap,
    "export_faults": export_faults,
    "serving_killed": serving_killed,
    "connections": connections,
    "training_killed": training_killed,
    "disk_full": disk_full,
    "large_requests": large_requests,
}


def markdown(results: dict) -> str:
    """The report table the README shows."""
    lines = [
        "| scenario | faults injected | requests sent | failures | swaps | fuzz cases | server memory peak | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results["scenarios"].items():
        if "skipped" in result:
            lines.append(f"| {name} | skipped: {result['skipped']} | | | | | | |")
            continue
        memory = result.get("server_memory_high_water_mb")
        lines.append(
            f"| {name} | {result.get('faults_injected', '')} | {result.get('requests_sent', '')} | "
            f"**{result['failures']}** | {result.get('swaps', '')} | {result.get('fuzz_cases', '')} | "
            f"{f'{memory:,.0f} MB' if memory else ''} | {result['seconds']} |"
        )
    large = results["scenarios"].get("large_requests")
    if large and "memory" in large:
        lines += ["", f"Server memory around {large['request_mb']} MB REST requests (large_requests):", ""]
        lines += ["| heap trimming | idle | peak | 3 s after the last request |", "|---|---|---|---|"]
        for mode, m in large["memory"].items():
            lines.append(f"| {mode} | {m['idle_mb']:,.0f} MB | {m['peak_mb']:,.0f} MB | {m['after_mb']:,.0f} MB |")
    machine = results["machine"]
    lines += [
        "",
        f"{machine['cores']} cores ({machine['cpu']}), {results['date']}; nothing lost: {results['nothing_lost']}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--short", action="store_true", help="the sizes `make test` uses")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    sizes = SHORT if args.short else LONG
    root = Path(tempfile.mkdtemp(prefix="reliability-"))
    print(f"workspace {root}: preparing data and a trained model", flush=True)
    work = prepare_workspace(root)
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
        "sizes": "short" if args.short else "long",
        "scenarios": {},
    }
    for name in args.scenarios.split(","):
        print(f"{name} {sizes[name]} ...", flush=True)
        results["scenarios"][name] = SCENARIOS[name](work, **sizes[name])
        print(f"{name}: {results['scenarios'][name]}", flush=True)
    results["nothing_lost"] = all(r.get("failures", 0) == 0 for r in results["scenarios"].values())
    write_report(args.out_dir, "reliability", results, markdown(results))
    print(markdown(results))
    sys.exit(0 if results["nothing_lost"] else 1)


if __name__ == "__main__":
    main()
