import keras
import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.training.models import MODEL_BUILDERS, build_model
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


def test_mixed_precision_keeps_float32_output():
    with dtype_policy("mixed_float16"):
        model = build_model("cnn", (28, 28, 1), 10, dropout=0.3, pixel_mean=0.0, pixel_variance=1.0)
    assert keras.config.dtype_policy().name == "float32"  # Restored after the block.
    assert model.get_layer("logits").compute_dtype == "float16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.predict(np.zeros((1, 28, 28, 1), np.float32), verbose=0).dtype == np.float32


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="unknown model 'vit'; choose one of: cnn, mlp"):
        build_model("vit", (28, 28, 1), 10)
