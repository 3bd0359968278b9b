"""The column-wise Example encoder writes what TFDS's serializer writes (as parsed protos)."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.problem import (
    BINARY,
    CATEGORICAL,
    FLOAT,
    INT,
    NUMERIC,
    REGRESSION,
    STRING,
    TEXT,
    FeatureSpec,
    ProblemSpec,
)
from pipeline.data.example_encoder import serialize_rows, varint
from pipeline.data.snapshot_builder import features_dict


def _problem(task):
    features = (
        FeatureSpec("income", "income", NUMERIC, FLOAT),
        FeatureSpec("rooms", "rooms", NUMERIC, INT),
        FeatureSpec("state", "state", CATEGORICAL, STRING),
        FeatureSpec("note", "note", TEXT, STRING),
    )
    return ProblemSpec(task, "y", "y", features, ("no", "yes") if task == BINARY else ())


def _chunk(rows=300, seed=0):
    rng = np.random.default_rng(seed)
    income = rng.normal(0, 1e6, rows).astype(np.float32)
    income[:5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    rooms = rng.integers(-(2**62), 2**62, rows)
    rooms[:6] = [0, 1, 127, 128, -1, np.iinfo(np.int64).min]
    words = ["", "CA", "é", "naïve ☃", "x" * 200, "long " * 40]
    state = np.asarray([words[i % len(words)] for i in range(rows)], dtype=object)
    note = np.asarray([" ".join(rng.choice(["a", "bc", "ü"], i % 9)) for i in range(rows)], dtype=object)
    return {"income": income, "rooms": rooms, "state": state, "note": note}


@pytest.mark.parametrize("task", [BINARY, REGRESSION])
def test_each_record_parses_to_the_example_tfds_builds(task):
    problem = _problem(task)
    features = _chunk()
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300) if task == BINARY else rng.normal(0, 1, 300).astype(np.float32)
    tfds_features = features_dict(problem)
    records = serialize_rows(problem, features, labels).to_list()
    assert len(records) == 300
    for row, record in enumerate(records):
        example = {key: values[row] for key, values in features.items()} | {"y": labels[row]}
        expected = tf.train.Example.FromString(tfds_features.serialize_example(example))
        assert tf.train.Example.FromString(record) == expected, row
        assert len(record) == len(tfds_features.serialize_example(example))
    decoded = tfds_features.deserialize_example_np(records[7])
    assert decoded["state"] == features["state"][7].encode() and decoded["rooms"] == features["rooms"][7]


def test_varints_and_bad_class_ids():
    assert varint(0) == b"\x00" and varint(127) == b"\x7f" and varint(300) == b"\xac\x02"
    problem = _problem(BINARY)
    with pytest.raises(ValueError, match=r"class ids must be in 0..1"):
        serialize_rows(problem, _chunk(), np.asarray([0, 2, 1] * 100))
