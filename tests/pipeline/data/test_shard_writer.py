"""The bounded-memory snapshot writer writes what TFDS's own builder writes, whatever its memory budget."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline.core.problem import (
    CATEGORICAL,
    FLOAT,
    IMAGE,
    MULTICLASS,
    NUMERIC,
    STRING,
    UINT8,
    FeatureSpec,
    ProblemSpec,
)
from pipeline.data.byte_columns import Ragged
from pipeline.data.example_encoder import serialize_rows
from pipeline.data.problem_inference import PreparedSplit
from pipeline.data.shard_writer import (
    DATASET_NAME,
    SpilledRecords,
    merged_records,
    write_dataset,
)
from pipeline.data.snapshot_builder import features_dict


def _problem(images=True):
    features = (
        *([FeatureSpec("pixels", "pixels", IMAGE, UINT8, (4, 4, 1))] if images else []),
        FeatureSpec("size", "size", NUMERIC, FLOAT),
        FeatureSpec("colour", "colour", CATEGORICAL, STRING),
    )
    return ProblemSpec(MULTICLASS, "label", "label", features, ("a", "b", "c"))


def _rows(count, seed=0, images=True):
    rng = np.random.default_rng(seed)
    colours = np.empty(count, dtype=object)
    colours[:] = [["red", "green", ""][i % 3] for i in range(count)]
    pixels = rng.integers(0, 256, (count, 4, 4, 1), dtype=np.uint8)
    return PreparedSplit(
        {
            **({"pixels": pixels} if images else {}),
            "size": rng.normal(size=count).astype(np.float32),
            "colour": colours,
        },
        rng.integers(0, 3, count).astype(np.int64),
        0,
    )


def _chunked(part, rows):
    def chunks():
        for start in range(0, len(part.labels), rows):
            yield PreparedSplit(
                {k: v[start : start + rows] for k, v in part.features.items()}, part.labels[start : start + rows], 0
            )

    return chunks


def _records(folder):
    files = sorted(str(p) for p in folder.glob("*.tfrecord*"))
    return [record.numpy() for record in tf.data.TFRecordDataset(files)]


class _TfdsBuilt(tfds.core.GeneratorBasedBuilder):
    """TFDS's own writer over the same rows: the reference."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, problem, splits, **kwargs):
        self._problem, self._splits = problem, splits
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=features_dict(self._problem))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self._splits}

    def _generate_examples(self, split):
        part = self._splits[split]
        for index in range(len(part.labels)):
            example = {key: values[index] for key, values in part.features.items()}
            example["label"] = part.labels[index]
            yield index, example


@pytest.mark.parametrize("images", [True, False], ids=["images", "scalars"])
def test_writes_the_records_tfds_writes_in_tfds_order(tmp_path, images):
    """Records in the same files and order, compared as parsed protos (the PNG bytes included):
    TFDS's own map-entry order changes from process to process (ours is the features' order)."""
    problem = _problem(images)
    splits = {"train": _rows(300, images=images), "test": _rows(50, seed=1, images=images)}
    written = write_dataset(tmp_path / "ours", problem, {s: _chunked(p, 64) for s, p in splits.items()})
    reference = _TfdsBuilt(problem=problem, splits=splits, data_dir=str(tmp_path / "tfds"))
    reference.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    reference_dir = tmp_path / "tfds" / "__tfds_built" / "1.0.0"

    for split in splits:
        ours = sorted(written.glob(f"{DATASET_NAME}-{split}.tfrecord*"))
        theirs = sorted(reference_dir.glob(f"*-{split}.tfrecord*"))
        assert [path.name.split("-", 1)[1] for path in ours] == [path.name.split("-", 1)[1] for path in theirs]
        mine, reference_records = (
            [record for path in files for record in _records_of(path)] for files in (ours, theirs)
        )
        mine, reference_records = ([tf.train.Example.FromString(r) for r in rs] for rs in (mine, reference_records))
        assert mine == reference_records
    loaded = tfds.builder_from_directory(str(written))
    assert loaded.info.splits["train"].num_examples == 300 and loaded.info.splits["test"].num_examples == 50
    first = next(iter(tfds.as_numpy(loaded.as_dataset(split="test[:1]"))))
    assert set(first) == {"pixels", "size", "colour", "label"} - ({"pixels"} if not images else set())


