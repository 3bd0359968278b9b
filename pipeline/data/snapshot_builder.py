"""The TFDS features of a snapshot, described by its problem spec.

Every source (tables, image folders, TFDS, IDX) is written with these features
(`shard_writer.write_dataset`), so the snapshot is always a prepared TFDS dataset with one
feature per spec feature (its key) and the label: `tfds.features.Image` for images, `Text`
for categorical and text values, scalar `Tensor`s for numbers, `ClassLabel` (classification)
or a float32 `Tensor` (regression) for the label.
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
