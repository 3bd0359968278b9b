"""A TFDS dataset builder over columns already in memory, with features described by a problem spec.

Every source (tables, image folders, TFDS, IDX) is written through `ColumnsDataset`, so the
snapshot is always a prepared TFDS dataset with one feature per spec feature (its key) and
the label: `tfds.features.Image` for images, `Text` for categorical and text values,
scalar `Tensor`s for numbers, `ClassLabel` (classification) or a float32 `Tensor` (regression)
for the label.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from pipeline.core.problem import FLOAT, IMAGE, INT, STRING, ProblemSpec


def feature_connector(dtype: str, shape: tuple[int, ...]):
    """The TFDS feature that stores values of a spec dtype."""
    if len(shape) == 3:
        return tfds.features.Image(shape=tuple(shape), dtype=np.uint8)
    if dtype == STRING:
        return tfds.features.Text()
    return tfds.features.Tensor(shape=(), dtype={FLOAT: np.float32, INT: np.int64}[dtype])


def features_dict(problem: ProblemSpec):
    """The snapshot's TFDS features: one per spec feature, by key, and the label."""
    features = {f.key: feature_connector(f.dtype, f.shape if f.kind == IMAGE else ()) for f in problem.features}
    if problem.is_classification:
        features[problem.label_key] = tfds.features.ClassLabel(names=list(problem.class_names))
    else:
        features[problem.label_key] = tfds.features.Tensor(shape=(), dtype=np.float32)
    return tfds.features.FeaturesDict(features)


class ColumnsDataset(tfds.core.GeneratorBasedBuilder):
    """TFDS builder over in-memory columns (no download step).

    Args:
        problem: The problem spec: feature keys, dtypes, the label.
        splits: {split: ({feature key: values}, labels)}.
        description: Where the data came from.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Columns of a data source, typed by the pipeline's problem spec."}

    def __init__(
        self,
        *,
        problem: ProblemSpec,
        splits: dict[str, tuple[dict[str, np.ndarray], np.ndarray]],
        description: str = "",
        **kwargs,
    ):
        self._problem = problem
        self._splits = splits
        self._description = description
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._description,
            features=features_dict(self._problem),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Already in memory: nothing to download.
        return {split: self._generate_examples(split) for split in self._splits}

    def _generate_examples(self, split: str):
        features, labels = self._splits[split]
        label_key = self._problem.label_key
        keys = list(features)
        for index in range(len(labels)):
            example = {key: features[key][index] for key in keys}
            example[label_key] = labels[index]
            yield index, example
