"""Benchmark: serving latency and throughput, in-process signature call vs gRPC vs REST.

Starts `python -m serving.server` on an exported model with batching off, then on
(`serving/batching.config`), and runs closed-loop clients on keep-alive connections (a gRPC
channel or an HTTP/1.1 connection per client, requests encoded before the clock starts) for
each point `concurrency x batch`: p50/p95/p99 latency, throughput, errors, and the CPU share of
the server and of the load generator. Also measured in the same run: the in-process signature
call (the floor any server adds to) and a bare gRPC round trip (GetModelStatus, no model work:
the floor of the Python gRPC stack). Mode `logged` is batching off with request logging at
100% sampling (every Predict written as a PredictionLog record): its ratio to `off` is the
logging overhead. Writes JSON, a Markdown table and a PNG of latency against throughput to
bench/results/.

    .venv/bin/python bench/serving_latency.py [--model-dir artifacts/models/fashion_mnist]
        [--points 1x1,8x1,32x1,64x1,1x32,8x32,32x32,64x32] [--modes off,on,logged] [--requests 600]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_report  # noqa: E402
from pipeline.core.model_repo import published_versions  # noqa: E402
from pipeline.data.idx import read_folder_split  # noqa: E402
from serving import launcher  # noqa: E402

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_POINTS = "1x1,8x1,32x1,64x1,1x32,8x32,32x32,64x32"
PROTOCOLS = ("grpc", "rest")
MODE_TITLES = {"off": "no batching", "on": "batching", "logged": "no batching, 100% request log"}
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)}


def _in_process(version_dir: Path, images: np.ndarray, batch: int, requests: int) -> dict:
    """The signature called directly in this process, one caller: the floor for every server."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    inputs = tf.constant(images[:batch])
    for _ in range(20):
        serve(images=inputs)
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        serve(images=inputs)
        latencies.append(time.perf_counter() - started)
    rate = len(latencies) / sum(latencies)
    return {**_percentiles(latencies), "requests_per_s": round(rate, 1), "images_per_s": round(rate * batch, 1)}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _grpc_caller(server):
    """(prepare, send, close) for gRPC Predict on one channel: requests are built before timing."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving import tensors

    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def prepare(batch: np.ndarray):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.inputs["images"].CopyFrom(tensors.to_tensor_proto(batch))
        return request

    def send(request) -> None:
        response = stub.Predict(request, timeout=60)
        for proto in response.outputs.values():
            tensors.to_array(proto)

    return prepare, send, channel.close


def _rest_caller(server):
    """(prepare, send, close) for REST predict on one keep-alive connection: bodies encoded before timing."""
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
    connection.connect()
    # As urllib3 and requests do: without it, Nagle holds a large body's last segment until the
    # server's delayed ACK (up to 200 ms).
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    headers = {"Content-Type": "application/json"}

    def prepare(batch: np.ndarray) -> bytes:
        return json.dumps({"instances": batch.tolist()}).encode()

    def send(body: bytes) -> None:
        connection.request("POST", "/v1/models/m:predict", body, headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {payload[:200]!r}")

    return prepare, send, connection.close


def _status_caller(server):
    """(prepare, send, close) for GetModelStatus: a gRPC round trip with no model work."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    channel = grpc.insecure_channel(server.grpc_target)
    stub = model_service_pb2_grpc.ModelServiceStub(channel)

    def prepare(batch: np.ndarray):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "m"
        return request

    def send(request) -> None:
        stub.GetModelStatus(request, timeout=60)

    return prepare, send, channel.close


def _load(server, make_caller, images: np.ndarray, concurrency: int, batch: int, requests: int) -> dict:
    """Closed-loop clients, one thread and one connection each, for `requests` timed requests in all.

    Requests are encoded before the clock starts, so the load generator's share of the two
    cores goes to sending and receiving; that share is reported next to the figures.
    """
    per_client = max(requests // concurrency, 1)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)

    def client_loop(offset: int) -> None:
        prepare, send, close = make_caller(server)
        try:
            starts = [(offset * per_client + index) * batch % (len(images) - batch) for index in range(per_client)]
            payloads = [prepare(images[start : start + batch]) for start in starts]
            with contextlib.suppress(Exception):  # a refused warm-up call is not a timed request
                send(payloads[0])  # connect and warm up before timing
            barrier.wait()
            mine = []
            for payload in payloads:
                started = time.perf_counter()
                try:
                    send(payload)
                except Exception:  # noqa: BLE001  (counted, reported)
                    with lock:
                        errors[0] += 1
                    continue
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)
        finally:
            close()

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    cpu_before, server_cpu_before, started = os.times(), _cpu_seconds(server.pid), time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu, server_cpu = os.times(), _cpu_seconds(server.pid) - server_cpu_before
    client_cpu = (cpu.user - cpu_before.user) + (cpu.system - cpu_before.system)
    done = len(latencies)
    return {
        **_percentiles(latencies or [0.0]),
        "requests_per_s": round(done / elapsed, 1),
        "images_per_s": round(done * batch / elapsed, 1),
        "errors": errors[0],
        "server_cpu_share": round(server_cpu / elapsed / (os.cpu_count() or 1), 3),
        "load_generator_cpu_share": round(client_cpu / elapsed / (os.cpu_count() or 1), 3),
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 2) if numerator and denominator else None