def _records_of(path):
    return [record.numpy() for record in tf.data.TFRecordDataset(str(path))]


def _entry_keys(record: bytes) -> list[str]:
    """The feature keys of a serialized `tf.train.Example`, in the order its map entries are written."""

    def fields(data: bytes):  # (tag byte, payload) of each length-delimited field
        at = 0
        while at < len(data):
            tag, at = data[at], at + 1
            size = shift = 0
            while True:
                byte, at = data[at], at + 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            yield tag, data[at : at + size]
            at += size

    (features,) = [payload for tag, payload in fields(record) if tag == 0x0A]
    entries = [payload for tag, payload in fields(features) if tag == 0x0A]
    return [next(payload for tag, payload in fields(entry) if tag == 0x0A).decode() for entry in entries]


def test_map_entries_are_written_in_the_features_order_whatever_the_process():
    """TFDS's serializer writes map entries in the protobuf runtime's hash order, which changes from
    process to process; parts written by different workers must give the same bytes."""
    rows = _rows(5)
    records = serialize_rows(_problem(images=True), rows.features, rows.labels).to_list()
    assert [_entry_keys(record) for record in records] == [["pixels", "size", "colour", "label"]] * 5
    rows = _rows(2, images=False)
    scalars = serialize_rows(_problem(images=False), rows.features, rows.labels).to_list()
    assert _entry_keys(scalars[0]) == ["size", "colour", "label"]


def test_a_tiny_memory_budget_spills_to_disk_and_writes_the_same_files(tmp_path):
    problem, part = _problem(), _rows(500)
    in_memory = write_dataset(tmp_path / "memory", problem, {"train": _chunked(part, 100)})
    spilled = write_dataset(tmp_path / "spilled", problem, {"train": _chunked(part, 7)}, memory_budget_bytes=2048)
    assert _records(in_memory) == _records(spilled)
    assert not (spilled / ".spill").exists()


