"""A snapshot reads back without TensorFlow exactly as TFDS reads it through tf.data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline.core.errors import ConfigError
from pipeline.data.ingest import ingest
from tests.support import REPO_ROOT, TABLE_LABELS, table_rows, write_table

SPLITS = ["train", "test", "train[:90%]", "train[90%:]", "test[:7]", "test[5:50]", "train[3%:4%]+test", "validation"]


def _snapshot(kind, make_config, tmp_path):
    if kind == "images":
        return ingest(make_config(snapshot_shards=3))
    source = write_table(tmp_path / "loans.csv", table_rows("text" if kind == "text" else "regression", rows=700))
    label = TABLE_LABELS["text" if kind == "text" else "regression"]
    return ingest(make_config(data_source=f"csv:{source}", label=label, snapshot_shards=3))


def _tfds_columns(snapshot, split):
    """What TFDS's reader gives for the split, through tf.data, as columns."""
    parts, labels = [], []
    for features, batch_labels in tfds.as_numpy(snapshot.load_split(split, files_in_turn=True).batch(100)):
        parts.append(features)
        labels.append(batch_labels)
    columns = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    for feature in snapshot.problem.features:
        if columns[feature.key].dtype.kind == "O":
            columns[feature.key] = np.asarray([value.decode("utf-8") for value in columns[feature.key]], object)
    return columns, np.concatenate(labels)


def _columns(snapshot, split, **kwargs):
    batches = list(snapshot.iter_batches(split, **kwargs))
    columns = {key: np.concatenate([features[key] for features, _ in batches]) for key in batches[0][0]}
    return columns, np.concatenate([labels for _, labels in batches])


@pytest.mark.parametrize("kind", ["images", "table", "text"])
def test_every_split_expression_reads_what_tfds_reads(kind, make_config, tmp_path):
    snapshot = _snapshot(kind, make_config, tmp_path)
    for split in SPLITS:
        if snapshot.base_split(split) not in snapshot.splits:
            continue
        ours, labels = _columns(snapshot, split, batch_size=64)
        theirs, their_labels = _tfds_columns(snapshot, split)
        assert np.array_equal(labels, their_labels.astype(labels.dtype)), split
        for key, values in theirs.items():
            assert ours[key].dtype == values.dtype, (split, key)
            assert np.array_equal(ours[key], values, equal_nan=values.dtype.kind == "f"), (split, key)


def test_files_and_shards_of_a_split(make_config):
    snapshot = ingest(make_config(snapshot_shards=3))
    files = snapshot.file_instructions("train")
    assert [(path.name, skip) for path, skip, _ in files] == [
        (f"columns_dataset-train.tfrecord-0000{i}-of-00003", 0) for i in range(3)
    ]
    assert sum(take for _, _, take in files) == snapshot.splits["train"] and snapshot.shard_count("train") == 3
    whole = _columns(snapshot, "train")[1]
    by_file = np.concatenate([_columns(snapshot, "train", shard=(i, 3))[1] for i in range(3)])
    assert np.array_equal(whole, by_file)
    with pytest.raises(ConfigError, match=r"split 'holdout' is not in snapshot"):
        snapshot.file_instructions("holdout")
    with pytest.raises(ConfigError, match=r"bad split expression 'train\[:120%\]'"):
        snapshot.file_instructions("train[:120%]")


def test_statistics_are_read_without_importing_tensorflow(make_config):
    """Each mapped validation task is a new process: measuring its shard does not import TensorFlow."""
    config = make_config(snapshot_shards=2)
    snapshot = ingest(config)
    code = (
        "import json, sys\n"
        "from pipeline.core.config import PipelineConfig\n"
        "from pipeline.data.data_validation import ValidationPart, measure_part, snapshot_split_statistics\n"
        "from pipeline.data.snapshot import Snapshot\n"
        f"config = PipelineConfig(**{config.to_dict()!r})\n"
        f"snapshot = Snapshot.load({str(snapshot.path)!r})\n"
        "measured = measure_part(config, snapshot, ValidationPart('train', 1, 2))\n"
        "summary = snapshot_split_statistics(snapshot, 'test').summary()\n"
        "print(json.dumps([summary['count'], [m for m in ('tensorflow', 'keras') if m in sys.modules]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [snapshot.splits["test"], []]