def _ratios(results: dict) -> dict[str, float | None]:
    """The figures the serving issue sets goals for, from this run's points."""
    off, on = results["runs"].get("off", {}), results["runs"].get("on", {})
    logged = results["runs"].get("logged", {})
    in_process = results["in_process"]
    return {
        "logged_over_off_grpc_p50_1x1": _ratio(
            logged.get("grpc 1x1", {}).get("p50_ms"), off.get("grpc 1x1", {}).get("p50_ms")
        ),
        "logged_over_off_grpc_images_per_s_8x32": _ratio(
            logged.get("grpc 8x32", {}).get("images_per_s"), off.get("grpc 8x32", {}).get("images_per_s")
        ),
        "rest_p50_over_grpc_p50_1x1": _ratio(
            off.get("rest 1x1", {}).get("p50_ms"), off.get("grpc 1x1", {}).get("p50_ms")
        ),
        "rest_over_grpc_images_per_s_8x32": _ratio(
            off.get("rest 8x32", {}).get("images_per_s"), off.get("grpc 8x32", {}).get("images_per_s")
        ),
        "grpc_p50_over_in_process_p50_1x1": _ratio(off.get("grpc 1x1", {}).get("p50_ms"), in_process["1x1"]["p50_ms"]),
        "bare_grpc_round_trip_p50_over_in_process_p50_1x1": _ratio(
            results["grpc_round_trip"].get("status 1x1", {}).get("p50_ms"), in_process["1x1"]["p50_ms"]
        ),
        "batched_grpc_32x1_over_in_process_requests_per_s": _ratio(
            on.get("grpc 32x1", {}).get("requests_per_s"), in_process["1x1"]["requests_per_s"]
        ),
    }


def _cell(point: dict | None) -> str:
    if not point:
        return ""
    rate = f"{point['images_per_s']:,.0f} img/s" if point.get("batch", 1) > 1 else f"{point['requests_per_s']:,.0f}/s"
    errors = f", **{point['errors']} errors**" if point["errors"] else ""
    latency = f"p50 {point['p50_ms']:.2f} / p99 {point['p99_ms']:.1f} ms"
    return f"{latency}, {rate}{errors}, server CPU {point['server_cpu_share']:.0%}"


