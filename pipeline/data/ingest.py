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

The snapshot folder is named by a content fingerprint, so ingesting unchanged data again
reuses the existing snapshot and changed data never overwrites an old one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import atomic_write_json, fsync_tree, staging_dir, utc_now
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import DataSourceError
from pipeline.core.problem import ProblemSpec
from pipeline.data import idx
from pipeline.data.problem_inference import PreparedSplit, infer_problem, prepare_columns
from pipeline.data.snapshot import SNAPSHOT_FILE, SNAPSHOT_FORMAT, TEST, TRAIN, VALIDATION, Snapshot
from pipeline.data.source_data import SourceData

log = logging.getLogger(__name__)

LABEL_COLUMN = "label"
SINGLE_SPLIT = "data"


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
    prepared = prepare_columns(source, problem)
    for split, part in prepared.items():
        if part.dropped_missing_label:
            log.warning(
                "%s: %d rows of split %r have no label: left out", source.location, part.dropped_missing_label, split
            )
    splits = divide(prepared, config.split_fractions, config.seed) if set(prepared) == {SINGLE_SPLIT} else prepared
    for split, part in splits.items():
        if len(part.labels) == 0:
            raise DataSourceError(f"{source.location}: split {split!r} has no rows with a label")
    return write_snapshot(config, source, problem, splits)


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
    """An IDX folder as an 'images' column (uint8 [N,H,W,1]) and a 'label' column of class ids.

    Raises:
        DataSourceError: for broken files, splits of different image shapes, or labels outside the classes.
    """
    from pipeline.core.problem import IMAGE_KEY

    split_files = idx.find_split_files(folder)
    arrays = {files.split: idx.read_split(files) for files in split_files}
    class_names = idx.resolve_class_names(folder, [labels for _, labels in arrays.values()], configured_names)
    shapes = {images.shape[1:] for images, _ in arrays.values()}
    if len(shapes) != 1:
        raise DataSourceError(f"{folder}: splits have different image shapes {sorted(shapes)}")
    for split, (_, labels) in arrays.items():
        if labels.size and int(labels.max()) >= len(class_names):
            files = next(f for f in split_files if f.split == split)
            bad = int(np.argmax(labels >= len(class_names)))
            raise DataSourceError(
                f"{files.labels}: label {int(labels[bad])} at index {bad} is outside the class "
                f"range 0..{len(class_names) - 1} ({len(class_names)} class names)"
            )
    return SourceData(
        name=folder.name or "idx",
        splits={
            split: {IMAGE_KEY: images, LABEL_COLUMN: labels.astype(np.int64)}
            for split, (images, labels) in arrays.items()
        },
        columns=[IMAGE_KEY, LABEL_COLUMN],
        class_names={LABEL_COLUMN: class_names},
        label_hint=LABEL_COLUMN,
        location=f"idx:{folder}",
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


def fingerprint(problem: ProblemSpec, splits: dict[str, PreparedSplit]) -> str:
    """SHA-256 of the snapshot format, the problem spec and every split's rows."""
    hasher = hashlib.sha256(f"snapshot-format={SNAPSHOT_FORMAT};".encode())
    hasher.update(json.dumps(problem.to_dict(), sort_keys=True).encode())
    for split, part in sorted(splits.items()):
        hasher.update(f"split={split};rows={len(part.labels)};dropped={part.dropped_missing_label};".encode())
        for key in sorted(part.features):
            values = part.features[key]
            hasher.update(f"{key}:{values.dtype}:{list(values.shape[1:])};".encode())
            _hash_values(hasher, values)
        _hash_values(hasher, part.labels)
    return hasher.hexdigest()


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
    config: PipelineConfig, source: SourceData, problem: ProblemSpec, splits: dict[str, PreparedSplit]
) -> Snapshot:
    """Publishes the splits as a TFDS-format snapshot named by their fingerprint (or reuses it)."""
    import tensorflow_datasets as tfds

    from pipeline.data.snapshot_builder import ColumnsDataset
    from pipeline.data.tfds_source import progress_bars_on_terminals_only

    digest = fingerprint(problem, splits)
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name) or "data"
    final = _snapshot_root(config) / f"{safe_name}-{digest[:12]}"
    if found := _existing(final):
        return found
    with staging_dir(_snapshot_root(config), safe_name) as staging:
        builder = ColumnsDataset(
            problem=problem,
            splits={split: (part.features, part.labels) for split, part in splits.items()},
            description=f"{source.location}: {problem.task} of {problem.label!r}",
            data_dir=str(staging / "tfds"),
        )
        log.info("preparing TFDS dataset from %s", source.location)
        progress_bars_on_terminals_only()
        try:
            builder.download_and_prepare(
                download_dir=str(staging / "downloads"),
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
        except OSError as err:
            raise DataSourceError(f"writing the snapshot under {staging.parent} failed: {err.strerror or err}") from err
        shutil.rmtree(staging / "downloads", ignore_errors=True)
        snapshot = Snapshot(
            path=final,
            name=source.name if source.location.startswith("tfds:") else safe_name,
            source=config.data_source,
            fingerprint=digest,
            splits={split: len(part.labels) for split, part in sorted(splits.items())},
            problem=problem,
            dropped_rows={split: part.dropped_missing_label for split, part in sorted(splits.items())},
            tfds_dir=str(Path(builder.data_dir).relative_to(staging)),
            created_at=utc_now(),
        )
        return _publish(staging, final, snapshot)
