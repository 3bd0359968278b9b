"""Model builders: the built-in ones by name, or the user's own function by import path.

The contract every builder follows (built-in or `model: package.module:function`):

    def build(problem, inputs, encoded, config) -> keras.Model:
        x = keras.layers.Dense(64, activation="relu")(concat_flat(problem, encoded))
        return keras.Model(inputs, task_output(problem, x))

    problem  the `ProblemSpec` (features, label, task, class names)
    inputs   {feature key: keras.Input}: raw features (images float32 [N,H,W,C] in 0-255)
    encoded  {feature key: encoded tensor}: normalised images, standardised numbers,
             one-hot / embedded categories, TF-IDF text (`pipeline.training.features`)
    config   the `PipelineConfig` (dropout, ...)

It returns an uncompiled model on exactly those `inputs` that ends in the task's output:
binary [N,1] probability of the positive class (sigmoid), multiclass [N,K] probabilities
(softmax), regression [N,1] in standard units of the label (the pipeline rescales it to the
label's own units). `task_output` builds that last layer. The pipeline compiles, trains and
exports the model; preprocessing stays inside it.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers, ops

from pipeline.core.config import AUTO, PipelineConfig
from pipeline.core.errors import ConfigError
from pipeline.core.problem import BINARY, IMAGE, REGRESSION, TEXT, ProblemSpec
from pipeline.training.features import concat_flat


def task_output(problem: ProblemSpec, x) -> keras.KerasTensor:
    """The last layer for the task, computed in float32 (stable under mixed precision).

    Returns:
        binary: sigmoid [N,1]; multiclass: softmax [N,K]; regression: linear [N,1].
    """
    if problem.task == REGRESSION:
        return layers.Dense(1, dtype="float32", name="prediction")(x)
    if problem.task == BINARY:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    x = layers.Dense(problem.num_classes, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name="probabilities")(x)


# Keras's default momentum of the moving mean and variance, kept when an epoch is long enough.
BATCH_NORM_MOMENTUM = 0.99
# What one epoch may leave of the moving statistics' earlier values.
BATCH_NORM_EPOCH_RESIDUE = 0.05


def batch_norm_momentum(steps_per_epoch: int) -> float:
    """The BatchNormalization momentum for an epoch of `steps_per_epoch` training steps.

    At Keras's 0.99 the moving mean and variance need about 300 steps to forget their
    starting values (0 and 1) down to 5%. On a few thousand images (tens of steps an epoch),
    the first epochs are then validated on statistics far from the data's: validation accuracy
    falls while training accuracy rises, and early stopping ends the run on it. So an epoch of
    fewer steps gets a lower momentum, one that leaves at most 5% of the statistics' values of
    an epoch earlier. Training itself (batch statistics) is unchanged; only inference is.

    Args:
        steps_per_epoch: Training steps in one epoch (at least 1).

    Returns:
        0.99 for about 300 steps an epoch or more, else 0.05 ** (1 / steps_per_epoch).
    """
    return min(BATCH_NORM_MOMENTUM, BATCH_NORM_EPOCH_RESIDUE ** (1 / max(1, steps_per_epoch)))


def set_batch_norm_momentum(model: keras.Model, momentum: float) -> None:
    """Sets the momentum of the model's BatchNormalization layers (its own, not nested models')."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum


