"""Model builders, chosen by name.

Every model takes raw pixel values (0-255, as float or uint8) and normalises them
with its own first layer, so the exported model needs no preprocessing outside it.
The last layer computes softmax in float32, which keeps mixed precision stable.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

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


def _conv_block(x, filters: int):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    return layers.MaxPooling2D()(x)


def build_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    dropout: float,
    pixel_mean: float,
    pixel_variance: float,
) -> keras.Model:
    """A small CNN: two conv/batch-norm/pool blocks and a dense head with dropout.

    Args:
        input_shape: (height, width, channels).
        num_classes: Number of output classes.
        dropout: Dropout rate before and inside the head.
        pixel_mean: Mean of the training pixels (0-255 scale).
        pixel_variance: Variance of the training pixels.

    Returns:
        An uncompiled Keras model with input 'images' and output 'probabilities'.
    """
    inputs = keras.Input(shape=input_shape, name="images")
    x = _normalizer(pixel_mean, pixel_variance)(inputs)
    x = _conv_block(x, 32)
    x = _conv_block(x, 64)
    x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, _classifier_head(x, num_classes, dropout), name="cnn")


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


MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {"cnn": build_cnn, "mlp": build_mlp}


def build_model(name: str, input_shape, num_classes: int, **kwargs) -> keras.Model:
    """Builds the model registered under `name`.

    Raises:
        ConfigError: if no builder has that name.
    """
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_BUILDERS)}") from None
    return builder(tuple(input_shape), num_classes, **kwargs)
