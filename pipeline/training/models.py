"""Model builders, chosen by name.

Every model takes raw pixel values (0-255, as float or uint8) and normalises them
with its own first layer, so the exported model needs no preprocessing outside it.
The last layer computes softmax in float32, which keeps mixed precision stable.
With `test_time_flip` the model answers with the mean of its probabilities for each
image and its horizontal mirror (inference only; training sees each image once).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import keras
from keras import layers, ops

from pipeline.core.errors import ConfigError


def _normalizer(pixel_mean: float, pixel_variance: float) -> layers.Layer:
    return layers.Normalization(axis=None, mean=pixel_mean, variance=pixel_variance, name="normalize")


def _dense_block(x, units: int, dropout: float):
    x = layers.Dense(units, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    return layers.Dropout(dropout)(x)


def _classifier_head(x, num_classes: int, dropout: float):
    x = _dense_block(x, 128, dropout)
    x = layers.Dense(num_classes, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name="probabilities")(x)


def _conv_bn_relu(x, filters: int):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def _conv_block(x, filters: int, convs: int = 1):
    for _ in range(convs):
        x = _conv_bn_relu(x, filters)
    return layers.MaxPooling2D()(x)


def build_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    dropout: float,
    pixel_mean: float,
    pixel_variance: float,
    second_block_convs: int = 1,
    name: str = "cnn",
) -> keras.Model:
    """A small CNN: two conv/batch-norm/pool blocks and a dense head with dropout.

    Args:
        input_shape: (height, width, channels).
        num_classes: Number of output classes.
        dropout: Dropout rate before and inside the head.
        pixel_mean: Mean of the training pixels (0-255 scale).
        pixel_variance: Variance of the training pixels.
        second_block_convs: 64-filter convolutions before the second pooling ('cnn_deep': 2,
            about 1.6 times the training cost per image of 1).
        name: The model's name.

    Returns:
        An uncompiled Keras model with input 'images' and output 'probabilities'.
    """
    inputs = keras.Input(shape=input_shape, name="images")
    x = _normalizer(pixel_mean, pixel_variance)(inputs)
    x = _conv_block(x, 32)
    x = _conv_block(x, 64, convs=second_block_convs)
    x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, _classifier_head(x, num_classes, dropout), name=name)


def build_mlp(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    dropout: float,
    pixel_mean: float,
    pixel_variance: float,
) -> keras.Model:
    """A multi-layer perceptron: flatten, dense 256 with batch norm, dense head.

    Args and Returns: as `build_cnn`.
    """
    inputs = keras.Input(shape=input_shape, name="images")
    x = _normalizer(pixel_mean, pixel_variance)(inputs)
    x = _dense_block(layers.Flatten()(x), 256, dropout)
    return keras.Model(inputs, _classifier_head(x, num_classes, dropout), name="mlp")


@keras.saving.register_keras_serializable(package="mlops")
class MirrorAveraged(keras.layers.Layer):
    """Runs a model on images and on their horizontal mirrors and averages its outputs (at inference).

    While training it runs the wrapped model once, as is: mirrored training images come from
    augmentation, not from here.

    Args:
        inner: The model to wrap; its output is averaged.
    """

    def __init__(self, inner: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner

    def build(self, input_shape):
        self.inner.build(input_shape)

    def call(self, images, training=None):
        outputs = self.inner(images, training=training)
        if training:
            return outputs
        return (outputs + self.inner(ops.flip(images, axis=2), training=False)) / 2

    def compute_output_shape(self, input_shape):
        return self.inner.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "inner": keras.saving.serialize_keras_object(self.inner)}

    @classmethod
    def from_config(cls, config):
        return cls(inner=keras.saving.deserialize_keras_object(config.pop("inner")), **config)


def with_test_time_flip(model: keras.Model) -> keras.Model:
    """Wraps a model so that inference averages each image's probabilities with its mirror's.

    Args:
        model: A model with input 'images' [N,H,W,C] and class probabilities as output.

    Returns:
        A model with the same input and output, named like the original.
    """
    inputs = keras.Input(shape=model.input_shape[1:], name="images")
    outputs = MirrorAveraged(model, dtype="float32", name="probabilities")(inputs)
    return keras.Model(inputs, outputs, name=model.name)


def load_model(path) -> keras.Model:
    """Loads a model saved by the train stage (this module registers its custom layers)."""
    return keras.models.load_model(path)


MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "cnn": build_cnn,
    "cnn_deep": functools.partial(build_cnn, second_block_convs=2, name="cnn_deep"),  # The quality preset's.
    "mlp": build_mlp,
}


def build_model(name: str, input_shape, num_classes: int, *, test_time_flip: bool = False, **kwargs) -> keras.Model:
    """Builds the model registered under `name`.

    Args:
        name: A key of `MODEL_BUILDERS`.
        input_shape: (height, width, channels).
        num_classes: Number of output classes.
        test_time_flip: Wrap the model with `with_test_time_flip`.
        **kwargs: The builder's own arguments (dropout, pixel moments).

    Returns:
        An uncompiled Keras model.

    Raises:
        ConfigError: if no builder has that name.
    """
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_BUILDERS)}") from None
    model = builder(tuple(input_shape), num_classes, **kwargs)
    return with_test_time_flip(model) if test_time_flip else model