def _dense_block(x, units: int, dropout: float):
    x = layers.Dense(units, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    return layers.Dropout(dropout)(x)


def _conv_bn_relu(x, filters: int):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def _conv_block(x, filters: int, convs: int = 1):
    for _ in range(convs):
        x = _conv_bn_relu(x, filters)
    return layers.MaxPooling2D()(x)


def _single_image(problem: ProblemSpec, builder: str):
    image = problem.single_image
    if image is None:
        kinds = ", ".join(f"{f.key} ({f.kind})" for f in problem.features)
        raise ConfigError(f"model {builder!r} takes exactly one image feature; this problem has: {kinds}")
    return image


def build_cnn(problem, inputs, encoded, config, *, second_block_convs: int = 1, name: str = "cnn") -> keras.Model:
    """A small CNN for one image input: two conv/batch-norm/pool blocks and a dense head with dropout.

    `second_block_convs` 64-filter convolutions come before the second pooling ('cnn_deep': 2,
    about 1.6 times the training cost per image of 1).
    """
    image = _single_image(problem, name)
    x = _conv_block(encoded[image.key], 32)
    x = _conv_block(x, 64, convs=second_block_convs)
    x = layers.Dropout(config.dropout)(x)
    x = layers.Flatten()(x)
    x = _dense_block(x, 128, config.dropout)
    return keras.Model(inputs, task_output(problem, x), name=name)


def build_mlp(problem, inputs, encoded, config) -> keras.Model:
    """A multi-layer perceptron for one image input: flatten, dense 256 with batch norm, dense head."""
    image = _single_image(problem, "mlp")
    x = _dense_block(layers.Flatten()(encoded[image.key]), 256, config.dropout)
    x = _dense_block(x, 128, config.dropout)
    return keras.Model(inputs, task_output(problem, x), name="mlp")


def _no_images(problem: ProblemSpec, builder: str) -> None:
    if problem.image_features:
        raise ConfigError(f"model {builder!r} takes no image features: use 'multimodal' (or 'cnn' for one image)")


def build_tabular(problem, inputs, encoded, config, *, widths=(256, 128), name: str = "tabular") -> keras.Model:
    """An MLP over the encoded features side by side: dense blocks with batch norm and dropout."""
    _no_images(problem, name)
    x = concat_flat(problem, encoded)
    for units in widths:
        x = _dense_block(x, units, config.dropout)
    return keras.Model(inputs, task_output(problem, x), name=name)


def build_multimodal(problem, inputs, encoded, config) -> keras.Model:
    """Images through small conv towers (global average pooling), side by side with the other features."""
    towers = []
    for feature in problem.image_features:
        x = _conv_block(encoded[feature.key], 32)
        x = _conv_block(x, 64)
        towers.append(layers.GlobalAveragePooling2D()(x))
    flat = concat_flat(problem, encoded)
    parts = towers + ([flat] if flat is not None else [])
    x = parts[0] if len(parts) == 1 else layers.Concatenate()(parts)
    x = _dense_block(x, 128, config.dropout)
    return keras.Model(inputs, task_output(problem, x), name="multimodal")


MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "cnn": build_cnn,
    "cnn_deep": functools.partial(build_cnn, second_block_convs=2, name="cnn_deep"),  # The quality preset's.
    "mlp": build_mlp,
    "tabular": build_tabular,
    # Bag of words (TF-IDF) into a wider first layer: the classic strong baseline for text.
    "text": functools.partial(build_tabular, widths=(512, 128), name="text"),
    "multimodal": build_multimodal,
}


def default_builder(problem: ProblemSpec) -> str:
    """The built-in model 'auto' picks: cnn for one image, multimodal for images among other
    features, text when a text feature is there, tabular otherwise."""
    if problem.single_image:
        return "cnn"
    if problem.image_features:
        return "multimodal"
    return "text" if any(f.kind == TEXT for f in problem.features) else "tabular"


