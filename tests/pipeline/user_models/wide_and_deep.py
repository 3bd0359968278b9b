"""A user's model function: the documented contract, nothing else from the pipeline but `task_output`."""

import keras

from pipeline.training.features import concat_flat
from pipeline.training.models import task_output


def build(problem, inputs, encoded, config):
    """Wide (the encodings straight to the output) and deep (two dense layers) side by side."""
    features = concat_flat(problem, encoded)
    deep = keras.layers.Dense(32, activation="relu", name="deep_1")(features)
    deep = keras.layers.Dense(16, activation="relu", name="deep_2")(deep)
    both = keras.layers.Concatenate(name="wide_and_deep")([features, deep])
    return keras.Model(inputs, task_output(problem, both), name="wide_and_deep")


def wrong_output(problem, inputs, encoded, config):
    """Breaks the contract: always 5 softmax outputs, whatever the task."""
    x = keras.layers.Dense(5, activation="softmax")(concat_flat(problem, encoded))
    return keras.Model(inputs, x)


def not_a_model(problem, inputs, encoded, config):
    return "a string"


def crashes(problem, inputs, encoded, config):
    raise RuntimeError("my layer is broken")
