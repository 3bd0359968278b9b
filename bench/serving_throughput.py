"""Benchmark: local server throughput with and without server-side batching.

Starts `python -m serving.server` twice on the exported model (batching off, then on with
serving/batching.config), sends single-image gRPC predicts from concurrent clients, and
prints the median requests/second over repeats and the batched/unbatched ratio.

    .venv/bin/python bench/serving_throughput.py [--model-dir artifacts/models/fashion_mnist]
"""

from __future__ import annotations

import argparse
import statistics
import sys
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


def _throughput(grpc_target: str, model: str, clients: int, requests: int, images: np.ndarray) -> float:
    barrier = threading.Barrier(clients + 1)

    def client_loop(offset: int) -> None:
        with TFServingClient(grpc_target) as client:
            client.predict(model, {"images": images[:1]})  # connect before timing
            barrier.wait()
            for index in range(requests):
                row = (offset * requests + index) % len(images)
                client.predict(model, {"images": images[row : row + 1]})

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return clients * requests / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(ROOT / "artifacts" / "models" / "fashion_mnist"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model_dir = Path(args.model_dir).resolve()
    if not published_versions(model_dir):
        sys.exit(f"no versions in {model_dir}: run `make demo` first")
    images, _ = read_folder_split(DATA_DIR, "test", limit=1000)
    results = {}
    scratch = ROOT / "artifacts" / "bench"
    scratch.mkdir(parents=True, exist_ok=True)
    for label, extra in (
        ("unbatched", []),
        ("batched", ["--enable_batching", f"--batching_parameters_file={ROOT / 'serving' / 'batching.config'}"]),
    ):
        config = scratch / f"{label}.config"
        config.write_text(f"model_config_list {{ config {{ name: 'm' base_path: '{model_dir}' }} }}")
        with launcher.start([f"--model_config_file={config}", *extra], log_path=scratch / f"{label}.log") as server:
            runs = [
                _throughput(server.grpc_target, "m", args.clients, args.requests, images) for _ in range(args.repeats)
            ]
        results[label] = statistics.median(runs)
        each = ", ".join(f"{r:.0f}" for r in runs)
        print(
            f"{label:>10}: median {results[label]:.0f} requests/s over {args.repeats} runs ({each}); "
            f"{args.clients} clients x {args.requests} requests"
        )
    print(f"batched / unbatched throughput: {results['batched'] / results['unbatched']:.2f}x")


if __name__ == "__main__":
    main()