def markdown(results: dict) -> str:
    """The results as the Markdown table the README shows."""
    modes = [mode for mode in MODE_TITLES if mode in results["runs"]]
    columns = [(protocol, mode) for mode in modes for protocol in PROTOCOLS]
    header = ["point (concurrency x batch)"] + [f"{p} {MODE_TITLES[m]}" for p, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for point in results["points"]:
        cells = [_cell(results["runs"][mode].get(f"{protocol} {point}")) for protocol, mode in columns]
        lines.append(f"| {point} | " + " | ".join(cells) + " |")
    machine = results["machine"]
    lines += [
        "",
        f"In-process signature call: 1x1 p50 {results['in_process']['1x1']['p50_ms']:.2f} ms "
        f"({results['in_process']['1x1']['requests_per_s']:,.0f}/s); 1x32 "
        f"{results['in_process']['1x32']['images_per_s']:,.0f} img/s. Bare gRPC round trip (GetModelStatus): "
        + ", ".join(
            f"{k.split()[1]} p50 {v['p50_ms']:.2f} ms, {v['requests_per_s']:,.0f}/s"
            for k, v in results["grpc_round_trip"].items()
        )
        + ".",
        "",
        "Ratios: " + ", ".join(f"{key} {value}" for key, value in results["ratios"].items()) + ".",
        "",
        f"{machine['cores']} cores ({machine['cpu']}), {results['requests_per_point']} timed requests per point, "
        f"largest load generator CPU share {results['largest_load_generator_cpu_share']:.0%}; {results['date']}.",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """p50 latency against throughput (images/s), one line per protocol, batching and batch size."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for mode, points in results["runs"].items():
        for protocol in PROTOCOLS:
            for batch in sorted({p["batch"] for p in points.values()}):
                series = sorted(
                    (p["concurrency"], p["images_per_s"], p["p50_ms"])
                    for key, p in points.items()
                    if key.startswith(protocol) and p["batch"] == batch
                )
                if series:
                    axis.plot(
                        [s[1] for s in series],
                        [s[2] for s in series],
                        marker="o" if protocol == "grpc" else "s",
                        linestyle={"off": "-", "on": "--"}.get(mode, ":"),
                        label=f"{protocol}, batch {batch}, {MODE_TITLES[mode]}",
                    )
                    for concurrency, x, y in series:
                        axis.annotate(str(concurrency), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("throughput (images/s)")
    axis.set_ylabel("p50 latency (ms)")
    axis.set_title("Local server, closed-loop clients (labels: concurrency)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _serve_and_measure(
    flags: list[str],
    log_path: Path,
    images: np.ndarray,
    points: list[tuple[int, int]],
    requests: int,
    round_trip: dict | None,
) -> dict:
    measured = {}
    with launcher.start(flags, log_path=log_path) as server:
        if round_trip is not None:
            for concurrency in (1, 32):
                round_trip[f"status {concurrency}x1"] = _load(server, _status_caller, images, concurrency, 1, requests)
                print(f"grpc round trip {concurrency}x1: {round_trip[f'status {concurrency}x1']}", flush=True)
        for concurrency, batch in points:
            for protocol, caller in (("grpc", _grpc_caller), ("rest", _rest_caller)):
                point = _load(server, caller, images, concurrency, batch, requests)
                point.update(concurrency=concurrency, batch=batch)
                measured[f"{protocol} {concurrency}x{batch}"] = point
                print(f"{protocol:>4} {concurrency}x{batch}: {point}", flush=True)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model-dir", default=str(ROOT / "artifacts" / "models" / "fashion_mnist"))
    parser.add_argument("--points", default=DEFAULT_POINTS, help="concurrency x batch, comma-separated")
    parser.add_argument(
        "--modes", default="off,on,logged", help="batching off, on, and/or logged (off + 100%% request logging)"
    )
    parser.add_argument("--requests", type=int, default=600, help="timed requests per point and protocol")
    parser.add_argument("--batching-config", default=str(ROOT / "serving" / "batching.config"))
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    model_dir = Path(args.model_dir).resolve()
    versions = published_versions(model_dir)
    if not versions:
        sys.exit(f"no versions in {model_dir}: run `make demo` first")
    points = [tuple(int(part) for part in point.split("x")) for point in args.points.split(",")]
    images, _ = read_folder_split(DATA_DIR, "test", limit=2000)
    scratch = Path(tempfile.mkdtemp(prefix="serving-latency-"))  # the server's config and logs
    config = scratch / "latency.config"
    config.write_text(f"model_config_list {{ config {{ name: 'm' base_path: '{model_dir}' }} }}")
    version_dir = model_dir / str(versions[-1])
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
        "requests_per_point": args.requests,
        "batching_config": Path(args.batching_config).read_text(),
        "points": [f"{c}x{b}" for c, b in points],
        "in_process": {f"1x{b}": _in_process(version_dir, images, b, args.requests) for b in (1, 32)},
        "grpc_round_trip": {},
        "runs": {},
    }
    print("in-process:", results["in_process"], flush=True)
    logged_config = scratch / "logged.config"
    logged_config.write_text(
        f"model_config_list {{ config {{ name: 'm' base_path: '{model_dir}' logging_config {{ "
        f"log_collector_config {{ filename_prefix: '{scratch / 'request_logs' / 'm'}' }} "
        "sampling_config { sampling_rate: 1.0 } } } }"
    )
    for mode in args.modes.split(","):
        flags = [f"--model_config_file={logged_config if mode == 'logged' else config}"]
        if mode == "on":
            flags += ["--enable_batching", f"--batching_parameters_file={Path(args.batching_config).resolve()}"]
        round_trip = results["grpc_round_trip"] if mode == "off" or "off" not in args.modes else None
        results["runs"][mode] = _serve_and_measure(
            flags, scratch / f"server-{mode}.log", images, points, args.requests, round_trip
        )
    if "logged" in results["runs"]:
        results["request_log_files"] = len(list((scratch / "request_logs").glob("*.tfrecord")))
    all_points = [p for run in results["runs"].values() for p in run.values()]
    results["largest_load_generator_cpu_share"] = max(p["load_generator_cpu_share"] for p in all_points)
    results["ratios"] = _ratios(results)
    print("ratios:", results["ratios"])
    write_report(args.out_dir, "serving_latency", results, markdown(results), plot)


if __name__ == "__main__":
    main()
