"""strategy 'multi_worker': MultiWorkerMirroredStrategy over TF_CONFIG, two real worker processes on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.artifacts import read_manifest, record_stage
from pipeline.core.errors import ConfigError
from pipeline.data.ingest import ingest
from pipeline.training.hardware import multi_worker_task, plan_hardware
from serving.launcher import free_port
from tests.support import REPO_ROOT


def _resolver(cluster: dict, task_type: str, task_index: int):
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_index
    )


def test_the_chief_is_worker_zero_unless_the_cluster_names_one():
    workers = {"worker": ["a:1", "b:1"]}
    assert multi_worker_task(_resolver(workers, "worker", 0)).is_chief
    assert not multi_worker_task(_resolver(workers, "worker", 1)).is_chief
    with_chief = {"chief": ["c:1"], **workers}
    assert multi_worker_task(_resolver(with_chief, "chief", 0)).is_chief
    task = multi_worker_task(_resolver(with_chief, "worker", 0))
    assert not task.is_chief and task.workers == 3


def test_a_parameter_server_task_is_refused():
    with pytest.raises(ConfigError, match="'chief' and 'worker' tasks; TF_CONFIG says 'ps'"):
        multi_worker_task(_resolver({"worker": ["a:1"], "ps": ["p:1"]}, "ps", 0))


def test_multi_worker_without_tf_config_names_what_is_missing(make_config, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="strategy 'multi_worker' needs TF_CONFIG"):
        plan_hardware(make_config(strategy="multi_worker"))


def _train_command(config, index: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "train",
        "--run-id",
        config.run_id,
        "--data-source",
        config.data_source,
        "--workdir",
        config.workdir,
        "--model-base-path",
        config.model_base_path,
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--shuffle-buffer",
        "512",
        "--strategy",
        "multi_worker",
        # Whole splits of two shard files: each worker reads its own file.
        "--train-split",
        "train",
        "--validation-split",
        "test",
    ]


def test_two_workers_train_one_model_and_only_the_chief_writes_it(make_config, tmp_path):
    config = make_config(run_id="multi-worker", snapshot_shards=2)
    snapshot = ingest(config)
    assert snapshot.builder().info.splits["train"].shard_lengths == [1000, 1000]
    record_stage(config, "ingest", {"snapshot": str(snapshot.path)})  # As `python -m pipeline ingest` does.
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    workers = []
    for index in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            "TMPDIR": str(tmp_path / f"tmp-{index}"),  # Each "machine" has its own local scratch.
        }
        (tmp_path / f"tmp-{index}").mkdir()
        workers.append(
            subprocess.Popen(
                _train_command(config, index),
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results, logs = [], []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out))
        logs.append(err)

    chief, other = results
    for index, (result, log) in enumerate(zip(results, logs, strict=True)):
        assert result["hardware"]["strategy"] == "multi_worker"
        assert result["hardware"]["task"] == f"worker/{index}" and result["hardware"]["workers"] == 2
        assert result["hardware"]["replicas"] == 2  # One CPU replica on each worker, in sync.
        assert f"training as worker/{index} of 2 worker(s)" in log
        # 1000 rows each, in whole batches of 64 (a partial last batch can leave a replica empty).
        assert f"split 'train': worker {index} of 2 reads its own shard files (960 rows)" in log
        assert "Epoch 2/2" in log and "step - accuracy" in log  # Each worker logged its steps.
        assert result["epochs_run"] == 2
    assert chief["is_chief"] and not other["is_chief"]
    assert other["model_path"] is None and "the chief evaluates and exports" in other["stop_reason"]
    # Both saw the same (all-reduced) validation accuracy.
    assert other["best_val_score"] == pytest.approx(chief["best_val_score"])

    # Only the chief wrote into the run: the manifest's train entry and the files are its own.
    train_dir = config.workdir_path / "runs" / config.run_id / "train"
    assert read_manifest(config)["train"]["hardware"]["task"] == "worker/0"
    assert sorted(p.name for p in train_dir.iterdir() if p.suffix in (".keras", ".json", ".png", ".csv")) == [
        "best.keras",
        "feature_statistics.json",
        "history.json",
        "model.keras",
        "training_curves.png",
        "training_log.csv",
    ]
    assert list((tmp_path / "tmp-1").iterdir()) == []  # The other worker's scratch files are gone.

    model = keras.models.load_model(chief["model_path"])
    probabilities = model.predict({"images": np.zeros((3, 28, 28, 1), np.float32)}, verbose=0)
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
