"""Stage 1, ingest: turn a data source into an immutable TFDS-format snapshot with its problem spec.

Sources (`data_source`):
    csv:<file or glob>      tables read with pyarrow (`pipeline.data.tables`)
    parquet:<file or glob>
    images:<dir>            <dir>/<class>/*.png|jpg or <dir>/<split>/<class>/* (`image_folder`)
    tfds:<name>             any prepared TFDS dataset (`tfds_source`); downloads only with `allow_download`
    idx:<dir>               MNIST-format IDX files (`idx`)

The problem spec (features, label, task) is inferred and the config's overrides applied
(`problem_inference`). Rows without a label are dropped and counted. A source with one split
is divided into train/validation/test by `split_fractions`: rows are ordered by a seeded hash
of their content and cut at those shares, so the split is deterministic, identical rows land
in the same split, and rows added later leave most earlier rows where they were.

The rows travel in chunks of `CHUNK_ROWS`: a first pass hashes the fingerprint column by
column, and only if no snapshot of that fingerprint exists does a second pass write the shards
(`shard_writer`, in bounded memory). Every reader streams: tables a record batch at a time,
image folders and IDX files a chunk of images at a time, `tfds:` a batch at a time; what they
hold whole is at most a label (or a file name) per row. Problem inference reads column
summaries gathered in one pass (`column_summary`). Dividing a one-split source keeps 8 bytes
a row, on disk (`divide`).

The snapshot folder is named by a content fingerprint, so ingesting unchanged data again
reuses the existing snapshot and changed data never overwrites an old one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import atomic_write_json, fsync_tree, staging_dir, utc_now
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import DataSourceError
from pipeline.core.problem import ProblemSpec
from pipeline.data import idx
from pipeline.data.problem_inference import PreparedSplit, infer_problem, prepare_columns
from pipeline.data.shard_writer import ChunkSource
from pipeline.data.snapshot import SNAPSHOT_FILE, SNAPSHOT_FORMAT, TEST, TRAIN, VALIDATION, Snapshot
from pipeline.data.source_data import SourceData

log = logging.getLogger(__name__)

LABEL_COLUMN = "label"
SINGLE_SPLIT = "data"
CHUNK_ROWS = 4096
DIGEST_BUCKET_BITS = 16
DIGEST_READ_ROWS = 1 << 20


def ingest(config: PipelineConfig) -> Snapshot:
    """Runs the ingest stage.

    Args:
        config: The pipeline config; `data_source` says what to read, `label`, `task`,
            `feature_types`, `exclude_columns`, `class_names` shape the problem spec.

    Returns:
        The (new or already existing) snapshot of the source's current content.

    Raises:
        DataSourceError: if the source is missing, empty, corrupt, malformed or unknown, or
            its label cannot be learnt; the message names the file, column or feature.
    """
    source = read_source(config)
    problem = infer_problem(source, config)
    splits = prepared_splits(source, problem)
    with _scratch(config) as scratch:
        if set(splits) == {SINGLE_SPLIT}:
            splits = divide(splits[SINGLE_SPLIT], config.split_fractions, config.seed, scratch)
        digest, rows, dropped = fingerprint(problem, splits)
        for split, count in rows.items():
            if dropped[split]:
                log.warning("%s: %d rows of split %r have no label: left out", source.location, dropped[split], split)
            if count == 0:
                raise DataSourceError(f"{source.location}: split {split!r} has no rows with a label")
        return write_snapshot(config, source, problem, splits, digest, rows, dropped)


@contextlib.contextmanager
def _scratch(config: PipelineConfig) -> Iterator[Path]:
    """A private folder beside the snapshots for ingest's passes, removed afterwards."""
    with staging_dir(_snapshot_root(config), "ingest") as folder:
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def prepared_splits(source: SourceData, problem: ProblemSpec) -> dict[str, ChunkSource]:
    """Each split of the source brought to the problem spec, as chunks."""
    if source.stream is not None:
        return streamed_splits(source, problem)
    return {split: in_chunks(part) for split, part in prepare_columns(source, problem).items()}


def in_chunks(part: PreparedSplit, rows: int = CHUNK_ROWS) -> ChunkSource:
    """A split held in memory, read as chunks of `rows` rows (the dropped-row count with the first)."""

    def chunks() -> Iterator[PreparedSplit]:
        total = len(part.labels)
        for start in range(0, max(total, 1), rows):
            end = min(start + rows, total)
            yield PreparedSplit(
                {key: values[start:end] for key, values in part.features.items()},
                part.labels[start:end],
                part.dropped_missing_label if start == 0 else 0,
            )

    return chunks


