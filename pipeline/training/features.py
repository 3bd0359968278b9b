"""Preprocessing inside the model: Keras inputs and encoding layers built from the problem spec.

`feature_statistics` reads the training split once and returns what the layers need (mean and
variance of each number and whether it has gaps, the vocabulary of each categorical, the
pixel moments of each image); `model_inputs` and `encode_features` then build one Keras
input per feature and its encoding, so the exported SavedModel takes raw features:

    numeric      NaN -> the training mean, standardised; plus a 0/1 "was missing" column when
                 the training data had gaps (`NumericEncoder`)
    categorical  StringLookup / IntegerLookup over the `max_vocabulary` most frequent values (one
                 unknown slot for the rest): one-hot, or an embedding for large vocabularies
    text         TextVectorization (lower case, punctuation stripped, words), TF-IDF over
                 `text_max_tokens` words, adapted on the training texts
    image        Normalization by the training pixels' mean and variance
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from pipeline.core.config import PipelineConfig
from pipeline.core.problem import CATEGORICAL, FLOAT, IMAGE, INT, NUMERIC, STRING, TEXT, FeatureSpec, ProblemSpec

ONE_HOT_MAX = 50  # larger vocabularies get an embedding instead of a one-hot block


@keras.saving.register_keras_serializable(package="mlops")
class NumericEncoder(layers.Layer):
    """Standardises one numeric feature [N] to [N, 1], with missing values (NaN) imputed by the mean.

    Args:
        mean: The training values' mean.
        variance: Their variance.
        missing_indicator: Also output a 0/1 column saying the value was missing ([N, 2]).
    """

    def __init__(self, mean: float, variance: float, missing_indicator: bool = False, **kwargs):
        kwargs.setdefault("dtype", "float32")  # large raw values would overflow float16
        super().__init__(**kwargs)
        self.mean = float(mean)
        self.variance = float(variance)
        self.missing_indicator = bool(missing_indicator)

    def call(self, values):
        values = ops.reshape(ops.cast(values, "float32"), (-1, 1))
        missing = ops.isnan(values)
        filled = ops.where(missing, ops.full_like(values, self.mean), values)
        scaled = (filled - self.mean) / math.sqrt(max(self.variance, 1e-12))
        if self.missing_indicator:
            return ops.concatenate([scaled, ops.cast(missing, "float32")], axis=-1)
        return scaled

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 if self.missing_indicator else 1)

    def get_config(self):
        return {
            **super().get_config(),
            "mean": self.mean,
            "variance": self.variance,
            "missing_indicator": self.missing_indicator,
        }


@dataclasses.dataclass
class FeatureStatistics:
    """What the encoding layers of one feature are fitted to (from the training split)."""

    key: str
    kind: str
    count: int = 0
    missing: int = 0
    mean: float = 0.0
    variance: float = 1.0
    vocabulary: list[Any] = dataclasses.field(default_factory=list)
    texts: np.ndarray | None = None  # text features: the training texts, for TextVectorization.adapt

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("texts")
        values["vocabulary"] = [v if isinstance(v, str) else int(v) for v in self.vocabulary][:100]
        values["vocabulary_size"] = len(self.vocabulary)
        return values


def _numeric_statistics(feature: FeatureSpec, values: np.ndarray) -> FeatureStatistics:
    values = values.astype(np.float64)
    present = values[~np.isnan(values)]
    return FeatureStatistics(
        feature.key,
        feature.kind,
        count=len(values),
        missing=int(len(values) - len(present)),
        mean=float(present.mean()) if present.size else 0.0,
        variance=float(present.var()) if present.size > 1 else 1.0,
    )


def _categorical_statistics(feature: FeatureSpec, values: np.ndarray, max_vocabulary: int) -> FeatureStatistics:
    counts = collections.Counter(values.tolist())
    # Most frequent first; ties broken by value so the vocabulary is deterministic.
    ranked = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    vocabulary = [value for value, _ in ranked[:max_vocabulary]]
    missing = counts.get("", 0) if feature.dtype == STRING else 0
    return FeatureStatistics(feature.key, feature.kind, count=len(values), missing=missing, vocabulary=vocabulary)


def feature_statistics(
    problem: ProblemSpec, columns: dict[str, np.ndarray], config: PipelineConfig
) -> dict[str, FeatureStatistics]:
    """The statistics of every non-image feature of the training split.

    Args:
        problem: The problem spec.
        columns: {feature key: training values} (`Snapshot.split_columns`); image features may be absent.
        config: Uses `max_vocabulary`.

    Returns:
        {feature key: statistics} for the numeric, categorical and text features.
    """
    statistics = {}
    for feature in problem.features:
        values = columns.get(feature.key)
        if feature.kind == NUMERIC:
            statistics[feature.key] = _numeric_statistics(feature, values)
        elif feature.kind == CATEGORICAL:
            statistics[feature.key] = _categorical_statistics(feature, values, config.max_vocabulary)
        elif feature.kind == TEXT:
            empty = int(sum(1 for v in values if not v))
            statistics[feature.key] = FeatureStatistics(feature.key, TEXT, len(values), empty, texts=values)
    return statistics


def model_inputs(problem: ProblemSpec) -> dict[str, keras.KerasTensor]:
    """One Keras input per feature, named by its key: images float32 [N,H,W,C], others [N] of their dtype."""
    inputs = {}
    for feature in problem.features:
        if feature.kind == IMAGE:
            inputs[feature.key] = keras.Input(shape=feature.shape, name=feature.key)
        else:
            dtype = {FLOAT: "float32", INT: "int64", STRING: "string"}[feature.dtype]
            inputs[feature.key] = keras.Input(shape=(), dtype=dtype, name=feature.key)
    return inputs


def _categorical_layers(feature: FeatureSpec, stats: FeatureStatistics, x):
    lookup_class = layers.StringLookup if feature.dtype == STRING else layers.IntegerLookup
    size = len(stats.vocabulary) + 1  # one slot for unknown values
    if size <= ONE_HOT_MAX:
        lookup = lookup_class(vocabulary=stats.vocabulary, output_mode="one_hot", name=f"{feature.key}_lookup")
        return lookup(x)
    ids = lookup_class(vocabulary=stats.vocabulary, name=f"{feature.key}_lookup")(x)
    width = min(32, max(4, round(1.6 * size**0.56)))
    return layers.Embedding(size, width, name=f"{feature.key}_embedding")(ids)


def _text_layers(feature: FeatureSpec, stats: FeatureStatistics, config: PipelineConfig, x):
    import tensorflow as tf

    vectorize = layers.TextVectorization(
        max_tokens=config.text_max_tokens, output_mode="tf_idf", name=f"{feature.key}_vectorize"
    )
    vectorize.adapt(tf.data.Dataset.from_tensor_slices(stats.texts.astype(str)).batch(1024))
    return vectorize(x)


def encode_features(
    problem: ProblemSpec,
    inputs: dict[str, keras.KerasTensor],
    statistics: dict[str, FeatureStatistics],
    image_moments: dict[str, tuple[float, float]],
    config: PipelineConfig,
) -> dict[str, keras.KerasTensor]:
    """Encodes every input (see the module doc).

    Returns:
        {key: encoded}: images float [N,H,W,C] (normalised), others float [N, width].
    """
    encoded = {}
    for feature in problem.features:
        x = inputs[feature.key]
        if feature.kind == IMAGE:
            mean, variance = image_moments[feature.key]
            name = "normalize" if problem.single_image else f"{feature.key}_normalize"
            encoded[feature.key] = layers.Normalization(axis=None, mean=mean, variance=variance, name=name)(x)
        elif feature.kind == NUMERIC:
            stats = statistics[feature.key]
            encoded[feature.key] = NumericEncoder(
                stats.mean, stats.variance, stats.missing > 0, name=f"{feature.key}_standardize"
            )(x)
        elif feature.kind == CATEGORICAL:
            encoded[feature.key] = _categorical_layers(feature, statistics[feature.key], x)
        else:
            encoded[feature.key] = _text_layers(feature, statistics[feature.key], config, x)
    return encoded


def concat_flat(problem: ProblemSpec, encoded: dict[str, keras.KerasTensor]) -> keras.KerasTensor | None:
    """All non-image encodings side by side ([N, total width]), or None when every feature is an image."""
    flat = [encoded[f.key] for f in problem.features if f.kind != IMAGE]
    if not flat:
        return None
    return flat[0] if len(flat) == 1 else layers.Concatenate(name="features")(flat)
