"""Writes a snapshot's splits as a prepared TFDS dataset in bounded memory.

TFDS's own `GeneratorBasedBuilder` holds up to 1 GB of serialized examples in memory before it
spills. Here the records of a split go to bucket files on disk as they are made
(`SpilledRecords`, at most `memory_budget_bytes` held in memory), as TFDS's shuffler does when
it spills; a split can be written in parts by different processes (ingest's mapped parts),
each keying its records by their index in the whole split, and the parts are then merged
bucket by bucket into shards (`write_merged`). The snapshot is the same however many parts.

What it writes is what TFDS writes: the same features (`snapshot_builder.features_dict`;
rows of scalars are serialized column by column by `example_encoder`, to the same protos), the
same example order (rows ordered by TFDS's salted MD5 hash of their index, the split's name
being the salt), shards counted by TFDS's own rule (`ShardConfig.calculate_number_shards`:
64 MiB to 1 GiB each) and named by its file template, and the metadata
(`dataset_info.json`, `features.json`) written by `tfds.folder_dataset.write_metadata`, so
`tfds.builder_from_directory` reads it like any prepared dataset.
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
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


class SpilledRecords:
    """Records of one split keyed by TFDS's hash of their index, in `SPILL_BUCKETS` files on disk.

    What TFDS's shuffler does, split so that parts written apart (by different processes) can
    be merged: each record goes to the bucket file of the top 8 bits of its 128-bit hash key;
    `merged_records` reads bucket i of every part, sorts it and moves on. Up to
    `memory_budget_bytes` of records are held in memory between writes to the files.

    Args:
        directory: The bucket files' folder (created on the first write).
        salt: The hash salt (TFDS uses the split's name).
        memory_budget_bytes: Serialized bytes held in memory before they are written out.
    """

    def __init__(self, directory: Path, salt: str, memory_budget_bytes: int):
        from tensorflow_datasets.core import hashing

        self._hasher = hashing.Hasher(salt)
        self.directory = Path(directory)
        self._budget = memory_budget_bytes
        self._buffer: list[tuple[int, bytes]] = []
        self._buffered_bytes = 0
        self.count = 0
        self.total_bytes = 0

    def add(self, key: int, record: bytes) -> None:
        """Adds one serialized example under its key (the example's index in its split, unique)."""
        self._buffer.append((self._hasher.hash_key(key), record))
        self._buffered_bytes += len(record)
        self.count += 1
        self.total_bytes += len(record)
        if self._buffered_bytes > self._budget:
            self._spill()

    def close(self) -> dict[str, int]:
        """Writes what is held to the bucket files; returns {'rows', 'bytes'} written in all."""
        self._spill()
        return {"rows": self.count, "bytes": self.total_bytes}

    def _spill(self) -> None:
        if not self._buffer:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        by_bucket: dict[int, list[tuple[int, bytes]]] = {}
        for hkey, record in self._buffer:
            by_bucket.setdefault(hkey >> 120, []).append((hkey, record))  # the top 8 of 128 bits
        for bucket, entries in by_bucket.items():
            with open(self.directory / _bucket_name(bucket), "ab") as handle:
                for hkey, record in entries:
                    handle.write(_ENTRY_HEADER.pack(hkey.to_bytes(16, "big"), len(record)))
                    handle.write(record)
        self._buffer, self._buffered_bytes = [], 0


def _bucket_name(bucket: int) -> str:
    return f"bucket-{bucket:03d}"


def _read_bucket(path: Path) -> Iterator[tuple[int, bytes]]:
    if not path.exists():
        return
    with open(path, "rb") as handle:
        while header := handle.read(_ENTRY_HEADER.size):
            hkey, length = _ENTRY_HEADER.unpack(header)
            yield int.from_bytes(hkey, "big"), handle.read(length)


def merged_records(directories: Iterable[Path]) -> Iterator[bytes]:
    """Every record the `SpilledRecords` of these folders hold, in hash-key order (TFDS's example order)."""
    directories = list(directories)
    for bucket in range(SPILL_BUCKETS):
        entries = [entry for folder in directories for entry in _read_bucket(folder / _bucket_name(bucket))]
        entries.sort(key=lambda entry: entry[0])
        for _, record in entries:
            yield record


def serialized_records(problem: ProblemSpec, features, chunk: RowChunk) -> Iterable[bytes]:
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
    """Writes every split as TFRecord shards plus TFDS metadata, in one process.

    Ingest writes its parts apart (`SpilledRecords`) and merges them (`write_merged`); this is
    the same with one part per split.

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
    from pipeline.data.snapshot_builder import features_dict

    features = features_dict(problem)
    spill = Path(data_dir) / ".spill"
    parts = {}
    for split, chunks in splits.items():
        records = SpilledRecords(spill / split, split, memory_budget_bytes)
        for chunk in chunks():
            for record in serialized_records(problem, features, chunk):
                records.add(records.count, record)
        parts[split] = SplitParts([records.directory], **records.close())
    out = write_merged(data_dir, problem, parts, description=description, shards=shards)
    shutil.rmtree(spill, ignore_errors=True)
    return out


@dataclasses.dataclass(frozen=True)
class SplitParts:
    """Where one split's records are (a `SpilledRecords` folder per part) and how many in all."""

    folders: list[Path]
    rows: int
    bytes: int


def write_merged(
    data_dir: Path, problem: ProblemSpec, splits: dict[str, SplitParts], *, description: str, shards: int | None
) -> Path:
    """Merges each split's parts into TFRecord shards in TFDS's example order, plus TFDS metadata.

    Args:
        data_dir: The TFDS data dir; the dataset goes in `columns_dataset/1.0.0` under it.
        problem: The problem spec (the features and label stored).
        splits: {split: its parts}.
        description: Where the data came from (stored in dataset_info.json).
        shards: Shard files per split (at most one per row); None: TFDS's rule (64 MiB to 1 GiB each).

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

    out = Path(data_dir) / DATASET_NAME / DATASET_VERSION
    out.mkdir(parents=True, exist_ok=True)
    template = naming.ShardedFileTemplate(
        data_dir=out, dataset_name=DATASET_NAME, filetype_suffix="tfrecord", split=None
    )
    split_infos = []
    for split, parts in splits.items():
        lengths = []
        if parts.rows:
            count = min(shards, parts.rows) if shards else None
            count = count or shard_utils.ShardConfig.calculate_number_shards(parts.bytes, parts.rows)
            bounds = [0, *shard_utils.get_shard_boundaries(parts.rows, count)]
            lengths = [end - start for start, end in zip(bounds, bounds[1:], strict=False)]
        split_template = template.replace(split=split)
        ordered = merged_records(parts.folders)
        for shard, length in enumerate(lengths):
            path = split_template.sharded_filepath(shard_index=shard, num_shards=len(lengths))
            with tf.io.TFRecordWriter(str(path)) as writer:
                for record in _take(ordered, length):
                    writer.write(record)
        split_infos.append(
            tfds.core.SplitInfo(
                name=split, shard_lengths=lengths, num_bytes=parts.bytes, filename_template=split_template
            )
        )
    tfds.folder_dataset.write_metadata(
        data_dir=out,
        features=features_dict(problem),
        split_infos=split_infos,
        filename_template=template,
        check_data=False,
        description=description,
    )
    return out


def _take(records: Iterator[bytes], count: int) -> Iterator[bytes]:
    for _ in range(count):
        yield next(records)