def streamed_splits(source: SourceData, problem: ProblemSpec) -> dict[str, ChunkSource]:
    """Each split of a streamed source as chunks brought to the problem spec."""

    def split_chunks(split: str) -> ChunkSource:
        def chunks() -> Iterator[PreparedSplit]:
            for columns in source.stream(split):
                one = dataclasses.replace(source, splits={split: columns}, stream=None)
                yield prepare_columns(one, problem)[split]

        return chunks

    return {split: split_chunks(split) for split in sorted(source.splits)}


def read_source(config: PipelineConfig) -> SourceData:
    """Reads the configured source into columns (`SourceData`)."""
    kind, _, location = config.data_source.partition(":")
    exclude = list(config.exclude_columns or ())
    if kind in ("csv", "parquet"):
        from pipeline.data.tables import read_table_source

        return read_table_source(kind, location, exclude)
    if kind == "images":
        from pipeline.data.image_folder import read_image_folder

        return _without(read_image_folder(location, config.image_mode, config.image_size), exclude)
    if kind == "tfds":
        from pipeline.data.tfds_source import read_tfds_source

        return read_tfds_source(config, location)
    return _without(read_idx_source(Path(location), config.class_names), exclude)


def _without(source: SourceData, exclude: list[str]) -> SourceData:
    unknown = sorted(set(exclude) - set(source.columns))
    if unknown:
        raise DataSourceError(f"exclude_columns names columns that {source.location} does not have: {unknown}")
    if exclude:
        source.columns = [c for c in source.columns if c not in exclude]
        for columns in source.splits.values():
            for name in exclude:
                columns.pop(name, None)
    return source


def read_idx_source(folder: Path, configured_names: list[str] | None) -> SourceData:
    """An IDX folder as an 'images' column (uint8 [N,H,W,1]) and a 'label' column of class ids, streamed.

    The labels (a byte per image) are read whole; the images are read `CHUNK_ROWS` at a time
    whenever the split is streamed. For inference, `splits` holds every label and, in place of
    the images, a read-only view repeating the first image (inference needs only their shape).

    Raises:
        DataSourceError: for broken files, splits of different image shapes, or labels outside the classes.
    """
    from pipeline.core.problem import IMAGE_KEY

    split_files = {files.split: files for files in idx.find_split_files(folder)}
    headers = {split: idx.check_split(files) for split, files in split_files.items()}
    labels = {split: idx.read_idx(files.labels, idx.LABELS_MAGIC) for split, files in split_files.items()}
    class_names = idx.resolve_class_names(folder, list(labels.values()), configured_names)
    shapes = {shape for _, shape in headers.values()}
    if len(shapes) != 1:
        raise DataSourceError(f"{folder}: splits have different image shapes {sorted(shapes)}")
    (image_shape,) = shapes
    for split, values in labels.items():
        if values.size and int(values.max()) >= len(class_names):
            bad = int(np.argmax(values >= len(class_names)))
            raise DataSourceError(
                f"{split_files[split].labels}: label {int(values[bad])} at index {bad} is outside the class "
                f"range 0..{len(class_names) - 1} ({len(class_names)} class names)"
            )
    first_images = {split: next(idx.iter_images(files.images, 1)) for split, files in split_files.items()}

    def stream(split: str) -> Iterator[dict[str, np.ndarray]]:
        start = 0
        for images in idx.iter_images(split_files[split].images, CHUNK_ROWS):
            end = start + len(images)
            yield {IMAGE_KEY: images[..., np.newaxis], LABEL_COLUMN: labels[split][start:end].astype(np.int64)}
            start = end

    return SourceData(
        name=folder.name or "idx",
        splits={
            split: {
                IMAGE_KEY: np.broadcast_to(first_images[split][..., np.newaxis], (len(values), *image_shape, 1)),
                LABEL_COLUMN: values.astype(np.int64),
            }
            for split, values in labels.items()
        },
        columns=[IMAGE_KEY, LABEL_COLUMN],
        class_names={LABEL_COLUMN: class_names},
        label_hint=LABEL_COLUMN,
        location=f"idx:{folder}",
        stream=stream,
    )


