"""An immutable, versioned data snapshot in TFDS format, and how to read it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import read_json
from pipeline.core.config import AUTO
from pipeline.core.errors import ConfigError, DataSourceError
from pipeline.core.problem import IMAGE, ProblemSpec

SNAPSHOT_FILE = "snapshot.json"
# Snapshot layout version: 2 stores the problem spec (features, label, task).
SNAPSHOT_FORMAT = 2
TRAIN, VALIDATION, TEST = "train", "validation", "test"
# How TFDS's reader interleaves a split's files (`tfds.ReadConfig` defaults), and its read buffer.
TFDS_INTERLEAVE = 16
TFDS_READ_BUFFER = 8 << 20


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A prepared dataset frozen under a folder named by its content fingerprint.

    Attributes:
        path: The snapshot folder.
        name: Dataset name (file, folder or TFDS builder name).
        source: The data source it was made from, e.g. 'idx:/usr/share/datasets/fashion-mnist'.
        fingerprint: SHA-256 of the examples' content and the problem spec.
        splits: Number of examples per split.
        problem: What is learnt from what (features, label, task, class names).
        dropped_rows: Rows left out per split because their label was missing.
        tfds_dir: The prepared TFDS version folder, relative to `path`.
        created_at: UTC time of creation.
    """

    path: Path
    name: str
    source: str
    fingerprint: str
    splits: dict[str, int]
    problem: ProblemSpec
    dropped_rows: dict[str, int]
    tfds_dir: str
    created_at: str

    @property
    def class_names(self) -> list[str]:
        return list(self.problem.class_names)

    @property
    def num_classes(self) -> int:
        return self.problem.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(height, width, channels) of the only feature when it is an image, else None."""
        image = self.problem.single_image
        return tuple(image.shape) if image else None

    def to_dict(self) -> dict[str, Any]:
        """Returns the metadata stored in snapshot.json (without the path)."""
        payload = dataclasses.asdict(self)
        payload.pop("path")
        payload["problem"] = self.problem.to_dict()
        payload["format"] = SNAPSHOT_FORMAT
        return payload

    @classmethod
    def load(cls, path: str | Path) -> Snapshot:
        """Opens a finished snapshot folder.

        Raises:
            DataSourceError: if the folder is not a complete snapshot of this format.
        """
        path = Path(path)
        meta_file = path / SNAPSHOT_FILE
        if not meta_file.is_file():
            raise DataSourceError(f"{path} is not a data snapshot (no {SNAPSHOT_FILE})")
        meta = read_json(meta_file)
        if meta.pop("format", 1) != SNAPSHOT_FORMAT:
            raise DataSourceError(f"{path} is a snapshot of an older layout: ingest the source again")
        meta["problem"] = ProblemSpec.from_dict(meta["problem"])
        return cls(path=path, **meta)

    def builder(self):
        """Returns a read-only TFDS builder over the snapshot."""
        import tensorflow_datasets as tfds

        return tfds.builder_from_directory(str(self.path / self.tfds_dir))

    def resolve_split(self, expression: str, role: str) -> str:
        """A config split expression with 'auto' resolved against this snapshot's splits.

        Args:
            expression: A TFDS split expression, or 'auto'.
            role: 'train', 'validation' or 'test'.

        Returns:
            train: 'train' when the snapshot has a validation split, else 'train[:90%]';
            validation: 'validation', else 'train[90%:]'; test: 'test'.

        Raises:
            ConfigError: if 'auto' has nothing to resolve to.
        """
        if expression != AUTO:
            return expression
        has_validation = VALIDATION in self.splits
        resolved = {
            TRAIN: TRAIN if has_validation else "train[:90%]",
            VALIDATION: VALIDATION if has_validation else "train[90%:]",
            TEST: TEST,
        }[role]
        if resolved.split("[", 1)[0] not in self.splits:
            raise ConfigError(
                f"snapshot {self.name} has no {resolved.split('[', 1)[0]!r} split for the {role} split "
                f"(splits: {', '.join(sorted(self.splits))}): set {role}_split"
            )
        return resolved

    @staticmethod
    def base_split(split: str) -> str:
        """The stored split a split expression reads first ('train[:90%]' and 'train+test' -> 'train')."""
        return split.split("[", 1)[0].split("+", 1)[0]

    def _as_dataset(self, split: str, input_context=None, files_in_turn: bool = False):
        import tensorflow_datasets as tfds

        base = self.base_split(split)
        if base not in self.splits:
            raise ConfigError(
                f"split {split!r} is not in snapshot {self.name} (splits: {', '.join(sorted(self.splits))})"
            )
        # TFDS would cache a split under ~250 MiB in memory on its own; what stays in memory is
        # training's decision (`cache_max_mb`), so every stage reads from the files.
        # Files in turn: one file open at a time, so memory does not grow with the number of files.
        in_turn = {"interleave_cycle_length": 1, "interleave_block_length": None} if files_in_turn else {}
        read_config = tfds.ReadConfig(input_context=input_context, try_autocache=False, **in_turn)
        try:
            return self.builder().as_dataset(split=split, shuffle_files=False, read_config=read_config)
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"bad split expression {split!r}: {err}") from err

    def load_split(self, split: str, input_context=None, files_in_turn: bool = False):
        """Returns a `tf.data.Dataset` of ({feature key: value}, label).

        Labels are int64 class ids (classification) or float32 values (regression); strings are
        tf.string, images uint8 [H,W,C].

        Args:
            split: A TFDS split expression such as 'train', 'train[:90%]' or 'test[:500]'.
            input_context: A `tf.distribute.InputContext`: read only this input pipeline's shard
                files (file i goes to pipeline i mod n).
            files_in_turn: Read the files one after the other, in file order (one reader, so
                memory does not grow with the number of files); else TFDS interleaves up to 16
                files (faster where the reading is the bottleneck, as in training).

        Raises:
            ConfigError: if the split expression does not name a split of this snapshot.
        """
        keys = [f.key for f in self.problem.features]
        label_key = self.problem.label_key
        dataset = self._as_dataset(split, input_context, files_in_turn)
        return dataset.map(lambda example: ({k: example[k] for k in keys}, example[label_key]))

    def load_records(self, split: str, input_context=None):
        """Returns a `tf.data.Dataset` of the split's serialized `tf.train.Example`s, in `load_split`'s order.

        The files and record ranges are TFDS's for the split expression, interleaved as TFDS
        interleaves them (16 files at a time, 16 records from each in turn), so a batch of these
        parsed with `tf.io.parse_example` (`preprocess`) holds the rows `load_split` gives, in
        the same order, without TFDS's decoding of one example at a time.

        Args:
            split: A TFDS split expression.
            input_context: A `tf.distribute.InputContext`: only this input pipeline's files
                (file i goes to pipeline i mod n, as `load_split`).

        Raises:
            ConfigError: if the split expression does not name a split of this snapshot.
        """
        import tensorflow as tf

        shard = None if input_context is None else (input_context.input_pipeline_id, input_context.num_input_pipelines)
        instructions = self.file_instructions(split, shard)
        paths = [str(path) for path, _, _ in instructions]
        skips = np.asarray([skip for _, skip, _ in instructions], np.int64)
        takes = np.asarray([take for _, _, take in instructions], np.int64)
        files = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), skips, takes))
        return files.interleave(
            lambda path, skip, take: tf.data.TFRecordDataset(path, buffer_size=TFDS_READ_BUFFER).skip(skip).take(take),
            cycle_length=TFDS_INTERLEAVE,
            block_length=TFDS_INTERLEAVE,
        )

    def split_infos(self):
        """TFDS's `SplitDict` of the snapshot (a split expression gives its files and size), read from
        dataset_info.json without TensorFlow."""
        from tensorflow_datasets.core import dataset_info

        folder = self.path / self.tfds_dir
        proto = dataset_info.read_from_json(folder / "dataset_info.json")
        return dataset_info.get_split_dict_from_proto(proto, data_dir=folder)

    def file_instructions(self, split: str, shard: tuple[int, int] | None = None) -> list[tuple[Path, int, int]]:
        """The shard files a split expression reads, in order: (path, records to skip, records to read).

        Args:
            split: A TFDS split expression.
            shard: (index, count): only every count-th file from file `index` (one input
                pipeline's files, as TFDS's `input_context` selects them).

        Raises:
            ConfigError: if the expression does not name a split of this snapshot.
        """
        base = self.base_split(split)
        if base not in self.splits:
            raise ConfigError(
                f"split {split!r} is not in snapshot {self.name} (splits: {', '.join(sorted(self.splits))})"
            )
        try:
            instructions = self.split_infos()[split].file_instructions
        except (ValueError, AssertionError, KeyError) as err:
            raise ConfigError(f"bad split expression {split!r}: {err}") from err
        if shard is not None:
            index, count = shard
            instructions = instructions[index::count]
        return [(Path(i.filename), i.skip, i.take) for i in instructions]

    def shard_count(self, split: str) -> int:
        """How many shard files a (whole) split is stored in."""
        return len(self.split_infos()[split].shard_lengths)

    def iter_batches(
        self, split: str, batch_size: int = 4096, shard: tuple[int, int] | None = None
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Reads a split batch by batch, in file order, holding one batch at a time, without TensorFlow.

        The records are read by `tfrecord` and parsed by `example_decoder`; a batch never
        spans two files.

        Args:
            split: A TFDS split expression.
            batch_size: Rows per batch (at most).
            shard: (index, count): read only shard file `index` of a whole split stored in
                `count` files (`shard_count`).

        Yields:
            ({feature key: values}, labels): text as object arrays of `str`, images as uint8
            [N,H,W,C], labels as int64 class ids or float32 values.

        Raises:
            ConfigError: if the split expression does not name a split of this snapshot.
            DataSourceError: naming the shard file and byte offset, if a shard file is corrupt.
        """
        from pipeline.data.example_decoder import BadRecordError, decode_examples
        from pipeline.data.tfrecord import CorruptRecordError, read_records

        for path, skip, take in self.file_instructions(split, shard):
            try:
                for records, offsets in read_records(path, skip, take, batch_size):
                    try:
                        features, labels = decode_examples(records, self.problem)
                    except BadRecordError as err:
                        raise DataSourceError(self._corrupt(path, int(offsets[err.index]), err.reason)) from None
                    yield features, labels
            except CorruptRecordError as err:
                raise DataSourceError(self._corrupt(err.path, err.offset, err.reason)) from None

    def _corrupt(self, path: Path, offset: int, reason: str) -> str:
        return f"snapshot {self.path}: shard file {path} is corrupt at byte {offset} ({reason}); ingest the data again"

    def corrupt_shard_message(self, err: Exception, splits: list[str] | None = None) -> str:
        """Names the first shard file that does not read back, and where it breaks.

        TensorFlow reports a corrupt record's byte offset but not its file, so each file (of
        `splits`, else of every split) is read again until one fails.
        """
        from pipeline.data.tfrecord import first_corrupt_record

        infos = self.split_infos()
        for path in [path for split in splits or sorted(self.splits) for path in infos[split].filepaths]:
            found = first_corrupt_record(Path(path))
            if found is not None:
                return self._corrupt(found.path, found.offset, found.reason)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"snapshot {self.path} does not read back ({first}); ingest the data again"

    def split_columns(self, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Reads a whole split into memory: ({feature key: values}, labels), as `iter_batches` gives them.

        Only for splits known to be small (a bounded sample, request rows); stages stream with `iter_batches`.
        """
        parts: dict[str, list[np.ndarray]] = {f.key: [] for f in self.problem.features}
        labels = []
        for features, batch_labels in self.iter_batches(split):
            for key, values in features.items():
                parts[key].append(values)
            labels.append(batch_labels)
        columns = {}
        for feature in self.problem.features:
            if parts[feature.key]:
                columns[feature.key] = np.concatenate(parts[feature.key])
            else:
                columns[feature.key] = np.zeros((0, *feature.shape), np.uint8 if feature.kind == IMAGE else np.float32)
        label_dtype = np.int64 if self.problem.is_classification else np.float32
        return columns, (np.concatenate(labels) if labels else np.zeros(0)).astype(label_dtype)

    def request_rows(self, split: str, count: int) -> dict[str, np.ndarray]:
        """The first `count` rows of `split`'s base split, shaped as a client sends them.

        Used for warmup records, infra-validation and smoke tests: one array per serving
        input; single-channel images come as [N,H,W] (what the image models' callers send).

        Args:
            split: A split expression; only its base name counts ('test[:50%]' reads 'test').
            count: How many rows.
        """
        base = split.split("[", 1)[0]
        columns, _ = self.split_columns(f"{base}[:{min(count, self.splits.get(base, count))}]")
        rows = {}
        for feature in self.problem.features:
            values = columns[feature.key]
            if feature.kind == IMAGE and feature.shape[-1] == 1:
                values = values[..., 0]
            rows[feature.key] = values
        return rows
