"""Benchmark: serving latency and throughput, in-process signature call vs gRPC vs REST.

Starts `python -m serving.server` on an exported model (batching off, or on with
`--batching-config`), then runs closed-loop clients on keep-alive connections (a gRPC channel
or an HTTP/1.1 connection per client) for each point `concurrency x batch`, and prints p50/p95/p99
latency and throughput with the ratios the serving issue names. Writes JSON to bench/results/.

    .venv/bin/python bench/serving_latency.py [--model-dir artifacts/models/fashion_mnist] [--points 1x1,8x32]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.core.model_repo import published_versions  # noqa: E402
from pipeline.data.idx import read_folder_split  # noqa: E402
from serving import launcher  # noqa: E402
from serving.client import TFServingClient  # noqa: E402

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)}


def _in_process(version_dir: Path, images: np.ndarray, requests: int) -> dict:
    import tensorflow as tf

    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    batch = tf.constant(images[:1])
    for _ in range(20):
        serve(images=batch)
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        serve(images=batch)
        latencies.append(time.perf_counter() - started)
    return {**_percentiles(latencies), "requests_per_s": round(len(latencies) / sum(latencies), 1)}


def _grpc_caller(server, images):
    client = TFServingClient(server.grpc_target, timeout=60, retries=0)

    def call(batch: np.ndarray) -> None:
        client.predict("m", {"images": batch})

    return call, client.close


def _rest_caller(server, images):
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)

    def call(batch: np.ndarray) -> None:
        body = json.dumps({"instances": batch.tolist()})
        connection.request("POST", "/v1/models/m:predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {payload[:200]!r}")

    return call, connection.close


def _load(server, make_caller, images: np.ndarray, concurrency: int, batch: int, requests: int) -> dict:
    per_client = max(requests // concurrency, 1)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)

    def client_loop(offset: int) -> None:
        call, close = make_caller(server, images)
        try:
            with contextlib.suppress(Exception):  # a refused warm-up call is not a timed request
                call(images[:batch])  # connect and warm up before timing
            barrier.wait()
            mine = []
            for index in range(per_client):
                start = (offset * per_client + index) * batch % (len(images) - batch)
                started = time.perf_counter()
                try:
                    call(images[start : start + batch])
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
    cpu_before, started = os.times(), time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = os.times()
    client_cpu = (cpu.user - cpu_before.user) + (cpu.system - cpu_before.system)
    done = len(latencies)
    return {
        **_percentiles(latencies or [0.0]),
        "requests_per_s": round(done / elapsed, 1),
        "images_per_s": round(done * batch / elapsed, 1),
        "errors": errors[0],
        "load_generator_cpu_share": round(client_cpu / elapsed / (os.cpu_count() or 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(ROOT / "artifacts" / "models" / "fashion_mnist"))
    parser.add_argument("--points", default="1x1,8x32", help="concurrency x batch, comma-separated")
    parser.add_argument("--requests", type=int, default=600, help="timed requests per point and protocol")
    parser.add_argument("--batching-config", help="serve with --enable_batching and this parameters file")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serving_latency.json"))
    args = parser.parse_args()
    model_dir = Path(args.model_dir).resolve()
    versions = published_versions(model_dir)
    if not versions:
        sys.exit(f"no versions in {model_dir}: run `make demo` first")
    images, _ = read_folder_split(DATA_DIR, "test", limit=2000)
    scratch = Path(tempfile.mkdtemp(prefix="serving-latency-"))  # the server's config and log
    config = scratch / "latency.config"
    config.write_text(f"model_config_list {{ config {{ name: 'm' base_path: '{model_dir}' }} }}")
    flags = [f"--model_config_file={config}"]
    if args.batching_config:
        flags += ["--enable_batching", f"--batching_parameters_file={Path(args.batching_config).resolve()}"]
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "batching": bool(args.batching_config),
        "in_process_1x1": _in_process(model_dir / str(versions[-1]), images, args.requests),
        "points": {},
    }
    with launcher.start(flags, log_path=scratch / "latency-server.log") as server:
        for point in args.points.split(","):
            concurrency, batch = (int(part) for part in point.split("x"))
            for protocol, caller in (("grpc", _grpc_caller), ("rest", _rest_caller)):
                measured = _load(server, caller, images, concurrency, batch, args.requests)
                results["points"][f"{protocol} {point}"] = measured
                print(f"{protocol:>4} {point:>5}: {measured}", flush=True)
    grpc, rest = results["points"].get("grpc 1x1"), results["points"].get("rest 1x1")
    if grpc and rest:
        results["ratios"] = {
            "rest_p50_over_grpc_p50_1x1": round(rest["p50_ms"] / grpc["p50_ms"], 2),
            "grpc_p50_over_in_process_p50_1x1": round(grpc["p50_ms"] / results["in_process_1x1"]["p50_ms"], 2),
        }
    grpc, rest = results["points"].get("grpc 8x32"), results["points"].get("rest 8x32")
    if grpc and rest:
        results.setdefault("ratios", {})["rest_over_grpc_images_per_s_8x32"] = round(
            rest["images_per_s"] / grpc["images_per_s"], 2
        )
    print("in-process 1x1:", results["in_process_1x1"])
    print("ratios:", results.get("ratios"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
