"""Shared fixtures: small real Fashion-MNIST subsets as IDX folders, configs, a trained run."""

from __future__ import annotations

import os
from pathlib import Path

# Keep TensorFlow's C++ logging out of test output; set before anything imports TF.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pipeline.data.idx import write_idx_folder  # noqa: E402
from tests.support import read_fashion_mnist, train_small_run, train_table_run  # noqa: E402

TRAIN_EXAMPLES = 2000
TEST_EXAMPLES = 500


@pytest.fixture(scope="session")
def fashion_subset() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The first 2,000 train and 500 test images of the real Fashion-MNIST."""
    return {
        "train": read_fashion_mnist("train", TRAIN_EXAMPLES),
        "t10k": read_fashion_mnist("test", TEST_EXAMPLES),
    }


@pytest.fixture(scope="session")
def small_idx_dir(tmp_path_factory, fashion_subset) -> Path:
    """An IDX folder named 'fashion-mnist' holding the subset (so class names are known)."""
    return write_idx_folder(tmp_path_factory.mktemp("data") / "fashion-mnist", fashion_subset)


@pytest.fixture(scope="session")
def permuted_idx_dir(tmp_path_factory, fashion_subset) -> Path:
    """The subset with every label shifted by one class (a labelling bug a lax gate cannot see)."""
    shifted = {split: (images, (labels + 1) % 10) for split, (images, labels) in fashion_subset.items()}
    return write_idx_folder(tmp_path_factory.mktemp("permuted-data") / "fashion-mnist", shifted)


@pytest.fixture
def make_config(tmp_path, small_idx_dir):
    """Returns a factory of small, fast configs rooted in the test's tmp_path."""
    from pipeline.core.config import PipelineConfig

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
    return train_small_run(tmp_path_factory.mktemp("trained"), f"idx:{small_idx_dir}", "shared")


@pytest.fixture(scope="session")
def table_run(tmp_path_factory):
    """Returns a run per kind of table ('binary', 'multiclass', 'regression', 'text'), trained once per session."""
    runs = {}

    def get(task: str) -> dict:
        if task not in runs:
            runs[task] = train_table_run(tmp_path_factory.mktemp(f"{task}-table"), task)
        return runs[task]

    return get


@pytest.fixture(autouse=True, scope="session")
def _quiet_tfds():
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