def _row_digests(part: PreparedSplit, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each row's content: its features (in key order) and label, as bytes.

    Numbers hash as their native bytes, text as UTF-8 and a NUL. A row's bytes are joined and
    hashed once (the same digest as feeding them one by one).
    """
    key = seed.to_bytes(8, "little", signed=True)
    count = len(part.labels)
    columns = [_row_bytes(part.features[k], count) for k in sorted(part.features)]
    columns.append(_row_bytes(part.labels, count))
    blake2b = hashlib.blake2b
    return np.fromiter(
        (
            int.from_bytes(blake2b(b"".join(row), key=key, digest_size=8).digest(), "little")
            for row in zip(*columns, strict=True)
        ),
        np.uint64,
        count,
    )


def _row_bytes(values: np.ndarray, count: int) -> list[bytes]:
    """Each row's value as the bytes the row hash takes."""
    if values.dtype == object:
        return [value.encode() + b"\x00" for value in values]
    flat = np.ascontiguousarray(values).tobytes()
    width = len(flat) // count if count else 0
    return [flat[start : start + width] for start in range(0, len(flat), width)] if width else []


def divide(rows: ChunkSource, fractions: list[float], seed: int, scratch: Path) -> dict[str, ChunkSource]:
    """Divides a one-split source into train/validation/test (see the module doc), in bounded memory.

    Rows are ranked by (seeded content hash, position), and the ranks are cut at the shares.
    A first pass writes each row's hash to a file in `scratch` (8 bytes a row) and counts them
    by their top 16 bits; the row at each cut is then found among the rows of one bucket. Each
    split is then the rows whose (hash, position) falls between its cuts, read in source order.

    Args:
        rows: The source's one split, as chunks.
        fractions: Shares of train, validation and test (summing to 1).
        seed: Seeds the row hash.
        scratch: A private folder that outlives the returned chunk sources' use.

    Returns:
        {'train', 'validation', 'test'}, each in source order; the dropped-row count stays with 'train'.
    """
    digest_file = scratch / "row-digests.u64"
    buckets = np.zeros(1 << DIGEST_BUCKET_BITS, np.int64)
    count = 0
    with open(digest_file, "wb") as out:
        for chunk in rows():
            digests = _row_digests(chunk, seed)
            digests.tofile(out)
            top_bits = (digests >> np.uint64(64 - DIGEST_BUCKET_BITS)).astype(np.int64)
            buckets += np.bincount(top_bits, minlength=len(buckets))
            count += len(digests)
    train_end = round(count * fractions[0])
    validation_end = train_end + round(count * fractions[1])
    cuts = [_row_at_rank(digest_file, buckets, rank) for rank in (train_end, validation_end)]

    def split_chunks(which: int) -> ChunkSource:
        def chunks() -> Iterator[PreparedSplit]:
            start = 0
            for chunk in rows():
                size = len(chunk.labels)
                digests = np.fromfile(digest_file, np.uint64, count=size, offset=start * 8)
                keep = np.flatnonzero(_split_of(digests, np.arange(start, start + size), cuts) == which)
                start += size
                yield PreparedSplit(
                    {key: values[keep] for key, values in chunk.features.items()},
                    chunk.labels[keep],
                    chunk.dropped_missing_label if which == 0 else 0,
                )

        return chunks

    return {TRAIN: split_chunks(0), VALIDATION: split_chunks(1), TEST: split_chunks(2)}


def _row_at_rank(digest_file: Path, buckets: np.ndarray, rank: int) -> tuple[int, int] | None:
    """(hash, position) of the row at `rank` in (hash, position) order; None past the last row."""
    ends = np.cumsum(buckets)
    if rank >= ends[-1]:
        return None
    bucket = int(np.searchsorted(ends, rank, side="right"))
    below = int(ends[bucket] - buckets[bucket])
    shift = np.uint64(64 - DIGEST_BUCKET_BITS)
    found_digests, found_rows = [], []
    start = 0
    with open(digest_file, "rb") as digests_in:
        while len(digests := np.fromfile(digests_in, np.uint64, count=DIGEST_READ_ROWS)):
            (inside,) = np.nonzero((digests >> shift) == bucket)
            found_digests.append(digests[inside])
            found_rows.append(inside + start)
            start += len(digests)
    digests, positions = np.concatenate(found_digests), np.concatenate(found_rows)
    order = np.lexsort((positions, digests))
    at = order[rank - below]
    return int(digests[at]), int(positions[at])


def _split_of(digests: np.ndarray, positions: np.ndarray, cuts: list[tuple[int, int] | None]) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) for each row: how many cuts its (hash, position) reaches."""
    split = np.zeros(len(digests), np.int8)
    for cut in cuts:
        if cut is None:
            continue
        digest, position = np.uint64(cut[0]), cut[1]
        reached = (digests > digest) | ((digests == digest) & (positions >= position))
        split += reached.astype(np.int8)
    return split


def _hash_values(hasher, values: np.ndarray) -> None:
    if values.dtype == object:
        for value in values:
            encoded = value.encode("utf-8")
            hasher.update(len(encoded).to_bytes(8, "little") + encoded)
    else:
        hasher.update(np.ascontiguousarray(values).tobytes())


def fingerprint(problem: ProblemSpec, splits: dict[str, ChunkSource]) -> tuple[str, dict[str, int], dict[str, int]]:
    """Reads every split once and hashes it: SHA-256 of the snapshot format, the problem spec and the rows.

    Each column of a split is hashed on its own as its chunks go by, so the digest does not
    depend on how a split is cut into chunks.

    Returns:
        (the hex digest, rows per split, rows dropped for lack of a label per split).
    """
    hasher = hashlib.sha256(f"snapshot-format={SNAPSHOT_FORMAT};".encode())
    hasher.update(json.dumps(problem.to_dict(), sort_keys=True).encode())
    keys = sorted(f.key for f in problem.features)
    rows, dropped = {}, {}
    for split in sorted(splits):
        columns = {key: hashlib.sha256() for key in [*keys, problem.label_key]}
        rows[split] = dropped[split] = 0
        for chunk in splits[split]():
            rows[split] += len(chunk.labels)
            dropped[split] += chunk.dropped_missing_label
            for key in keys:
                _hash_values(columns[key], chunk.features[key])
            _hash_values(columns[problem.label_key], chunk.labels)
        hasher.update(f"split={split};rows={rows[split]};dropped={dropped[split]};".encode())
        for key, column in columns.items():
            hasher.update(f"{key}:{column.hexdigest()};".encode())
    return hasher.hexdigest(), rows, dropped


def _snapshot_root(config: PipelineConfig) -> Path:
    return config.workdir_path / "snapshots"


def _existing(final: Path) -> Snapshot | None:
    if (final / SNAPSHOT_FILE).is_file():
        log.info("snapshot %s already exists: reusing it", final)
        return Snapshot.load(final)
    return None


def _publish(staging: Path, final: Path, snapshot: Snapshot) -> Snapshot:
    """Writes snapshot.json last, then renames the staging folder into place."""
    atomic_write_json(staging / SNAPSHOT_FILE, snapshot.to_dict())
    fsync_tree(staging)
    try:
        os.rename(staging, final)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST) and (final / SNAPSHOT_FILE).is_file():
            log.info("snapshot %s was published concurrently: reusing it", final)
            return Snapshot.load(final)
        raise
    log.info("published snapshot %s", final)
    return Snapshot.load(final)


def write_snapshot(
    config: PipelineConfig,
    source: SourceData,
    problem: ProblemSpec,
    splits: dict[str, ChunkSource],
    digest: str,
    rows: dict[str, int],
    dropped: dict[str, int],
) -> Snapshot:
    """Publishes the splits as a TFDS-format snapshot named by their fingerprint (or reuses it)."""
    from pipeline.data.shard_writer import write_dataset

    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name) or "data"
    final = _snapshot_root(config) / f"{safe_name}-{digest[:12]}"
    if found := _existing(final):
        return found
    with staging_dir(_snapshot_root(config), safe_name) as staging:
        log.info("writing the snapshot of %s", source.location)
        try:
            dataset_dir = write_dataset(
                staging / "tfds",
                problem,
                splits,
                description=f"{source.location}: {problem.task} of {problem.label!r}",
                memory_budget_bytes=config.ingest_memory_budget_mb << 20,
                shards=config.snapshot_shards,
            )
        except OSError as err:
            raise DataSourceError(f"writing the snapshot under {staging.parent} failed: {err.strerror or err}") from err
        snapshot = Snapshot(
            path=final,
            name=source.name if source.location.startswith("tfds:") else safe_name,
            source=config.data_source,
            fingerprint=digest,
            splits=dict(sorted(rows.items())),
            problem=problem,
            dropped_rows=dict(sorted(dropped.items())),
            tfds_dir=str(dataset_dir.relative_to(staging)),
            created_at=utc_now(),
        )
        return _publish(staging, final, snapshot)
