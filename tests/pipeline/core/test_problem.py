"""The problem spec: one home for features, label, task, the serving contract and metric directions."""

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.problem import (
    FeatureSpec,
    ProblemSpec,
    check_metric_for_task,
    higher_is_better,
    image_classification,
    signature_key,
)


def _table(task="binary", class_names=("no", "yes"), *features):
    features = features or (
        FeatureSpec("annual income", "annual_income", "numeric", "float32"),
        FeatureSpec("state", "state", "categorical", "string"),
    )
    return ProblemSpec(task, "approved?", "approved_", tuple(features), tuple(class_names))


@pytest.mark.parametrize(
    "name, key",
    [("bill_length_mm", "bill_length_mm"), ("annual income ($)", "annual_income____"), ("é", "_"), ("", "_")],
)
def test_column_names_map_to_signature_keys_by_one_rule(name, key):
    assert signature_key(name) == key


def test_the_spec_says_what_serving_takes_and_answers():
    problem = _table()
    assert problem.serving_inputs() == {
        "annual_income": {"dtype": "float32", "shape": ["N"]},
        "state": {"dtype": "string", "shape": ["N"]},
    }
    assert set(problem.serving_outputs()) == {"probabilities", "class_ids", "class_names"}
    assert problem.serving_outputs()["probabilities"]["shape"] == ["N", 2]
    assert problem.renamed_columns() == {"annual income": "annual_income", "approved?": "approved_"}
    assert problem.takes_examples() and problem.default_metric == "auc"
    regression = ProblemSpec("regression", "price", "price", problem.features)
    assert regression.serving_outputs() == {"predictions": {"dtype": "float32", "shape": ["N"]}}
    images = image_classification((28, 28, 1), [str(i) for i in range(10)])
    assert images.single_image.key == "images" and not images.takes_examples()
    assert images.serving_inputs() == {"images": {"dtype": "uint8", "shape": ["N", 28, 28, 1]}}


def test_the_spec_round_trips_through_its_stored_form():
    problem = _table()
    assert ProblemSpec.from_dict(problem.to_dict()) == problem


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: _table(
                "binary",
                ("no", "yes"),
                FeatureSpec("a b", "a_b", "numeric", "float32"),
                FeatureSpec("a_b", "a_b", "numeric", "float32"),
            ),
            "columns 'a b' and 'a_b' both map to the key 'a_b'",
        ),
        (lambda: _table("binary", ("a", "b", "c")), "has 3 classes: a binary task needs exactly 2"),
        (lambda: _table("multiclass", ("a",)), "classification needs at least 2 classes"),
        (lambda: _table("regression", ("a", "b")), "a regression task has no class names"),
        (lambda: _table("ranking"), "unknown task 'ranking'"),
        (lambda: FeatureSpec("x", "x", "numeric", "string"), "a numeric feature is float32 or int64, not string"),
        (lambda: FeatureSpec("x", "x y", "numeric", "float32"), "key 'x y' must match"),
        (lambda: FeatureSpec("x", "x", "image", "uint8"), "images have a shape"),
        (lambda: ProblemSpec("regression", "y", "y", ()), "no features besides the label 'y'"),
    ],
)
def test_an_inconsistent_spec_is_refused_naming_the_column(build, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build()


def test_metric_directions_and_tasks():
    assert higher_is_better("auc") and higher_is_better("r2") and not higher_is_better("rmse")
    with pytest.raises(ConfigError, match="unknown metric 'f2'"):
        higher_is_better("f2")
    check_metric_for_task("log_loss", "binary", "gate_metric")
    with pytest.raises(ConfigError, match="gate_metric 'rmse' is not a multiclass metric; choose one of: accuracy"):
        check_metric_for_task("rmse", "multiclass", "gate_metric")
