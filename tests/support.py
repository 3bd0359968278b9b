"""Helpers shared by the test packages: paths, real data, local servers, waiting, candidate exports."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving import launcher

REPO_ROOT = Path(__file__).resolve().parent.parent
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Fast polling and one quick retry, so tests of loads and failures do not wait long.
TEST_SERVER_FLAGS = (
    "--file_system_poll_wait_seconds=0.2",
    "--max_num_load_retries=1",
    "--load_retry_interval_micros=100000",
)


def read_fashion_mnist(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images [N,28,28] and labels of the installed Fashion-MNIST ('train' or 'test')."""
    from pipeline.data.idx import read_folder_split

    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(
            f"Fashion-MNIST is not installed under {FASHION_MNIST_DIR}: "
            "run `make test` (it installs the Debian package dataset-fashion-mnist)"
        )
    return read_folder_split(FASHION_MNIST_DIR, split, limit=count)


def start_test_server(
    models_dir: Path, log_path: Path, *extra: str, wait: bool = True, ports: tuple[int, int] | None = None
) -> launcher.LocalServer:
    """Starts a local server on an (initially empty) config file in `models_dir`, with fast polling.

    Args:
        models_dir: Holds `empty.config` (written if missing); later flags may replace it.
        log_path: The server's log file.
        extra: More flags (a later `--model_config_file` wins over the empty one).
        wait: Return only once it answers.
        ports: (gRPC, REST) ports, e.g. to restart a server where it was; free ports by default.
    """
    config = models_dir / "empty.config"
    if not config.exists():
        config.write_text("model_config_list {}\n")
    grpc_port, rest_port = ports or (None, None)
    args = [f"--model_config_file={config}", *TEST_SERVER_FLAGS, *extra]
    return launcher.start(args, log_path=log_path, grpc_port=grpc_port, rest_port=rest_port, wait=wait)


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "a condition", interval: float = 0.2):
    """Polls `condition` until it returns something truthy, and returns that.

    An OSError (a server not listening yet) counts as not yet.

    Raises:
        AssertionError: naming `what`, after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def train_small_run(root: Path, data_source: str, run_id: str) -> dict:
    """Ingests `data_source` under `root`, trains a 1-epoch model and evaluates it (min_accuracy 0.5).

    Returns:
        {"config", "snapshot", "train", "evaluate"}, as `export_candidate` takes it.
    """
    from pipeline.core.config import PipelineConfig
    from pipeline.data.ingest import ingest
    from pipeline.training.evaluate import evaluate
    from pipeline.training.train import train

    config = PipelineConfig(
        data_source=data_source,
        workdir=str(root / "work"),
        model_base_path=str(root / "models"),
        run_id=run_id,
        epochs=1,
        batch_size=64,
        shuffle_buffer=512,
        min_accuracy=0.5,
        warmup_requests=4,
    ).validate()
    snapshot = ingest(config)
    trained = train(config, snapshot)
    evaluated = evaluate(config, snapshot, trained.model_path)
    return {"config": config, "snapshot": snapshot, "train": trained, "evaluate": evaluated}


def export_candidate(trained_run: dict, config, **kwargs):
    """Exports the shared trained run's model under `config` (its model base path and name)."""
    from pipeline.training.export import export

    return export(
        config,
        trained_run["snapshot"],
        trained_run["train"].model_path,
        trained_run["evaluate"].evaluation_path,
        **kwargs,
    )


class Traffic:
    """Real test images sent without version or label (live traffic) from a thread, 8 per call.

    Attributes:
        versions: The version that answered each call.
        errors: The status of each failed call.
    """

    def __init__(self, grpc_target: str, images: np.ndarray, model: str = "fashion_mnist", pause_s: float = 0.02):
        self.grpc_target, self.images, self.model, self.pause_s = grpc_target, images, model, pause_s
        self.versions: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from serving.client import TFServingClient
        from serving.protocol import ServingError

        with TFServingClient(self.grpc_target, "") as client:
            start = 0
            while not self._stop.wait(self.pause_s):
                batch = self.images[start : start + 8]
                start = (start + 8) % (len(self.images) - 8)
                try:
                    self.versions.append(client.predict(self.model, {"images": batch}).version)
                except ServingError as err:  # e.g. before a first model is loaded
                    self.errors.append(err.code.name)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
