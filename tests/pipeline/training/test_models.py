import keras
import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.training.models import MODEL_BUILDERS, build_model, load_model
from pipeline.training.train import dtype_policy


@pytest.mark.parametrize("name", sorted(MODEL_BUILDERS))
def test_builders_take_raw_pixels_and_return_probabilities(name):
    model = build_model(name, (28, 28, 1), 10, dropout=0.3, pixel_mean=72.9, pixel_variance=8000.0)
    assert model.layers[1].name == "normalize"  # Normalisation lives inside the model.
    probabilities = model.predict(np.full((3, 28, 28, 1), 200, np.float32), verbose=0)
    assert probabilities.shape == (3, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_cnn_has_batch_norm_and_dropout():
    model = build_model("cnn", (28, 28, 1), 10, dropout=0.3, pixel_mean=0.0, pixel_variance=1.0)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Conv2D", "BatchNormalization", "Dropout", "MaxPooling2D"} <= kinds


def test_cnn_deep_adds_a_convolution_before_the_second_pooling():
    def convolutions(name):
        model = build_model(name, (28, 28, 1), 10, dropout=0.3, pixel_mean=0.0, pixel_variance=1.0)
        return [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]

    assert convolutions("cnn") == [32, 64]
    assert convolutions("cnn_deep") == [32, 64, 64]


def test_model_names_in_the_config_match_the_builders():
    from pipeline.core.config import MODEL_NAMES

    assert sorted(MODEL_NAMES) == sorted(MODEL_BUILDERS)


def test_mixed_precision_keeps_float32_output():
    with dtype_policy("mixed_float16"):
        model = build_model("cnn", (28, 28, 1), 10, dropout=0.3, pixel_mean=0.0, pixel_variance=1.0)
    assert keras.config.dtype_policy().name == "float32"  # Restored after the block.
    assert model.get_layer("logits").compute_dtype == "float16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.predict(np.zeros((1, 28, 28, 1), np.float32), verbose=0).dtype == np.float32


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="unknown model 'vit'; choose one of: cnn, cnn_deep, mlp"):
        build_model("vit", (28, 28, 1), 10)


def _flip_model():
    return build_model("cnn", (28, 28, 1), 10, dropout=0.0, pixel_mean=72.9, pixel_variance=8000.0, test_time_flip=True)


def test_test_time_flip_averages_each_image_with_its_mirror_at_inference_only():
    model = _flip_model()
    inner = model.get_layer("probabilities").inner
    images = np.random.default_rng(0).uniform(0, 255, (6, 28, 28, 1)).astype(np.float32)
    mirrored = images[:, :, ::-1, :]
    expected = (inner.predict(images, verbose=0) + inner.predict(mirrored, verbose=0)) / 2
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(model.predict(mirrored, verbose=0), expected, atol=1e-6)  # Mirror-invariant.
    # Training runs the inner model once (batch statistics, no dropout here: deterministic).
    np.testing.assert_allclose(model(images, training=True), inner(images, training=True), atol=1e-6)
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)


def test_test_time_flip_model_saves_and_loads(tmp_path):
    model = _flip_model()
    images = np.full((2, 28, 28, 1), 120, np.float32)
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(
        load_model(tmp_path / "model.keras").predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )
