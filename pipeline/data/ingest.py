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
(`shard_writer`, in bounded memory). IDX sources stream their images from the files; the other
readers still hold a source in memory before it is chunked.

The snapshot folder is named by a content fingerprint, so ingesting unchanged data again
reuses the existing snapshot and changed data never overwrites an old one.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
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
    if source.stream is not None:
        streams = streamed_splits(source, problem)
    else:
        prepared = prepare_columns(source, problem)
        splits = divide(prepared, config.split_fractions, config.seed) if set(prepared) == {SINGLE_SPLIT} else prepared
        streams = {split: in_chunks(part) for split, part in splits.items()}
    digest, rows, dropped = fingerprint(problem, streams)
    for split, count in rows.items():
        if dropped[split]:
            log.warning("%s: %d rows of split %r have no label: left out", source.location, dropped[split], split)
        if count == 0:
            raise DataSourceError(f"{source.location}: split {split!r} has no rows with a label")
    return write_snapshot(config, source, problem, streams, digest, rows, dropped)


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
    """A seeded 64-bit hash of each row's content (features and label)."""
    key = seed.to_bytes(8, "little", signed=True)
    columns = [part.features[k] for k in sorted(part.features)] + [part.labels]
    digests = np.empty(len(part.labels), np.uint64)
    for row in range(len(part.labels)):
        hasher = hashlib.blake2b(key=key, digest_size=8)
        for values in columns:
            value = values[row]
            hasher.update(value.encode() + b"\x00" if isinstance(value, str) else np.asarray(value).tobytes())
        digests[row] = int.from_bytes(hasher.digest(), "little")
    return digests


def divide(prepared: dict[str, PreparedSplit], fractions: list[float], seed: int) -> dict[str, PreparedSplit]:
    """Divides a one-split source into train/validation/test (see the module doc).

    Args:
        prepared: {'data': the rows}.
        fractions: Shares of train, validation and test (summing to 1).
        seed: Seeds the row hash.

    Returns:
        {'train', 'validation', 'test'}, each in source order; the dropped-row count stays with 'train'.
    """
    (part,) = prepared.values()
    count = len(part.labels)
    order = np.argsort(_row_digests(part, seed), kind="stable")
    train_end = round(count * fractions[0])
    validation_end = train_end + round(count * fractions[1])
    bounds = {TRAIN: (0, train_end), VALIDATION: (train_end, validation_end), TEST: (validation_end, count)}
    divided = {}
    for split, (start, end) in bounds.items():
        rows = np.sort(order[start:end])
        divided[split] = PreparedSplit(
            {key: values[rows] for key, values in part.features.items()},
            part.labels[rows],
            part.dropped_missing_label if split == TRAIN else 0,
        )
    return divided


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
