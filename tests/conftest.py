"""Shared fixtures: small real Fashion-MNIST subsets as IDX folders, configs, a trained run."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

# Keep TensorFlow's C++ logging out of test output; set before anything imports TF.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
TRAIN_EXAMPLES = 2000
TEST_EXAMPLES = 500


def read_fashion_mnist(prefix: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads the first `count` images [N,28,28] and labels of the installed Fashion-MNIST."""
    if not (FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz").exists():
        pytest.fail(
            f"Fashion-MNIST is not installed under {FASHION_MNIST_DIR}: "
            "run `make test` (it installs the Debian package dataset-fashion-mnist)"
        )
    with gzip.open(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8)
    return images[:count].copy(), labels[:count].copy()


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    """Writes an uint8 array as a (gzip-compressed if *.gz) IDX file."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_idx_folder(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Writes {prefix: (images, labels)} as an MNIST-style IDX folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in splits.items():
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 0x00000803)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x00000801)
    return folder


@pytest.fixture(scope="session")
def fashion_subset() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The first 2,000 train and 500 test images of the real Fashion-MNIST."""
    return {
        "train": read_fashion_mnist("train", TRAIN_EXAMPLES),
        "t10k": read_fashion_mnist("t10k", TEST_EXAMPLES),
    }


@pytest.fixture(scope="session")
def small_idx_dir(tmp_path_factory, fashion_subset) -> Path:
    """An IDX folder named 'fashion-mnist' holding the subset (so class names are known)."""
    return write_idx_folder(tmp_path_factory.mktemp("data") / "fashion-mnist", fashion_subset)


@pytest.fixture
def make_config(tmp_path, small_idx_dir):
    """Returns a factory of small, fast configs rooted in the test's tmp_path."""
    from pipeline.config import PipelineConfig

    def factory(**overrides):
        values = {
            "data_source": f"idx:{small_idx_dir}",
            "workdir": str(tmp_path / "work"),
            "model_base_path": str(tmp_path / "models"),
            "run_id": "test-run",
            "epochs": 1,
            "batch_size": 64,
            "shuffle_buffer": 512,
            "min_accuracy": 0.5,
            "warmup_requests": 4,
        }
        values.update(overrides)
        return PipelineConfig(**values).validate()

    return factory


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_idx_dir):
    """One ingested snapshot and a 1-epoch model, evaluated, shared by read-only tests."""
    from pipeline.config import PipelineConfig
    from pipeline.evaluate import evaluate
    from pipeline.ingest import ingest
    from pipeline.train import train

    root = tmp_path_factory.mktemp("trained")
    config = PipelineConfig(
        data_source=f"idx:{small_idx_dir}",
        workdir=str(root / "work"),
        model_base_path=str(root / "models"),
        run_id="shared",
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


@pytest.fixture(autouse=True, scope="session")
def _quiet_tfds():
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
