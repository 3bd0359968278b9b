"""The example's own model: the function `penguins.yaml` names (`model: examples.penguins.model:build`).

It follows the pipeline's model contract (pipeline/training/models.py): it gets the problem
spec, one Keras input per feature, the encoded features (standardised numbers with a missing
flag, one-hot islands and sexes) and the config, and returns an uncompiled model ending in
the task's output. Everything else (compiling, training, the gate, export, serving) is the
pipeline's.
"""

import keras

from pipeline.training.features import concat_flat
from pipeline.training.models import task_output


def build(problem, inputs, encoded, config):
    """A small residual MLP: 344 penguins need few weights, and dropout keeps it from memorising them."""
    features = concat_flat(problem, encoded)
    hidden = keras.layers.Dense(64, activation="relu", name="hidden")(features)
    hidden = keras.layers.Dropout(config.dropout)(hidden)
    residual = keras.layers.Dense(64, activation="relu", name="residual")(hidden)
    x = keras.layers.Add(name="skip")([hidden, residual])
    return keras.Model(inputs, task_output(problem, x), name="penguins_mlp")
