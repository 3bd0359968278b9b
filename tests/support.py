"""Helpers shared by the test packages: paths, real data, local servers, waiting, candidate exports."""

from __future__ import annotations

import threading
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
    """`deploy.airflow_api.wait_until` for tests: polls `condition` and returns its first truthy result.

    Raises:
        AssertionError: naming `what`, after `timeout` seconds (a test failure, not an error).
    """
    from deploy.airflow_api import wait_until

    try:
        return wait_until(condition, timeout, what, interval)
    except TimeoutError as err:
        raise AssertionError(str(err)) from None


def train_small_run(root: Path, data_source: str, run_id: str, **options) -> dict:
    """Ingests `data_source` under `root`, trains a 1-epoch model and evaluates it (min_accuracy 0.5).

    Args:
        root: The folder for the run's workdir and models.
        data_source: The source.
        run_id: The run id.
        **options: More config values (a label, more epochs...).

    Returns:
        {"config", "snapshot", "train", "evaluate"}, as `export_candidate` takes it.
    """
    from pipeline.core.config import PipelineConfig
    from pipeline.data.ingest import ingest
    from pipeline.training.evaluate import evaluate
    from pipeline.training.train import train

    values = {
        "epochs": 1,
        "batch_size": 64,
        "shuffle_buffer": 512,
        "min_accuracy": 0.5,
        "warmup_requests": 4,
        **options,
    }
    config = PipelineConfig(
        data_source=data_source,
        workdir=str(root / "work"),
        model_base_path=str(root / "models"),
        run_id=run_id,
        **values,
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


def table_rows(task: str, rows: int = 400, seed: int = 0) -> dict[str, list]:
    """A small generated table with a learnable label, missing values and awkward column names.

    Args:
        task: 'multiclass' (species from bill and flipper lengths and island), 'binary' (approved?
            from income, debt and state), 'regression' (price from size, rooms and district) or
            'text' (sentiment from a review's words).
        rows: How many rows.
        seed: Seeds the values.

    Returns:
        {column: values}, None where a value is missing (a few labels too).
    """
    rng = np.random.default_rng(seed)
    pick = rng.integers
    if task == "multiclass":
        species = pick(0, 3, rows)
        names = np.array(["Adelie", "Chinstrap", "Gentoo"])[species]
        bill = 38 + 5 * species + rng.normal(0, 1.2, rows)
        flipper = (190 + 12 * (species == 2) + rng.normal(0, 4, rows)).astype(int)
        island = np.where(species == 2, "Biscoe", np.where(rng.random(rows) < 0.5, "Dream", "Torgersen"))
        table = {
            "bill length (mm)": [None if i % 23 == 5 else round(float(v), 1) for i, v in enumerate(bill)],
            "flipper_mm": [int(v) for v in flipper],
            "island": [None if i % 31 == 7 else str(v) for i, v in enumerate(island)],
            "species": [None if i % 37 == 11 else str(v) for i, v in enumerate(names)],
        }
    elif task == "binary":
        income = rng.lognormal(10.5, 0.5, rows)
        debt = rng.uniform(0, 1, rows)
        state = rng.choice(["CA", "NY", "TX", "WA"], rows)
        score = np.log(income) - 10.5 - 2.5 * (debt - 0.5) + 0.6 * (state == "WA") + rng.normal(0, 0.3, rows)
        table = {
            "annual income": [round(float(v), 2) for v in income],
            "debt ratio": [None if i % 19 == 3 else round(float(v), 3) for i, v in enumerate(debt)],
            "state": [str(v) for v in state],
            "approved?": ["yes" if v > 0 else "no" for v in score],
        }
    elif task == "regression":
        size = rng.uniform(30, 150, rows)
        rooms = np.clip((size / 30).astype(int) + pick(0, 2, rows), 1, 8)
        district = rng.choice(["north", "south", "center"], rows)
        price = 2000 * size + 15000 * rooms + np.where(district == "center", 60000, 0) + rng.normal(0, 8000, rows)
        table = {
            "size m2": [round(float(v), 1) for v in size],
            "rooms": [int(v) for v in rooms],
            "district": [str(v) for v in district],
            "price": [None if i % 41 == 9 else round(float(v), 2) for i, v in enumerate(price)],
        }
    elif task == "text":
        good, bad, filler = (
            ["great", "loved", "superb", "fun"],
            ["awful", "boring", "hated", "dull"],
            ["the", "film", "was", "plot", "actors", "really", "quite"],
        )
        positive = rng.random(rows) < 0.5
        reviews = []
        for is_positive in positive:
            words = list(rng.choice(filler, 5)) + list(rng.choice(good if is_positive else bad, 2))
            rng.shuffle(words)
            reviews.append(" ".join(words).capitalize() + ".")
        table = {
            "review": reviews,
            "stars shown": [int(v) for v in pick(0, 2, rows)],
            "sentiment": ["pos" if p else "neg" for p in positive],
        }
    else:
        raise ValueError(f"unknown table kind {task!r}")
    return table


def write_table(path: Path, table: dict[str, list]) -> Path:
    """Writes {column: values} as CSV (None as an empty field) or Parquet (None as null), by the suffix."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(table), path)
        return path
    columns = list(table)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for values in zip(*(table[c] for c in columns), strict=True):
            writer.writerow(["" if value is None else value for value in values])
    return path


TABLE_LABELS = {"binary": "approved?", "multiclass": "species", "regression": "price", "text": "sentiment"}


def train_table_run(root: Path, task: str, rows: int = 400, **options) -> dict:
    """A generated table of `task` (`table_rows`) as a CSV source, trained for 12 short epochs and evaluated."""
    source = write_table(root / "data" / f"{task}.csv", table_rows(task, rows))
    return train_small_run(
        root,
        f"csv:{source}",
        f"{task}-run",
        label=TABLE_LABELS[task],
        epochs=12,
        batch_size=32,
        learning_rate=0.005,
        early_stopping_patience=12,
        **options,
    )
