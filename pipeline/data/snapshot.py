"""An immutable, versioned data snapshot in TFDS format, and how to read it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import read_json
from pipeline.core.errors import ConfigError, DataSourceError

SNAPSHOT_FILE = "snapshot.json"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A prepared dataset frozen under a folder named by its content fingerprint.

    Attributes:
        path: The snapshot folder.
        name: Dataset name (IDX folder name or TFDS builder name).
        source: The data source it was made from, e.g. 'idx:/usr/share/datasets/fashion-mnist'.
        fingerprint: SHA-256 of the examples' content and the class names.
        splits: Number of examples per split.
        class_names: Label names; index i names label i.
        image_shape: (height, width, channels).
        tfds_dir: The prepared TFDS version folder, relative to `path`.
        created_at: UTC time of creation.
    """

    path: Path
    name: str
    source: str
    fingerprint: str
    splits: dict[str, int]
    class_names: list[str]
    image_shape: tuple[int, int, int]
    tfds_dir: str
    created_at: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Returns the metadata stored in snapshot.json (without the path)."""
        payload = dataclasses.asdict(self)
        payload.pop("path")
        payload["image_shape"] = list(self.image_shape)
        return payload

    @classmethod
    def load(cls, path: str | Path) -> Snapshot:
        """Opens a finished snapshot folder.

        Raises:
            DataSourceError: if the folder is not a complete snapshot.
        """
        path = Path(path)
        meta_file = path / SNAPSHOT_FILE
        if not meta_file.is_file():
            raise DataSourceError(f"{path} is not a data snapshot (no {SNAPSHOT_FILE})")
        meta = read_json(meta_file)
        meta["image_shape"] = tuple(meta["image_shape"])
        return cls(path=path, **meta)

    def builder(self):
        """Returns a read-only TFDS builder over the snapshot."""
        import tensorflow_datasets as tfds

        return tfds.builder_from_directory(str(self.path / self.tfds_dir))

    def load_split(self, split: str):
        """Returns a `tf.data.Dataset` of (image uint8 [H,W,C], label int64) in file order.

        Args:
            split: A TFDS split expression such as 'train', 'train[:90%]' or 'test[:500]'.

        Raises:
            ConfigError: if the split expression does not name a split of this snapshot.
        """
        base = split.split("[", 1)[0].split("+", 1)[0]
        if base not in self.splits:
            raise ConfigError(
                f"split {split!r} is not in snapshot {self.name} (splits: {', '.join(sorted(self.splits))})"
            )
        try:
            return self.builder().as_dataset(split=split, as_supervised=True, shuffle_files=False)
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"bad split expression {split!r}: {err}") from err

    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Reads a whole split into memory as (images uint8 [N,H,W,C], labels int64 [N])."""
        import tensorflow_datasets as tfds

        images, labels = [], []
        for batch_images, batch_labels in tfds.as_numpy(self.load_split(split).batch(4096)):
            images.append(batch_images)
            labels.append(batch_labels)
        if not images:
            return np.zeros((0, *self.image_shape), np.uint8), np.zeros((0,), np.int64)
        return np.concatenate(images), np.concatenate(labels).astype(np.int64)

    def request_images(self, split: str, count: int) -> np.ndarray:
        """The first `count` images of `split`'s base split, shaped as a client sends them.

        Used for warmup records, infra-validation and smoke tests: single-channel images
        come as [N,H,W] (what the serving signature's callers send), others as [N,H,W,C].

        Args:
            split: A split expression; only its base name counts ('test[:50%]' reads 'test').
            count: How many images.
        """
        images, _ = self.split_arrays(f"{split.split('[', 1)[0]}[:{count}]")
        return images[..., 0] if images.shape[-1] == 1 else images