def _import_function(path: str) -> Callable[..., keras.Model]:
    """Imports 'package.module:function' (from the working folder too, as `python -m` would)."""
    module_name, _, function_name = path.partition(":")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or not module_name.startswith(err.name) or str(Path.cwd()) in sys.path:
                raise
            sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001  (the user's module may fail in any way)
        raise ConfigError(f"model {path!r}: cannot import {module_name!r}: {type(err).__name__}: {err}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"model {path!r}: module {module_name!r} has no function {function_name!r}")
    return function


def resolve_builder(name: str, problem: ProblemSpec) -> tuple[str, Callable[..., keras.Model]]:
    """The builder a config's `model` names: (resolved name, function).

    Raises:
        ConfigError: for an unknown name or an import path that does not import.
    """
    if name == AUTO:
        name = default_builder(problem)
    if name in MODEL_BUILDERS:
        return name, MODEL_BUILDERS[name]
    if ":" in name:
        return name, _import_function(name)
    raise ConfigError(
        f"unknown model {name!r}; choose one of: {', '.join(MODEL_BUILDERS)} or 'package.module:function'"
    )


def expected_output_width(problem: ProblemSpec) -> int:
    return problem.num_classes if problem.task not in (BINARY, REGRESSION) else 1


def check_model(model, name: str, problem: ProblemSpec, inputs: dict) -> None:
    """Checks that a builder kept the contract: a Keras model on the given inputs, ending in the task's output.

    Raises:
        ConfigError: naming the builder and what is wrong.
    """
    if not isinstance(model, keras.Model):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not a keras.Model")
    given = model.input if isinstance(model.input, dict) else None
    if given is None or set(given) != set(inputs):
        raise ConfigError(
            f"model {name!r} must take the inputs it is given, as a dict (keras.Model(inputs, outputs)); "
            f"expected keys {sorted(inputs)}"
        )
    shape = tuple(model.output.shape) if not isinstance(model.output, (list, dict)) else None
    width = expected_output_width(problem)
    if shape is None or len(shape) != 2 or shape[1] != width:
        what = {BINARY: "sigmoid probability", REGRESSION: "value"}.get(problem.task, "softmax probabilities")
        raise ConfigError(
            f"model {name!r} must end in the {problem.task} task's output: [N, {width}] ({what}; "
            f"pipeline.training.models.task_output builds it), got {shape}"
        )


@keras.saving.register_keras_serializable(package="mlops")
class LabelScale(layers.Layer):
    """Brings a regression output from standard units to the label's own: y * std + mean."""

    def __init__(self, mean: float, std: float, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mean = float(mean)
        self.std = float(std)

    def call(self, values):
        return ops.cast(values, "float32") * self.std + self.mean

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def with_label_scale(model: keras.Model, mean: float, std: float) -> keras.Model:
    """Wraps a regression model so it answers in the label's units."""
    outputs = LabelScale(mean, std, name="prediction_in_label_units")(model(model.input))
    return keras.Model(model.input, outputs, name=model.name)


@keras.saving.register_keras_serializable(package="mlops")
class MirrorAveraged(keras.layers.Layer):
    """Runs a model on images and on their horizontal mirrors and averages its outputs (at inference).

    While training it runs the wrapped model once, as is: mirrored training images come from
    augmentation, not from here.

    Args:
        inner: The model to wrap; its output is averaged.
        key: The name of the inner model's image input.
    """

    def __init__(self, inner: keras.Model, key: str = "images", **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.key = key

    def build(self, input_shape):
        self.inner.build({self.key: input_shape})

    def call(self, images, training=None):
        outputs = self.inner({self.key: images}, training=training)
        if training:
            return outputs
        return (outputs + self.inner({self.key: ops.flip(images, axis=2)}, training=False)) / 2

    def compute_output_shape(self, input_shape):
        return self.inner.compute_output_shape({self.key: input_shape})

    def get_config(self):
        return {**super().get_config(), "inner": keras.saving.serialize_keras_object(self.inner), "key": self.key}

    @classmethod
    def from_config(cls, config):
        return cls(inner=keras.saving.deserialize_keras_object(config.pop("inner")), **config)


def with_test_time_flip(model: keras.Model, problem: ProblemSpec) -> keras.Model:
    """Wraps a model so that inference averages each image's probabilities with its mirror's.

    Args:
        model: A model with one image input and class probabilities as output.
        problem: The problem spec (its one image feature names the input).

    Returns:
        A model with the same input and output, named like the original.

    Raises:
        ConfigError: if the problem has not exactly one (image) feature.
    """
    image = problem.single_image
    if image is None:
        raise ConfigError("test_time_flip mirrors images: it needs a problem with exactly one image feature")
    inputs = {image.key: keras.Input(shape=image.shape, name=image.key)}
    outputs = MirrorAveraged(model, image.key, dtype="float32", name="probabilities")(inputs[image.key])
    return keras.Model(inputs, outputs, name=model.name)


def load_model(path) -> keras.Model:
    """Loads a model saved by the train stage (this module registers its custom layers)."""
    import pipeline.training.features  # noqa: F401  (registers NumericEncoder)

    return keras.models.load_model(path)


def build_model(
    config: PipelineConfig,
    problem: ProblemSpec,
    statistics: dict,
    image_moments: dict[str, tuple[float, float]],
    label_moments: tuple[float, float] | None = None,
    steps_per_epoch: int | None = None,
) -> tuple[str, keras.Model]:
    """Builds the configured model on the problem's inputs and encodings.

    Args:
        config: `model` names the builder; `test_time_flip` wraps it.
        problem: The problem spec.
        statistics: The training split's `streamed_feature_statistics`.
        image_moments: {image key: (pixel mean, pixel variance)} of the training split.
        label_moments: Regression: (mean, std) of the training labels.
        steps_per_epoch: Training steps an epoch: a built-in model's batch norm momentum
            follows it (`batch_norm_momentum`); None keeps Keras's default. A model of your own
            keeps the momentum its builder gave.

    Returns:
        (the builder's resolved name, an uncompiled Keras model taking raw features).

    Raises:
        ConfigError: if no builder has that name, or it breaks the contract.
    """
    from pipeline.training.features import encode_features, model_inputs

    name, builder = resolve_builder(config.model, problem)
    inputs = model_inputs(problem)
    encoded = encode_features(problem, inputs, statistics, image_moments, config)
    try:
        model = builder(problem, inputs, encoded, config)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001  (a user's builder may fail in any way)
        if name in MODEL_BUILDERS:
            raise
        raise ConfigError(f"model {name!r} failed to build: {type(err).__name__}: {err}") from err
    check_model(model, name, problem, inputs)
    if name in MODEL_BUILDERS and steps_per_epoch is not None:
        set_batch_norm_momentum(model, batch_norm_momentum(steps_per_epoch))
    if problem.task == REGRESSION and label_moments is not None:
        model = with_label_scale(model, *label_moments)
    if config.test_time_flip:
        model = with_test_time_flip(model, problem)
    return name, model


def uses_images(problem: ProblemSpec) -> bool:
    return any(f.kind == IMAGE for f in problem.features)
