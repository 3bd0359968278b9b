import pytest

from pipeline.core.config import PipelineConfig, load_config, parse_value
from pipeline.core.errors import ConfigError


def test_defaults_are_valid_and_point_at_fashion_mnist():
    config = PipelineConfig().validate()
    assert config.data_source == "idx:/usr/share/datasets/fashion-mnist"
    assert config.model == "auto" and config.task == "auto"  # cnn for the one image input (test_models)
    assert config.model_name == "fashion_mnist" and config.model_dir.name == "fashion_mnist"


@pytest.mark.parametrize(
    "source, name",
    [
        ("csv:/data/penguins.csv", "penguins"),
        ("parquet:/data/trips/*.parquet", "trips"),
        ("images:/data/flowers/", "flowers"),
        ("tfds:mnist/3.0.1", "mnist"),
        ("csv:/data/loan data.csv", "loan_data"),
    ],
)
def test_the_served_name_comes_from_the_data_source_unless_set(source, name):
    assert PipelineConfig(data_source=source).validate().model_name == name
    assert PipelineConfig(data_source=source, model_name="mine").validate().model_name == "mine"


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
        ({"model": "resnet"}, "model 'resnet' is neither a built-in (auto, cnn, cnn_deep, mlp, tabular"),
        ({"model": "my models:build"}, "nor an import path 'package.module:function'"),
        ({"batch_size": 2.5}, "batch_size must be int"),
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"min_accuracy": 1.5}, "min_accuracy must be <= 1"),
        ({"data_source": "/some/dir"}, "data_source must look like 'idx:...', 'tfds:...', 'csv:...'"),
        ({"data_source": "sql:/x"}, "data_source must look like"),
        ({"task": "ranking"}, "unknown task 'ranking'; choose one of: auto, binary, multiclass, regression"),
        ({"feature_types": {"a": "date"}}, "feature_types: unknown kind 'date'"),
        ({"feature_types": ["a"]}, "feature_types must be a mapping of names to strings"),
        ({"split_fractions": [0.8, 0.2]}, "split_fractions must be 3 shares"),
        ({"split_fractions": [0.8, 0.3, 0.1]}, "split_fractions must be 3 shares > 0 that sum to 1"),
        ({"split_fractions": [0.9, 0.1, 0.0]}, "split_fractions must be 3 shares > 0 that sum to 1"),
        ({"image_size": [28]}, "image_size must be [height, width]"),
        ({"image_mode": "CMYK"}, "unknown image_mode 'CMYK'"),
        ({"gate_metric": "f2"}, "unknown gate_metric 'f2'; choose one of: auto, accuracy"),
        ({"decision_threshold": 1.0}, "decision_threshold must be < 1"),
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
    assert parse_value("split_fractions", "0.7,0.2,0.1") == [0.7, 0.2, 0.1]
    assert parse_value("image_size", "32, 32") == [32, 32]
    assert parse_value("feature_types", "zip=categorical, notes=text") == {"zip": "categorical", "notes": "text"}
    with pytest.raises(ConfigError, match="feature_types must look like 'name=value,name2=value2'"):
        parse_value("feature_types", "zip")
    with pytest.raises(ConfigError, match="image_size must be a comma-separated list of integers"):
        parse_value("image_size", "32,wide")
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
        "gate_metric",
        "gate_threshold",
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
    assert schema["model"]["type"] == "string" and schema["force"]["type"] == "boolean"
    assert schema["gate_metric"]["enum"][:3] == ["auto", "accuracy", "log_loss"]
    assert schema["gate_threshold"]["type"] == ["number", "null"]
    assert schema["learning_rate"]["allOf"] == [{"exclusiveMinimum": 0, "maximum": 1}]
    assert schema["data_source"]["allOf"] == [{"pattern": r"^(idx|tfds|csv|parquet|images):.+"}]
    assert all("e.g. " in entry["description"] for entry in schema.values())  # an example in every description


def test_the_trigger_form_of_a_regression_model_shows_its_metrics_only():
    from pipeline.core.config import trigger_form_schema

    schema = trigger_form_schema(PipelineConfig(data_source="csv:/d/houses.csv", task="regression"))
    assert "min_accuracy" not in schema
    assert schema["gate_metric"]["enum"] == ["auto", "rmse", "mae", "r2"]


@pytest.mark.parametrize("overrides", [{"epochs": 501}, {"batch_size": 8193}, {"learning_rate": 1.5}])
def test_the_form_bounds_are_the_config_bounds(overrides):
    with pytest.raises(ConfigError, match="must be <="):
        load_config(overrides=overrides)


def test_force_needs_a_reason_for_the_audit_log():
    with pytest.raises(ConfigError, match="force needs a force_reason"):
        PipelineConfig(force=True).validate()
    assert PipelineConfig(force=True, force_reason="relabelled data").validate().force
