"""Writes a snapshot's splits as a prepared TFDS dataset in bounded memory.

TFDS's own `GeneratorBasedBuilder` holds up to 1 GB of serialized examples in memory before it
spills. This writer takes
each split as a stream of row chunks and keeps at most `memory_budget_bytes` of serialized
examples in memory; past that, it spills them to bucket files on disk, as TFDS's shuffler does.

What it writes is what TFDS writes: the same features (`snapshot_builder.features_dict`;
rows of scalars are serialized column by column by `example_encoder`, to the same protos), the
same example order (rows ordered by TFDS's salted MD5 hash of their index, the split's name
being the salt), shards counted by TFDS's own rule (`ShardConfig.calculate_number_shards`:
64 MiB to 1 GiB each) and named by its file template, and the metadata
(`dataset_info.json`, `features.json`) written by `tfds.folder_dataset.write_metadata`, so
`tfds.builder_from_directory` reads it like any prepared dataset.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.core.problem import ProblemSpec
from pipeline.data.example_encoder import can_encode, serialize_chunk

DATASET_NAME = "columns_dataset"
DATASET_VERSION = "1.0.0"
DEFAULT_MEMORY_BUDGET_BYTES = 64 << 20
SPILL_BUCKETS = 256
_ENTRY_HEADER = struct.Struct("<16sQ")  # 128-bit hash key, record length


class RowChunk(Protocol):
    """Consecutive rows of one split brought to the problem spec (`problem_inference.PreparedSplit`)."""

    features: dict[str, np.ndarray]  # text as `str` objects, images uint8 [N, H, W, C]
    labels: np.ndarray  # class ids (int64) or values (float32)


ChunkSource = Callable[[], Iterable[RowChunk]]


class HashOrderedRecords:
    """Records ordered by TFDS's hash of their key, held in memory up to a budget, then spilled to disk.

    Args:
        directory: Where spill files go (each removed once read; the caller removes the folder).
        salt: The hash salt (TFDS uses the split's name).
        memory_budget_bytes: Serialized bytes kept in memory before spilling.
    """

    def __init__(self, directory: Path, salt: str, memory_budget_bytes: int):
        from tensorflow_datasets.core import hashing

        self._hasher = hashing.Hasher(salt)
        self._directory = Path(directory)
        self._budget = memory_budget_bytes
        self._buffer: list[tuple[int, bytes]] = []
        self._buffered_bytes = 0
        self._buckets: list[Path] | None = None
        self.count = 0
        self.total_bytes = 0

    def add(self, key: int, record: bytes) -> None:
        """Adds one serialized example under its (unique) key."""
        self._buffer.append((self._hasher.hash_key(key), record))
        self._buffered_bytes += len(record)
        self.count += 1
        self.total_bytes += len(record)
        if self._buffered_bytes > self._budget:
            self._spill()

    def _spill(self) -> None:
        if self._buckets is None:
            self._directory.mkdir(parents=True, exist_ok=True)
            prefix = tempfile.mkdtemp(prefix="spill-", dir=self._directory)
            self._buckets = [Path(prefix) / f"bucket-{i:03d}" for i in range(SPILL_BUCKETS)]
        by_bucket: dict[int, list[tuple[int, bytes]]] = {}
        for hkey, record in self._buffer:
            by_bucket.setdefault(hkey >> 120, []).append((hkey, record))  # the top 8 of 128 bits
        for bucket, entries in by_bucket.items():
            with open(self._buckets[bucket], "ab") as handle:
                for hkey, record in entries:
                    handle.write(_ENTRY_HEADER.pack(hkey.to_bytes(16, "big"), len(record)))
                    handle.write(record)
        self._buffer, self._buffered_bytes = [], 0

    def __iter__(self) -> Iterator[bytes]:
        """Yields every record in hash order (each spill bucket read, sorted and deleted in turn)."""
        if self._buckets is None:
            self._buffer.sort(key=lambda entry: entry[0])
            for _, record in self._buffer:
                yield record
            return
        self._spill()
        for path in self._buckets:
            if not path.exists():
                continue
            entries = list(_read_bucket(path))
            path.unlink()
            entries.sort(key=lambda entry: entry[0])
            for _, record in entries:
                yield record


def _read_bucket(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as handle:
        while header := handle.read(_ENTRY_HEADER.size):
            hkey, length = _ENTRY_HEADER.unpack(header)
            yield int.from_bytes(hkey, "big"), handle.read(length)


def _serialized(problem: ProblemSpec, features, chunk: RowChunk) -> Iterable[bytes]:
    """A chunk's records: column by column for scalars (`example_encoder`), else TFDS's serializer row by row."""
    if can_encode(problem):
        return serialize_chunk(problem, chunk.features, chunk.labels)
    keys = list(chunk.features)
    return (
        features.serialize_example({key: chunk.features[key][row] for key in keys} | {problem.label_key: label})
        for row, label in enumerate(chunk.labels)
    )


def write_dataset(
    data_dir: Path,
    problem: ProblemSpec,
    splits: dict[str, ChunkSource],
    *,
    description: str = "",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    shards: int | None = None,
) -> Path:
    """Writes every split as TFRecord shards plus TFDS metadata.

    Args:
        data_dir: The TFDS data dir; the dataset goes in `columns_dataset/1.0.0` under it.
        problem: The problem spec (the features and label to store).
        splits: {split: a function returning that split's row chunks}.
        description: Where the data came from (stored in dataset_info.json).
        memory_budget_bytes: Serialized examples held in memory per split before spilling.
        shards: Shard files per split (at most one per row); None: TFDS's rule.

    Returns:
        The dataset's version folder.

    Raises:
        OSError: if writing fails (a full disk, say); the caller discards the folder.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import naming
    from tensorflow_datasets.core.utils import shard_utils

    from pipeline.data.snapshot_builder import features_dict

    features = features_dict(problem)
    out = Path(data_dir) / DATASET_NAME / DATASET_VERSION
    out.mkdir(parents=True, exist_ok=True)
    template = naming.ShardedFileTemplate(
        data_dir=out, dataset_name=DATASET_NAME, filetype_suffix="tfrecord", split=None
    )
    split_infos = []
    for split, chunks in splits.items():
        records = HashOrderedRecords(out / ".spill", split, memory_budget_bytes)
        index = 0
        for chunk in chunks():
            for record in _serialized(problem, features, chunk):
                records.add(index, record)
                index += 1
        lengths = []
        if records.count:
            count = min(shards, records.count) if shards else None
            count = count or shard_utils.ShardConfig.calculate_number_shards(records.total_bytes, records.count)
            bounds = [0, *shard_utils.get_shard_boundaries(records.count, count)]
            lengths = [end - start for start, end in zip(bounds, bounds[1:], strict=False)]
        split_template = template.replace(split=split)
        ordered = iter(records)
        for shard, length in enumerate(lengths):
            path = split_template.sharded_filepath(shard_index=shard, num_shards=len(lengths))
            with tf.io.TFRecordWriter(str(path)) as writer:
                for record in _take(ordered, length):
                    writer.write(record)
        split_infos.append(
            tfds.core.SplitInfo(
                name=split, shard_lengths=lengths, num_bytes=records.total_bytes, filename_template=split_template
            )
        )
    shutil.rmtree(out / ".spill", ignore_errors=True)
    tfds.folder_dataset.write_metadata(
        data_dir=out,
        features=features,
        split_infos=split_infos,
        filename_template=template,
        check_data=False,
        description=description,
    )
    return out


def _take(records: Iterator[bytes], count: int) -> Iterator[bytes]:
    for _ in range(count):
        yield next(records)
