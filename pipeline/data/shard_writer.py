"""Writes a snapshot's splits as a prepared TFDS dataset in bounded memory.

TFDS's own `GeneratorBasedBuilder` holds up to 1 GB of serialized examples in memory before it
spills. Here the records of a split go to spill files on disk, sorted into buckets, as they are
made (`SpilledRecords`, at most `memory_budget_bytes` held in memory), as TFDS's shuffler does
when it spills; a split can be written in parts by different processes (ingest's mapped parts),
each keying its records by their index in the whole split, and the parts are then merged
bucket by bucket into shards (`write_merged`). The snapshot is the same however many parts.

What it writes is what TFDS writes: the same features (`snapshot_builder.features_dict`;
rows are serialized column by column by `example_encoder`, to the same protos, and images to
the PNG bytes TFDS's TensorFlow op writes, by `png`), the
same example order (rows ordered by TFDS's salted MD5 hash of their index, the split's name
being the salt), shards counted by TFDS's own rule (`ShardConfig.calculate_number_shards`:
64 MiB to 1 GiB each) and named by its file template, and the metadata
(`dataset_info.json`, `features.json`) written by `tfds.folder_dataset.write_metadata`, so
`tfds.builder_from_directory` reads it like any prepared dataset.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.core.problem import ProblemSpec
from pipeline.data.byte_columns import Ragged, take
from pipeline.data.example_encoder import serialize_rows
from pipeline.data.key_hashing import hash_keys
from pipeline.data.tfrecord import frames

log = logging.getLogger(__name__)

DATASET_NAME = "columns_dataset"
DATASET_VERSION = "1.0.0"
DEFAULT_MEMORY_BUDGET_BYTES = 32 << 20
SPILL_BUCKETS = 256
FRAME_RECORDS = 4096  # records framed at once when the shards are written
_BLOCK_HEADER = struct.Struct("<Q")  # records in a bucket's block of a spill file


class RowChunk(Protocol):
    """Consecutive rows of one split brought to the problem spec (`problem_inference.PreparedSplit`)."""

    features: dict[str, np.ndarray]  # text as `str` objects, images uint8 [N, H, W, C]
    labels: np.ndarray  # class ids (int64) or values (float32)


ChunkSource = Callable[[], Iterable[RowChunk]]


class SpilledRecords:
    """Records of one split keyed by TFDS's hash of their index, in `SPILL_BUCKETS` buckets on disk.

    What TFDS's shuffler does, split so that parts written apart (by different processes) can
    be merged: each record goes to the bucket of the top 8 bits of its 128-bit hash key;
    `merged_records` reads bucket i of every part, sorts it and moves on. Up to
    `memory_budget_bytes` of records are held in memory, then written as one spill file: a
    block per bucket (the block's record count, its hash keys, its record lengths and the
    records), then where each bucket's block starts and ends (`SPILL_BUCKETS + 1` int64).

    The records held are copied into one buffer as they come, and written out a bucket at a
    time, so memory holds the budget (or the largest chunk, if larger) and one bucket's copy.

    Args:
        directory: The spill files' folder (created on the first write).
        salt: The hash salt (TFDS uses the split's name).
        memory_budget_bytes: Serialized bytes held in memory before they are written out.
        key_byte: Which byte of the hash key picks the bucket (the first; the merge spills a
            bucket too big for memory again by the next one).
    """

    def __init__(self, directory: Path, salt: str, memory_budget_bytes: int, key_byte: int = 0):
        self._salt = salt
        self._key_byte = key_byte
        self.directory = Path(directory)
        self._budget = memory_budget_bytes
        self._keys: list[np.ndarray] = []  # [n, 16] uint8 per block added
        self._buffer = np.zeros(0, np.uint8)  # the held records' bytes from the start, end to end
        self._held_bytes = 0
        self._lengths: list[np.ndarray] = []
        self._spills = 0
        self.count = 0
        self.total_bytes = 0

    def add(self, key: int, record: bytes) -> None:
        """Adds one serialized example under its key (the example's index in its split, unique)."""
        self.add_many(key, Ragged.of([record]))

    def add_many(self, first_key: int, records: Ragged) -> None:
        """Adds serialized examples under consecutive keys, from `first_key` on."""
        self.add_hashed(hash_keys(self._salt, np.arange(first_key, first_key + len(records.lengths))), records)

    def add_hashed(self, hashed_keys: np.ndarray, records: Ragged) -> None:
        """Adds serialized examples whose keys are hashed already ([n, 16] uint8, `hash_keys`)."""
        size = len(records.data)
        if self._held_bytes + size > len(self._buffer):
            self._spill()
            if size > len(self._buffer):  # allocated on first use: pages are taken as they are written
                self._buffer = np.empty(max(self._budget, size), np.uint8)
        self._buffer[self._held_bytes : self._held_bytes + size] = records.data
        self._held_bytes += size
        self._lengths.append(records.lengths)
        self._keys.append(hashed_keys)
        self.count += len(records.lengths)
        self.total_bytes += size

    def close(self) -> dict[str, int]:
        """Writes what is held to a spill file; returns {'rows', 'bytes'} written in all."""
        self._spill()
        self._buffer = np.zeros(0, np.uint8)
        return {"rows": self.count, "bytes": self.total_bytes}

    def _spill(self) -> None:
        """Writes the held records as one spill file: each bucket's block in turn, then their offsets."""
        if not self._lengths:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        keys = np.concatenate(self._keys)
        held = Ragged(self._buffer[: self._held_bytes], np.concatenate(self._lengths)).to_arrow()
        order = np.argsort(keys[:, self._key_byte], kind="stable")  # by bucket: 8 of the 128 bits
        bounds = np.searchsorted(keys[order, self._key_byte], np.arange(SPILL_BUCKETS + 1))
        offsets = np.zeros(SPILL_BUCKETS + 1, "<i8")
        path = self.directory / f"{_SPILL_PREFIX}{self._spills:05d}"
        with open(path, "wb") as handle:
            for bucket in range(SPILL_BUCKETS):
                rows = order[bounds[bucket] : bounds[bucket + 1]]
                if len(rows):
                    records = take(held, rows)
                    handle.write(_BLOCK_HEADER.pack(len(rows)))
                    handle.write(keys[rows].tobytes())
                    handle.write(records.lengths.astype("<i8").tobytes())
                    handle.write(records.data.tobytes())
                offsets[bucket + 1] = handle.tell()
            handle.write(offsets.tobytes())
        self._spills += 1
        self._keys, self._lengths, self._held_bytes = [], [], 0


_SPILL_PREFIX = "spill-"


class _SpillFile:
    """One spill file of a `SpilledRecords` folder, read a bucket at a time."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as handle:
            handle.seek(-8 * (SPILL_BUCKETS + 1), 2)
            self._offsets = np.frombuffer(handle.read(), "<i8").tolist()

    def bucket_bytes(self, bucket: int) -> int:
        """The size of the bucket's block in the file (its keys, lengths and records)."""
        return self._offsets[bucket + 1] - self._offsets[bucket]

    def bucket(self, bucket: int) -> tuple[np.ndarray, Ragged] | None:
        """The bucket's hash keys ([n, 16] uint8) and records, or None if it has none here."""
        start, end = self._offsets[bucket], self._offsets[bucket + 1]
        if start == end:
            return None
        raw = np.fromfile(self.path, np.uint8, end - start, offset=start)
        (count,) = _BLOCK_HEADER.unpack(raw[: _BLOCK_HEADER.size].tobytes())
        at = _BLOCK_HEADER.size
        keys = raw[at : at + 16 * count].reshape(count, 16)
        at += 16 * count
        lengths = raw[at : at + 8 * count].view("<i8").astype(np.int64)
        return keys, Ragged(raw[at + 8 * count :], lengths)


def _merged_buckets(
    directories: Iterable[Path], memory_budget_bytes: int, scratch: Path, key_byte: int = 0
) -> Iterator[Ragged]:
    """Each bucket's records of every folder, sorted by hash key: together, TFDS's example order.

    A bucket is sorted in memory when its blocks take at most half the budget (it is held about
    twice, read and sorted); a bigger one (a split of more than 128 budgets) is spilled again
    under `scratch`, bucketed by the next byte of the keys, and merged likewise.
    """
    spills = [_SpillFile(path) for folder in directories for path in sorted(Path(folder).glob(f"{_SPILL_PREFIX}*"))]
    for bucket in range(SPILL_BUCKETS):
        size = sum(spill.bucket_bytes(bucket) for spill in spills)
        if not size:
            continue
        if 2 * size > memory_budget_bytes and key_byte + 1 < 16:
            yield from _merged_big_bucket(spills, bucket, size, memory_budget_bytes, scratch, key_byte)
            continue
        read = [found for spill in spills if (found := spill.bucket(bucket)) is not None]
        keys = np.concatenate([found[0] for found in read])
        records = Ragged.concat([found[1] for found in read])
        del read  # the blocks as read: held with the concatenation and the sorted copy, the bucket three times
        high, low = np.ascontiguousarray(keys).view(">u8").T
        yield take(records, np.lexsort((low, high)))


def _merged_big_bucket(
    spills: list[_SpillFile], bucket: int, size: int, memory_budget_bytes: int, scratch: Path, key_byte: int
) -> Iterator[Ragged]:
    """One bucket too big to sort in memory: spilled again by the next key byte, then merged."""
    log.info("merge: bucket %d of key byte %d holds %d bytes: spilling it by the next byte", bucket, key_byte, size)
    folder = Path(tempfile.mkdtemp(prefix=f"bucket-{key_byte}-{bucket}-", dir=scratch))
    try:
        again = SpilledRecords(folder, "", memory_budget_bytes, key_byte=key_byte + 1)
        for spill in spills:
            if (found := spill.bucket(bucket)) is not None:
                again.add_hashed(*found)
        again.close()
        yield from _merged_buckets([folder], memory_budget_bytes, scratch, key_byte + 1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def merged_records(directories: Iterable[Path], memory_budget_bytes: int = 1 << 30) -> Iterator[bytes]:
    """Every record the `SpilledRecords` of these folders hold, in hash-key order (TFDS's example order)."""
    directories = list(directories)
    with tempfile.TemporaryDirectory(prefix=".merge-", dir=directories[0].parent) as scratch:
        for records in _merged_buckets(directories, memory_budget_bytes, Path(scratch)):
            yield from records.to_list()


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
    spill = Path(data_dir) / ".spill"
    parts = {}
    for split, chunks in splits.items():
        records = SpilledRecords(spill / split, split, memory_budget_bytes)
        for chunk in chunks():
            records.add_many(records.count, serialize_rows(problem, chunk.features, chunk.labels))
        parts[split] = SplitParts([records.directory], **records.close())
    out = write_merged(
        data_dir, problem, parts, description=description, shards=shards, memory_budget_bytes=memory_budget_bytes
    )
    shutil.rmtree(spill, ignore_errors=True)
    return out


@dataclasses.dataclass(frozen=True)
class SplitParts:
    """Where one split's records are (a `SpilledRecords` folder per part) and how many in all."""

    folders: list[Path]
    rows: int
    bytes: int


def write_merged(
    data_dir: Path,
    problem: ProblemSpec,
    splits: dict[str, SplitParts],
    *,
    description: str,
    shards: int | None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> Path:
    """Merges each split's parts into TFRecord shards in TFDS's example order, plus TFDS metadata.

    Args:
        data_dir: The TFDS data dir; the dataset goes in `columns_dataset/1.0.0` under it.
        problem: The problem spec (the features and label stored).
        splits: {split: its parts}.
        description: Where the data came from (stored in dataset_info.json).
        shards: Shard files per split (at most one per row); None: TFDS's rule (64 MiB to 1 GiB each).
        memory_budget_bytes: What the merge may hold; a bucket bigger than half of it is spilled
            again (under `data_dir`, removed afterwards) and merged a part at a time.

    Returns:
        The dataset's version folder.

    Raises:
        OSError: if writing fails (a full disk, say); the caller discards the folder.
    """
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
        paths = [split_template.sharded_filepath(shard_index=n, num_shards=len(lengths)) for n in range(len(lengths))]
        with tempfile.TemporaryDirectory(prefix=".merge-", dir=data_dir) as scratch:
            _write_shards(_merged_buckets(parts.folders, memory_budget_bytes, Path(scratch)), paths, lengths)
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


def _write_shards(ordered: Iterator[Ragged], paths: list[Path], lengths: list[int]) -> None:
    """Writes the records, in order, as TFRecord files of the given lengths, `FRAME_RECORDS` at a time.

    Framing copies the records about three times, so a whole bucket (about 9 MB for 10 million
    rows) is framed a slice at a time.
    """
    pending = Ragged.empty()
    for path, length in zip(paths, lengths, strict=True):
        with open(path, "wb") as out:
            while length:
                if not len(pending.lengths):
                    pending = next(ordered)
                now = min(length, len(pending.lengths), FRAME_RECORDS)
                written, pending = pending.rows(0, now), pending.rows(now, len(pending.lengths))
                out.write(frames(written))
                length -= now
