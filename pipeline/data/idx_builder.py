"""A TFDS dataset builder over a folder of MNIST-format IDX files.

`IdxFolderDataset` turns such a folder into a prepared TFDS dataset, so the rest of the
pipeline reads IDX and `tfds:` sources through one format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from pipeline.data.idx import IdxSplitFiles, find_split_files, read_split


class IdxFolderDataset(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for a folder of MNIST-format IDX files (no download step)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Images and labels read from IDX files."}

    def __init__(
        self,
        *,
        source_dir: str | Path,
        class_names: list[str],
        image_shape: tuple[int, int, int],
        description: str = "",
        **kwargs,
    ):
        self._source_dir = Path(source_dir)
        self._class_names = list(class_names)
        self._image_shape = tuple(image_shape)
        self._description = description or f"IDX images and labels from {source_dir}"
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._description,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=self._image_shape, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=self._class_names),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=f"file://{self._source_dir}",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files: nothing to download.
        return {files.split: self._generate_examples(files) for files in find_split_files(self._source_dir)}

    def _generate_examples(self, files: IdxSplitFiles):
        images, labels = read_split(files, num_classes=len(self._class_names))
        for index in range(images.shape[0]):
            yield index, {"image": images[index], "label": int(labels[index])}
