import sys
import types

import keras
import numpy as np
import pytest

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ConfigError
from pipeline.core.problem import FeatureSpec, ProblemSpec, image_classification
from pipeline.training.features import FeatureStatistics
from pipeline.training.models import (
    BATCH_NORM_MOMENTUM,
    MODEL_BUILDERS,
    batch_norm_momentum,
    build_model,
    default_builder,
    load_model,
)
from pipeline.training.train import dtype_policy

IMAGES = image_classification((28, 28, 1), [f"c{i}" for i in range(10)])
MOMENTS = {"images": (72.9, 8000.0)}
TABLE = ProblemSpec(
    task="multiclass",
    label="species",
    label_key="species",
    features=(
        FeatureSpec("bill length", "bill_length", "numeric", "float32"),
        FeatureSpec("island", "island", "categorical", "string"),
        FeatureSpec("year", "year", "categorical", "int64"),
    ),
    class_names=("Adelie", "Chinstrap", "Gentoo"),
)
TABLE_STATISTICS = {
    "bill_length": FeatureStatistics("bill_length", "numeric", 10, 1, mean=44.0, variance=30.0),
    "island": FeatureStatistics("island", "categorical", 10, 0, vocabulary=["Biscoe", "Dream", ""]),
    "year": FeatureStatistics("year", "categorical", 10, 0, vocabulary=[2007, 2008]),
}


def _predict(model, rows):
    """Keras's predict takes no NumPy string arrays: feed rows through tf.data, as the pipeline does."""
    import tensorflow as tf

    return model.predict(tf.data.Dataset.from_tensor_slices(rows).batch(8), verbose=0)


def _config(**values):
    return PipelineConfig(dropout=0.3, **values).validate()


def _image_model(name, **values):
    return build_model(_config(model=name, **values), IMAGES, {}, MOMENTS)[1]


@pytest.mark.parametrize("name", ["cnn", "cnn_deep", "mlp", "multimodal"])
def test_image_builders_take_raw_pixels_and_return_probabilities(name):
    model = _image_model(name)
    assert model.get_layer("normalize") is not None  # Normalisation lives inside the model.
    probabilities = model.predict({"images": np.full((3, 28, 28, 1), 200, np.float32)}, verbose=0)
    assert probabilities.shape == (3, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["tabular", "text"])
def test_table_builders_take_raw_features_with_missing_values(name):
    _, model = build_model(_config(model=name), TABLE, TABLE_STATISTICS, {})
    rows = {
        "bill_length": np.array([39.1, np.nan, 50.0], np.float32),  # NaN: missing, imputed inside the model
        "island": np.array(["Biscoe", "", "Atlantis"]),  # '' missing, 'Atlantis' never seen: the unknown slot
        "year": np.array([2007, 2008, 2031], np.int64),
    }
    probabilities = _predict(model, rows)
    assert probabilities.shape == (3, 3) and np.isfinite(probabilities).all()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_auto_picks_a_builder_for_the_kind_of_data():
    text = ProblemSpec("binary", "y", "y", (FeatureSpec("review", "review", "text", "string"),), ("neg", "pos"))
    mixed = ProblemSpec("regression", "y", "y", (*IMAGES.features, TABLE.features[0]))
    assert [default_builder(p) for p in (IMAGES, TABLE, text, mixed)] == ["cnn", "tabular", "text", "multimodal"]


def test_image_builders_refuse_tables_and_table_builders_refuse_images():
    with pytest.raises(ConfigError, match="model 'cnn' takes exactly one image feature; this problem has: bill_length"):
        build_model(_config(model="cnn"), TABLE, TABLE_STATISTICS, {})
    with pytest.raises(ConfigError, match="model 'tabular' takes no image features: use 'multimodal'"):
        build_model(_config(model="tabular"), IMAGES, {}, MOMENTS)


def test_cnn_has_batch_norm_and_dropout():
    kinds = {type(layer).__name__ for layer in _image_model("cnn").layers}
    assert {"Conv2D", "BatchNormalization", "Dropout", "MaxPooling2D"} <= kinds


def _batch_norm_momenta(model):
    return {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}


def test_batch_norm_momentum_lets_one_epoch_forget_the_start_on_small_data():
    # Fashion-MNIST's demo (54,000 images in batches of 128: 422 steps) keeps Keras's default.
    assert batch_norm_momentum(422) == BATCH_NORM_MOMENTUM == 0.99
    for steps in (1, 2, 38, 250):  # 38: 4,800 images in batches of 128
        momentum = batch_norm_momentum(steps)
        assert momentum < BATCH_NORM_MOMENTUM
        assert momentum**steps == pytest.approx(0.05)  # an epoch leaves 5% of the moving statistics' past
    assert batch_norm_momentum(0) == pytest.approx(0.05)


@pytest.mark.parametrize("name", ["cnn", "mlp", "multimodal"])
def test_built_in_image_models_take_the_momentum_of_the_epoch_length(name):
    model = build_model(_config(model=name), IMAGES, {}, MOMENTS, steps_per_epoch=38)[1]
    assert _batch_norm_momenta(model) == {batch_norm_momentum(38)}
    assert _batch_norm_momenta(_image_model(name)) == {BATCH_NORM_MOMENTUM}  # no steps given: Keras's default


