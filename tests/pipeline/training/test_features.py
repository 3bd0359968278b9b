"""The encoding layers' statistics come from one streamed pass over the training split."""

import numpy as np
import pytest

from pipeline.core.config import PipelineConfig
from pipeline.core.problem import CATEGORICAL, FLOAT, NUMERIC, REGRESSION, STRING, TEXT, FeatureSpec, ProblemSpec
from pipeline.training import features


def _batches(columns, labels, size):
    for start in range(0, len(labels), size):
        yield {k: v[start : start + size] for k, v in columns.items()}, labels[start : start + size]


def test_streamed_statistics_equal_the_whole_splits_and_texts_are_a_bounded_even_sample(monkeypatch):
    monkeypatch.setattr(features, "TEXT_ADAPT_ROWS", 10)
    rng = np.random.default_rng(0)
    rows = 35
    sizes = rng.normal(5, 2, rows).astype(np.float32)
    sizes[3] = np.nan
    colours = np.empty(rows, dtype=object)
    colours[:] = ["red", "red", "blue", "", "green"] * 7
    notes = np.empty(rows, dtype=object)
    notes[:] = [f"note number {i}" for i in range(rows)]
    labels = rng.normal(100, 10, rows).astype(np.float32)
    problem = ProblemSpec(
        REGRESSION,
        "price",
        "price",
        (
            FeatureSpec("size", "size", NUMERIC, FLOAT),
            FeatureSpec("colour", "colour", CATEGORICAL, STRING),
            FeatureSpec("note", "note", TEXT, STRING),
        ),
    )
    columns = {"size": sizes, "colour": colours, "note": notes}
    stats, (mean, std) = features.streamed_feature_statistics(
        problem, _batches(columns, labels, 8), rows, PipelineConfig(max_vocabulary=2)
    )
    present = sizes[~np.isnan(sizes)].astype(np.float64)
    assert stats["size"].missing == 1 and stats["size"].count == rows
    assert stats["size"].mean == pytest.approx(present.mean()) and stats["size"].variance == pytest.approx(
        present.var()
    )
    assert (stats["size"].minimum, stats["size"].maximum) == (np.nanmin(sizes), np.nanmax(sizes))
    assert stats["colour"].vocabulary == ["red", ""] and stats["colour"].missing == 7  # ties broken by value
    assert stats["note"].texts.tolist() == [f"note number {i}" for i in range(0, rows, 4)]  # every 4th of 35
    assert (mean, std) == (pytest.approx(labels.astype(np.float64).mean()), pytest.approx(labels.std(), rel=1e-5))


def _encode(values, **range_):
    encoder = features.NumericEncoder(10.0, 4.0, missing_indicator=True, **range_)
    return np.asarray(encoder(np.asarray(values, np.float32)))


def test_numbers_outside_the_training_range_are_clipped_to_it_before_standardising():
    values = [2.0, 4.0, 10.0, 16.0, 1e6, -1e6, np.nan]
    clipped = _encode(values, minimum=4.0, maximum=16.0)
    # (value - mean 10) / std 2, after clipping to [4, 16]; NaN is the mean, flagged missing.
    np.testing.assert_allclose(clipped[:, 0], [-3.0, -3.0, 0.0, 3.0, 3.0, -3.0, 0.0])
    np.testing.assert_array_equal(clipped[:, 1], [0, 0, 0, 0, 0, 0, 1])
    unclipped = _encode(values)  # no range: standardised as they are
    np.testing.assert_allclose(unclipped[:4, 0], [-4.0, -3.0, 0.0, 3.0])
    assert unclipped[4, 0] == pytest.approx(499995.0)
    with pytest.raises(ValueError, match="both minimum and maximum"):
        features.NumericEncoder(0.0, 1.0, minimum=1.0)


def test_the_range_survives_saving_and_clip_numeric_features_false_keeps_values_as_they_are(tmp_path):
    import keras

    problem = ProblemSpec(REGRESSION, "price", "price", (FeatureSpec("depth", "depth", NUMERIC, FLOAT),))
    stats = {"depth": features.FeatureStatistics("depth", NUMERIC, 5, 0, 4.0, 1.0, minimum=2.0, maximum=6.0)}

    def encoder(config):
        inputs = features.model_inputs(problem)
        encoded = features.encode_features(problem, inputs, stats, {}, config)
        return keras.Model(inputs, encoded["depth"])

    far = {"depth": np.array([31.8, 6.0], np.float32)}
    clipping = encoder(PipelineConfig())
    np.testing.assert_allclose(clipping.predict(far, verbose=0)[:, 0], [2.0, 2.0])
    clipping.save(tmp_path / "encoder.keras")
    loaded = keras.models.load_model(tmp_path / "encoder.keras")
    np.testing.assert_allclose(loaded.predict(far, verbose=0)[:, 0], [2.0, 2.0])
    plain = encoder(PipelineConfig(clip_numeric_features=False))
    np.testing.assert_allclose(plain.predict(far, verbose=0)[:, 0], [27.8, 2.0], rtol=1e-6)
