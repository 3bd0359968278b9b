import pytest

from pipeline.core.config import PipelineConfig, load_config, parse_value
from pipeline.core.errors import ConfigError


def test_defaults_are_valid_and_point_at_fashion_mnist():
    config = PipelineConfig().validate()
    assert config.data_source == "idx:/usr/share/datasets/fashion-mnist"
    assert config.model == "cnn"
    assert config.model_dir.name == "fashion_mnist"


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("epochs: 3\nmodel: mlp\nclass_names: [a, b]\n")
    config = load_config(path, {"epochs": 5})
    assert (config.epochs, config.model, config.class_names) == (5, "mlp", ["a", "b"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": -1}, "epochs must be >= 1, got -1"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"model": "resnet"}, "unknown model 'resnet'; choose one of: cnn, cnn_deep, mlp"),
        ({"batch_size": 2.5}, "batch_size must be int"),
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"min_accuracy": 1.5}, "min_accuracy must be <= 1"),
        ({"data_source": "/some/dir"}, "data_source must look like 'idx:<dir>' or 'tfds:<name>'"),
        ({"data_source": "csv:/x"}, "data_source must look like"),
        ({"run_id": "../escape"}, "run_id '../escape' must be"),
        ({"model_name": "a/b"}, "model_name 'a/b' must be"),
        ({"strategy": "tpu"}, "unknown strategy 'tpu'"),
        ({"augment": "yes"}, "augment must be bool"),
        ({"class_names": ["a", "a"]}, "class_names has duplicates"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(overrides=overrides)


def test_unknown_keys_and_bad_yaml_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown config option\\(s\\): epoch"):
        load_config(overrides={"epoch": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listing)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_parse_value_converts_to_field_types():
    assert parse_value("epochs", "7") == 7
    assert parse_value("learning_rate", "0.01") == 0.01
    assert parse_value("augment", "true") is True
    assert parse_value("cache", "off") is False
    assert parse_value("class_names", "a, b,c") == ["a", "b", "c"]
    assert parse_value("baseline_version", "none") is None
    with pytest.raises(ConfigError, match="epochs must be int, got 'many'"):
        parse_value("epochs", "many")
    with pytest.raises(ConfigError, match="unknown config option 'nope'"):
        parse_value("nope", "1")


def test_replace_validates():
    with pytest.raises(ConfigError, match="epochs"):
        PipelineConfig().replace(epochs=-3)


def test_the_trigger_form_is_generated_from_the_config_bounds():
    from pipeline.core.config import trigger_form_fields, trigger_form_schema

    assert trigger_form_fields() == [
        "data_source",
        "model",
        "epochs",
        "batch_size",
        "learning_rate",
        "min_accuracy",
        "max_regression",
        "force",
        "force_reason",
    ]
    schema = trigger_form_schema(PipelineConfig(epochs=3))
    assert schema["epochs"] == {
        "default": 3,
        "type": "integer",
        "title": "Epochs",
        "description": "Maximum number of training epochs (early stopping may end sooner). (>= 1 and <= 500; e.g. 12)",
        # Bounds in allOf: enforced by validation, not read by Airflow's form (which clamps to top-level ones).
        "allOf": [{"minimum": 1, "maximum": 500}],
    }
    assert schema["model"]["enum"] == ["cnn", "cnn_deep", "mlp"] and schema["force"]["type"] == "boolean"
    assert schema["learning_rate"]["allOf"] == [{"exclusiveMinimum": 0, "maximum": 1}]
    assert schema["data_source"]["allOf"] == [{"pattern": r"^(idx|tfds):.+"}]
    assert all("e.g. " in entry["description"] for entry in schema.values())  # an example in every description


@pytest.mark.parametrize("overrides", [{"epochs": 501}, {"batch_size": 8193}, {"learning_rate": 1.5}])
def test_the_form_bounds_are_the_config_bounds(overrides):
    with pytest.raises(ConfigError, match="must be <="):
        load_config(overrides=overrides)


def test_force_needs_a_reason_for_the_audit_log():
    with pytest.raises(ConfigError, match="force needs a force_reason"):
        PipelineConfig(force=True).validate()
    assert PipelineConfig(force=True, force_reason="relabelled data").validate().force
