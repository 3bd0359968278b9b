"""Stage 1, ingest: turn a data source into an immutable TFDS-format snapshot.

Sources:
    idx:<dir>   a folder of MNIST-format IDX files, prepared by `IdxFolderDataset`.
    tfds:<name> any TFDS dataset with (image, label) supervised keys; prepared from
                `tfds_data_dir`, downloaded only when `allow_download` is set.

The snapshot folder is named by a content fingerprint, so ingesting unchanged data
again reuses the existing snapshot and changed data never overwrites an old one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import atomic_write_json, fsync_tree, staging_dir, utc_now
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import DataSourceError
from pipeline.data import idx
from pipeline.data.idx_builder import IdxFolderDataset
from pipeline.data.snapshot import SNAPSHOT_FILE, Snapshot

log = logging.getLogger(__name__)


def ingest(config: PipelineConfig) -> Snapshot:
    """Runs the ingest stage.

    Args:
        config: The pipeline config; `data_source` says what to read.

    Returns:
        The (new or already existing) snapshot of the source's current content.

    Raises:
        DataSourceError: if the source is missing, empty, corrupt, malformed or unknown.
    """
    kind, _, location = config.data_source.partition(":")
    if kind == "idx":
        return _ingest_idx(config, Path(location))
    return _ingest_tfds(config, location)


def _hash_split(hasher, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    hasher.update(f"split={split};shape={list(images.shape)};".encode())
    hasher.update(np.ascontiguousarray(images, np.uint8).tobytes())
    hasher.update(np.ascontiguousarray(labels, np.int64).tobytes())


def _finish_fingerprint(hasher, class_names: list[str]) -> str:
    hasher.update(json.dumps(class_names).encode())
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


def _ingest_idx(config: PipelineConfig, folder: Path) -> Snapshot:
    split_files = idx.find_split_files(folder)
    arrays = {files.split: idx.read_split(files) for files in split_files}
    class_names = idx.resolve_class_names(folder, [labels for _, labels in arrays.values()], config.class_names)
    hasher = hashlib.sha256()
    shapes = set()
    for split, (images, labels) in sorted(arrays.items()):
        if labels.size and int(labels.max()) >= len(class_names):
            files = next(f for f in split_files if f.split == split)
            bad = int(np.argmax(labels >= len(class_names)))
            raise DataSourceError(
                f"{files.labels}: label {int(labels[bad])} at index {bad} is outside the class "
                f"range 0..{len(class_names) - 1} ({len(class_names)} class names)"
            )
        shapes.add(images.shape[1:])
        _hash_split(hasher, split, images, labels)
    if len(shapes) != 1:
        raise DataSourceError(f"{folder}: splits have different image shapes {sorted(shapes)}")
    image_shape = shapes.pop()
    fingerprint = _finish_fingerprint(hasher, class_names)
    name = folder.name or "idx"
    final = _snapshot_root(config) / f"{name}-{fingerprint[:12]}"
    if found := _existing(final):
        return found

    import tensorflow_datasets as tfds

    with staging_dir(_snapshot_root(config), name) as staging:
        builder = IdxFolderDataset(
            source_dir=folder,
            class_names=class_names,
            image_shape=image_shape,
            data_dir=str(staging / "tfds"),
        )
        log.info("preparing TFDS dataset from %s", folder)
        _progress_bars_on_terminals_only()
        builder.download_and_prepare(
            download_dir=str(staging / "downloads"),
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
        shutil.rmtree(staging / "downloads", ignore_errors=True)
        snapshot = Snapshot(
            path=final,
            name=name,
            source=config.data_source,
            fingerprint=fingerprint,
            splits={split: int(labels.shape[0]) for split, (_, labels) in sorted(arrays.items())},
            class_names=class_names,
            image_shape=tuple(int(d) for d in image_shape),
            tfds_dir=str(Path(builder.data_dir).relative_to(staging)),
            created_at=utc_now(),
        )
        return _publish(staging, final, snapshot)


def _progress_bars_on_terminals_only() -> None:
    """TFDS progress bars for a person at a terminal; in a task log each redraw would be a line."""
    import tensorflow_datasets as tfds

    tfds.display_progress_bar(sys.stderr.isatty())


def _open_tfds_builder(config: PipelineConfig, name: str):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=config.tfds_data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DataSourceError(f"unknown TFDS dataset {name!r}: {str(err).splitlines()[0]}") from None
    if not builder.is_prepared():
        if not config.allow_download:
            raise DataSourceError(
                f"TFDS dataset {name!r} is not prepared under {builder.data_dir_root} and "
                "allow_download is off: prepare it there first, point tfds_data_dir at a "
                "prepared copy, or set allow_download"
            )
        log.info("downloading and preparing TFDS dataset %s", name)
        _progress_bars_on_terminals_only()
        builder.download_and_prepare()
    return builder


def _supervised_image_features(builder, name: str) -> tuple[str, str, tuple[int, ...], list[str]]:
    import tensorflow_datasets as tfds

    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise DataSourceError(f"TFDS dataset {name!r} has no (image, label) supervised keys")
    image_key, label_key = keys
    image_feature = builder.info.features[image_key]
    label_feature = builder.info.features[label_key]
    shape = tuple(image_feature.shape)
    if not isinstance(image_feature, (tfds.features.Image, tfds.features.Tensor)) or len(shape) != 3 or None in shape:
        raise DataSourceError(f"TFDS dataset {name!r}: feature {image_key!r} is not a fixed-size image ({shape})")
    if not isinstance(label_feature, tfds.features.ClassLabel):
        raise DataSourceError(f"TFDS dataset {name!r}: feature {label_key!r} is not a class label")
    return image_key, label_key, shape, list(label_feature.names)


def _ingest_tfds(config: PipelineConfig, name: str) -> Snapshot:
    import tensorflow_datasets as tfds

    builder = _open_tfds_builder(config, name)
    _, _, image_shape, class_names = _supervised_image_features(builder, name)
    hasher = hashlib.sha256()
    splits = {}
    for split in sorted(builder.info.splits):
        images, labels = [], []
        dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        for batch_images, batch_labels in tfds.as_numpy(dataset.batch(4096)):
            images.append(batch_images)
            labels.append(batch_labels)
        if not images:
            raise DataSourceError(f"TFDS dataset {name!r}: split {split!r} is empty")
        images_array, labels_array = np.concatenate(images), np.concatenate(labels)
        _hash_split(hasher, split, images_array, labels_array)
        splits[split] = int(labels_array.shape[0])
    fingerprint = _finish_fingerprint(hasher, class_names)
    safe_name = name.replace("/", "_").replace(":", "_")
    final = _snapshot_root(config) / f"{safe_name}-{fingerprint[:12]}"
    if found := _existing(final):
        return found
    with staging_dir(_snapshot_root(config), safe_name) as staging:
        version_dir = Path(builder.data_dir)
        relative = version_dir.relative_to(Path(builder.data_dir_root))
        _link_or_copy_tree(version_dir, staging / "tfds" / relative)
        snapshot = Snapshot(
            path=final,
            name=builder.info.full_name,
            source=config.data_source,
            fingerprint=fingerprint,
            splits=splits,
            class_names=class_names,
            image_shape=tuple(int(d) for d in image_shape),
            tfds_dir=str(Path("tfds") / relative),
            created_at=utc_now(),
        )
        return _publish(staging, final, snapshot)


def _link_or_copy_tree(source: Path, destination: Path) -> None:
    """Copies a prepared TFDS folder, hard-linking files where the file system allows."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=link_or_copy)