def test_built_in_table_model_takes_the_momentum_and_a_users_model_keeps_its_own(monkeypatch):
    _, table_model = build_model(_config(model="tabular"), TABLE, TABLE_STATISTICS, {}, steps_per_epoch=2)
    assert _batch_norm_momenta(table_model) == {batch_norm_momentum(2)}

    def users_builder(problem, inputs, encoded, config):
        from pipeline.training.features import concat_flat
        from pipeline.training.models import task_output

        x = keras.layers.BatchNormalization(momentum=0.8)(concat_flat(problem, encoded))
        return keras.Model(inputs, task_output(problem, x))

    module = types.ModuleType("users_models")
    module.build = users_builder
    monkeypatch.setitem(sys.modules, "users_models", module)
    _, own = build_model(_config(model="users_models:build"), TABLE, TABLE_STATISTICS, {}, steps_per_epoch=2)
    assert _batch_norm_momenta(own) == {0.8}


def test_cnn_deep_adds_a_convolution_before_the_second_pooling():
    def convolutions(name):
        return [layer.filters for layer in _image_model(name).layers if isinstance(layer, keras.layers.Conv2D)]

    assert convolutions("cnn") == [32, 64]
    assert convolutions("cnn_deep") == [32, 64, 64]


def test_model_names_in_the_config_match_the_builders():
    from pipeline.core.config import MODEL_NAMES

    assert sorted(MODEL_NAMES) == sorted(["auto", *MODEL_BUILDERS])


def test_mixed_precision_keeps_float32_output():
    with dtype_policy("mixed_float16"):
        model = _image_model("cnn")
    assert keras.config.dtype_policy().name == "float32"  # Restored after the block.
    assert model.get_layer("logits").compute_dtype == "float16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.predict({"images": np.zeros((1, 28, 28, 1), np.float32)}, verbose=0).dtype == np.float32


def test_binary_and_regression_heads():
    binary = ProblemSpec("binary", "y", "y", TABLE.features, ("no", "yes"))
    regression = ProblemSpec("regression", "y", "y", TABLE.features)
    rows = {"bill_length": np.array([40.0], np.float32), "island": np.array(["Dream"]), "year": np.array([2008])}
    _, classifier = build_model(_config(), binary, TABLE_STATISTICS, {})
    assert classifier.output_shape == (None, 1) and 0 <= _predict(classifier, rows)[0, 0] <= 1
    _, regressor = build_model(_config(), regression, TABLE_STATISTICS, {}, label_moments=(3000.0, 500.0))
    # The body answers in standard units; the last layer brings them to the label's (around 3000 here).
    assert regressor.layers[-1].name == "prediction_in_label_units"
    assert 500 < _predict(regressor, rows)[0, 0] < 5500


def _flip_model():
    return _image_model("cnn", dropout=0.0, test_time_flip=True)


def test_test_time_flip_averages_each_image_with_its_mirror_at_inference_only():
    model = build_model(PipelineConfig(dropout=0.0, test_time_flip=True).validate(), IMAGES, {}, MOMENTS)[1]
    inner = model.get_layer("probabilities").inner
    images = np.random.default_rng(0).uniform(0, 255, (6, 28, 28, 1)).astype(np.float32)
    mirrored = images[:, :, ::-1, :]

    def predict(network, batch):
        return network.predict({"images": batch}, verbose=0)

    expected = (predict(inner, images) + predict(inner, mirrored)) / 2
    np.testing.assert_allclose(predict(model, images), expected, atol=1e-6)
    np.testing.assert_allclose(predict(model, mirrored), expected, atol=1e-6)  # Mirror-invariant.
    # Training runs the inner model once (batch statistics, no dropout here: deterministic).
    np.testing.assert_allclose(
        model({"images": images}, training=True), inner({"images": images}, training=True), atol=1e-6
    )
    assert model.output_shape == (None, 10)


def test_test_time_flip_needs_one_image_feature():
    with pytest.raises(ConfigError, match="test_time_flip mirrors images"):
        build_model(_config(test_time_flip=True), TABLE, TABLE_STATISTICS, {})


def test_test_time_flip_model_saves_and_loads(tmp_path):
    model = build_model(PipelineConfig(dropout=0.0, test_time_flip=True).validate(), IMAGES, {}, MOMENTS)[1]
    images = {"images": np.full((2, 28, 28, 1), 120, np.float32)}
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(
        load_model(tmp_path / "model.keras").predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )


def test_table_model_saves_and_loads_with_its_lookup_layers(tmp_path):
    _, model = build_model(_config(), TABLE, TABLE_STATISTICS, {})
    rows = {
        "bill_length": np.array([np.nan, 41.0], np.float32),
        "island": np.array(["Dream", "x"]),
        "year": np.array([2007, 1]),
    }
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(_predict(load_model(tmp_path / "model.keras"), rows), _predict(model, rows), atol=1e-6)