def test_hash_order_does_not_depend_on_when_records_spill_nor_on_how_they_are_parted(tmp_path):
    kept = SpilledRecords(tmp_path / "a", "train", memory_budget_bytes=1 << 30)
    spilled = SpilledRecords(tmp_path / "b", "train", memory_budget_bytes=10)
    parts = [SpilledRecords(tmp_path / f"part-{n}", "train", memory_budget_bytes=100) for n in range(3)]
    for index in range(1000):
        kept.add(index, f"record {index}".encode())
        spilled.add(index, f"record {index}".encode())
        parts[index * 3 // 1000].add(index, f"record {index}".encode())  # three ranges of the split, written apart
    assert kept.close() == {"rows": 1000, "bytes": sum(len(f"record {i}") for i in range(1000))}
    spilled.close()
    for part in parts:
        part.close()
    in_order = list(merged_records([kept.directory]))
    assert in_order == list(merged_records([spilled.directory]))
    assert in_order == list(merged_records([part.directory for part in reversed(parts)]))
    assert sorted(in_order) == sorted(f"record {i}".encode() for i in range(1000))
    assert in_order != [f"record {i}".encode() for i in range(1000)]  # shuffled, not source order


def test_a_bucket_bigger_than_the_merge_budget_is_spilled_again_and_merged_in_the_same_order(tmp_path, caplog):
    """A split of more than 128 budgets: each bucket is bucketed again by the next key byte, then merged."""
    import logging

    records = SpilledRecords(tmp_path / "spill", "train", memory_budget_bytes=1 << 20)
    rows = [b"record %05d " % index + bytes(index % 90) for index in range(5000)]  # ~250 kB: buckets of ~1.5 kB
    records.add_many(0, Ragged.of(rows))
    records.close()
    whole = list(merged_records([tmp_path / "spill"]))
    with caplog.at_level(logging.INFO, logger="pipeline.data.shard_writer"):
        bounded = list(merged_records([tmp_path / "spill"], memory_budget_bytes=1024))
    assert bounded == whole and sorted(bounded) == sorted(rows)
    assert "of key byte 0 holds" in caplog.text  # buckets spilled again by the second byte...
    assert "of key byte 1 holds" not in caplog.text  # ...whose buckets fit
    assert sorted(path.name for path in tmp_path.iterdir()) == ["spill"]  # the merge's scratch is gone


_SPILL_IN_A_FRESH_PROCESS = """
import json, sys, tracemalloc
import numpy as np
import pyarrow as pa
from pipeline.data.byte_columns import Ragged
from pipeline.data.example_encoder import serialize_rows
from pipeline.data.shard_writer import SpilledRecords

budget, chunk, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
records = SpilledRecords(folder, "train", memory_budget_bytes=budget)
rng = np.random.default_rng(0)
chunks = [rng.integers(0, 256, chunk, dtype=np.uint8) for _ in range(30)]
warm_up = SpilledRecords(folder + "-warm-up", "train", memory_budget_bytes=budget)
warm_up.add(0, b"x")
warm_up.close()  # what the first spill imports (pyarrow loads pandas) is not what is measured
tracemalloc.start()
for number, data in enumerate(chunks):
    records.add_many(number * 100, Ragged(data, np.full(100, chunk // 100, np.int64)))
records.close()
print(json.dumps({"numpy": tracemalloc.get_traced_memory()[1], "arrow": pa.default_memory_pool().max_memory()}))
"""


def test_spilled_records_hold_about_their_budget_not_a_second_copy(tmp_path):
    """Records are copied into one buffer as they come and written out a bucket at a time.

    Run in a fresh process: Arrow's allocations (the gather of a bucket) are not traced by
    tracemalloc, and its pool's peak is the process's since it started.
    """
    import json
    import subprocess
    import sys

    budget, chunk = 1 << 20, 100_000
    run = subprocess.run(
        [sys.executable, "-c", _SPILL_IN_A_FRESH_PROCESS, str(budget), str(chunk), str(tmp_path / "spill")],
        capture_output=True,
        text=True,
        check=True,
    )
    peaks = json.loads(run.stdout.splitlines()[-1])
    # The buffer (the budget), one chunk's keys and lengths, one bucket's copy: well under two budgets.
    assert budget < peaks["numpy"] + peaks["arrow"] < 1.5 * budget
    assert 0 < peaks["arrow"] < budget / 10  # a bucket at a time, not the whole spill
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 256, chunk, dtype=np.uint8) for _ in range(30)]  # ~3 budgets' worth
    merged = b"".join(merged_records([tmp_path / "spill"]))
    assert sorted(merged[i : i + 1000] for i in range(0, len(merged), 1000)) == sorted(
        bytes(data[i : i + 1000]) for data in chunks for i in range(0, chunk, 1000)
    )


def test_each_spill_is_one_file_whatever_the_number_of_buckets(tmp_path):
    """A spill writes its buckets into one file (opened and synced once), not a file per bucket."""
    records = SpilledRecords(tmp_path / "spill", "train", memory_budget_bytes=1000)
    for number in range(10):
        records.add_many(number * 100, Ragged.of([b"%05d" % (number * 100 + row) for row in range(100)] * 1))
    assert records.close() == {"rows": 1000, "bytes": 5000}
    assert len(list((tmp_path / "spill").iterdir())) == 5  # chunks of 500 bytes, 1000 held: a spill every 2 chunks
    assert sorted(merged_records([tmp_path / "spill"])) == [b"%05d" % row for row in range(1000)]


def test_shards_cut_inside_a_bucket_keep_every_record_once(tmp_path):
    problem, part = _problem(images=False), _rows(700, images=False)
    one = write_dataset(tmp_path / "one", problem, {"train": _chunked(part, 100)}, shards=1)
    many = write_dataset(tmp_path / "many", problem, {"train": _chunked(part, 100)}, shards=7)
    assert len(list(many.glob("*.tfrecord*"))) == 7
    assert _records(one) == _records(many)
