"""Preprocessing inside the model: Keras inputs and encoding layers built from the problem spec.

`streamed_feature_statistics` reads the training split once and returns what the layers need (mean and
variance of each number and whether it has gaps, the vocabulary of each categorical, the
pixel moments of each image); `model_inputs` and `encode_features` then build one Keras
input per feature and its encoding, so the exported SavedModel takes raw features:

    numeric      NaN -> the training mean; clipped to the training range (`clip_numeric_features`);
                 standardised; plus a 0/1 "was missing" column when the training data had gaps
                 (`NumericEncoder`)
    categorical  StringLookup / IntegerLookup over the `max_vocabulary` most frequent values (one
                 unknown slot for the rest): one-hot, or an embedding for large vocabularies
    text         TextVectorization (lower case, punctuation stripped, words), TF-IDF over
                 `text_max_tokens` words, adapted on the training texts (an even sample of at most 200,000)
    image        Normalization by the training pixels' mean and variance
"""

from __future__ import annotations

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

    Values outside the training range are first brought to its nearest end when the range is
    given: a network extrapolates a standardised value linearly, so one mistyped value far out
    (a 31.8 mm depth among 2-6 mm ones, 40 standard deviations) would swing its prediction
    without bound; trees, which the built-in models are compared with, do the same clipping.

    Args:
        mean: The training values' mean.
        variance: Their variance.
        missing_indicator: Also output a 0/1 column saying the value was missing ([N, 2]).
        minimum: The training values' minimum (None with `maximum`: no clipping).
        maximum: Their maximum.
    """

    def __init__(
        self,
        mean: float,
        variance: float,
        missing_indicator: bool = False,
        minimum: float | None = None,
        maximum: float | None = None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")  # large raw values would overflow float16
        super().__init__(**kwargs)
        self.mean = float(mean)
        self.variance = float(variance)
        self.missing_indicator = bool(missing_indicator)
        if (minimum is None) != (maximum is None):
            raise ValueError("NumericEncoder needs both minimum and maximum, or neither")
        self.minimum = None if minimum is None else float(minimum)
        self.maximum = None if maximum is None else float(maximum)

    def call(self, values):
        values = ops.reshape(ops.cast(values, "float32"), (-1, 1))
        missing = ops.isnan(values)
        filled = ops.where(missing, ops.full_like(values, self.mean), values)
        if self.minimum is not None:
            filled = ops.clip(filled, self.minimum, self.maximum)  # after the fill: the mean lies in the range
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
            "minimum": self.minimum,
            "maximum": self.maximum,
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
    minimum: float | None = None  # numbers: the training range (None: no value present)
    maximum: float | None = None
    vocabulary: list[Any] = dataclasses.field(default_factory=list)
    texts: np.ndarray | None = None  # text features: the training texts, for TextVectorization.adapt

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("texts")
        values["vocabulary"] = [v if isinstance(v, str) else int(v) for v in self.vocabulary][:100]
        values["vocabulary_size"] = len(self.vocabulary)
        return values


TEXT_ADAPT_ROWS = 200_000  # text vocabularies are adapted on at most this many training texts


def streamed_feature_statistics(
    problem: ProblemSpec, batches, rows: int, config: PipelineConfig
) -> tuple[dict[str, FeatureStatistics], tuple[float, float]]:
    """What the encoding layers need, from the training split read batch by batch, in bounded memory.

    Numbers and categories are accumulated in one pass (`pipeline.data.statistics`); texts are
    kept for `TextVectorization.adapt` on an evenly spaced sample of at most `TEXT_ADAPT_ROWS`.

    Args:
        problem: The problem spec.
        batches: ({feature key: values}, labels) batches of the training split.
        rows: How many rows the split has (to space the text sample).
        config: Uses `max_vocabulary`.

    Returns:
        ({feature key: statistics} for the numeric, categorical and text features, (mean, std)
        of the labels).
    """
    from pipeline.data import statistics as accumulators

    kinds = {f.key: f.kind for f in problem.features if f.kind != IMAGE}
    accumulated = {key: accumulators.accumulator(kind) for key, kind in kinds.items() if kind != TEXT}
    texts: dict[str, list] = {key: [] for key, kind in kinds.items() if kind == TEXT}
    empty = dict.fromkeys(texts, 0)
    counts = dict.fromkeys(texts, 0)
    labels = accumulators.NumericAccumulator()
    stride = max(1, math.ceil(rows / TEXT_ADAPT_ROWS))
    seen = 0
    for columns, batch_labels in batches:
        for key, values in accumulated.items():
            values.add(columns[key])
        for key in texts:
            values = columns[key]
            empty[key] += sum(1 for text in values if not text)
            counts[key] += len(values)
            texts[key].extend(values[(-seen) % stride :: stride].tolist())
        labels.add(batch_labels)
        seen += len(batch_labels)
    result = {}
    for feature in problem.features:
        if feature.kind == NUMERIC:
            numbers = accumulated[feature.key]
            result[feature.key] = FeatureStatistics(
                feature.key,
                feature.kind,
                count=numbers.count,
                missing=numbers.missing,
                mean=float(numbers.mean) if numbers.present else 0.0,
                variance=float(numbers.m2 / numbers.present) if numbers.present > 1 else 1.0,
                minimum=numbers.low,
                maximum=numbers.high,
            )
        elif feature.kind == CATEGORICAL:
            categories = accumulated[feature.key]
            ranked = sorted(categories.counts.items(), key=lambda item: (-item[1], str(item[0])))
            missing = categories.counts.get("", 0) if feature.dtype == STRING else 0
            result[feature.key] = FeatureStatistics(
                feature.key,
                feature.kind,
                count=categories.count,
                missing=missing,
                vocabulary=[value for value, _ in ranked[: config.max_vocabulary]],
            )
        elif feature.kind == TEXT:
            sample = np.empty(len(texts[feature.key]), dtype=object)
            sample[:] = texts[feature.key]
            result[feature.key] = FeatureStatistics(
                feature.key, TEXT, counts[feature.key], empty[feature.key], texts=sample
            )
    label_std = math.sqrt(labels.m2 / labels.present) if labels.present else 0.0
    return result, (float(labels.mean), float(max(label_std, 1e-6)))


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
            clip = config.clip_numeric_features and stats.minimum is not None
            encoded[feature.key] = NumericEncoder(
                stats.mean,
                stats.variance,
                stats.missing > 0,
                minimum=stats.minimum if clip else None,
                maximum=stats.maximum if clip else None,
                name=f"{feature.key}_standardize",
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
