import json

import numpy as np
import pytest

from pipeline.core.errors import DataValidationError
from pipeline.core.problem import image_classification
from pipeline.data.data_validation import split_statistics, validate
from pipeline.data.idx import write_idx_folder
from pipeline.data.ingest import ingest


def _report(config):
    return json.loads((config.workdir_path / "runs" / config.run_id / "validate" / "anomalies.json").read_text())


def test_split_statistics():
    images = np.array([[[[0]], [[255]]], [[[255]], [[255]]]], np.uint8)  # 2 images of 2x1x1
    problem = image_classification((2, 1, 1), ["a", "b", "c"])
    stats = split_statistics(problem, {"images": images}, np.array([1, 1]))
    assert stats["count"] == 2
    assert stats["label_histogram"] == [0, 2, 0]
    assert stats["image_shape"] == [2, 1, 1] and stats["dtype"] == "uint8"
    assert stats["pixel_mean"] == pytest.approx(191.25)
    assert stats["pixel_std"] == pytest.approx(np.std([0, 255, 255, 255]))


def test_first_run_infers_schema_and_later_identical_data_passes(make_config):
    config = make_config()
    snapshot = ingest(config)
    first = validate(config, snapshot)
    schema = json.loads(first.schema_path.read_text())
    assert schema["image_shape"] == [28, 28, 1] and schema["class_names"][1] == "Trouser"
    assert schema["problem"]["features"][0]["key"] == "images" and schema["problem"]["task"] == "multiclass"
    assert schema["splits"] == ["test", "train"]
    statistics = json.loads(first.statistics_path.read_text())
    assert statistics["splits"]["train"]["count"] == 2000
    assert sum(statistics["splits"]["test"]["label_histogram"]) == 500
    assert 60 < statistics["splits"]["train"]["pixel_mean"] < 90  # Fashion-MNIST's is ~72.9.
    assert first.severe is False and _report(config)["severe"] is False

    second = validate(config.replace(run_id="again"), snapshot)
    report = _report(config.replace(run_id="again"))
    assert report["previous_snapshot"] == snapshot.path.name
    assert {c["check"] for c in report["checks"]} >= {
        "image_shape",
        "class_names",
        "label_distribution_shift",
        "pixel_mean_drift",
        "split_size_change",
    }
    assert second.anomalies == 0 and report["anomalies"] == []


def test_label_shift_and_size_change_are_severe(make_config, tmp_path, fashion_subset):
    config = make_config()
    baseline = ingest(config)
    validate(config, baseline)
    reference = (config.workdir_path / "validation" / "fashion-mnist" / "latest_statistics.json").read_text()

    images, labels = fashion_subset["train"]
    keep = labels < 3  # Only three classes left: each ~33% instead of ~10%.
    shifted_dir = write_idx_folder(
        tmp_path / "shifted" / "fashion-mnist",
        {"train": (images[keep], labels[keep]), "t10k": fashion_subset["t10k"]},
    )
    shifted_config = config.replace(data_source=f"idx:{shifted_dir}", run_id="shifted")
    shifted = ingest(shifted_config)
    with pytest.raises(DataValidationError) as caught:
        validate(shifted_config, shifted)
    message = str(caught.value)
    assert "label_distribution_shift [train]: label distribution L-inf distance 0.2" in message
    assert "(threshold 0.1)" in message
    assert "split_size_change [train]" in message and "vs 2000" in message
    report = _report(shifted_config)
    assert report["severe"] is True
    assert {a["check"] for a in report["anomalies"]} >= {"label_distribution_shift", "split_size_change"}
    # A failed snapshot does not become the new reference.
    assert (config.workdir_path / "validation" / "fashion-mnist" / "latest_statistics.json").read_text() == reference


def test_pixel_drift_is_severe_and_update_schema_accepts_it(make_config, tmp_path, fashion_subset):
    config = make_config()
    validate(config, ingest(config))
    inverted = {prefix: (255 - images, labels) for prefix, (images, labels) in fashion_subset.items()}
    drifted_dir = write_idx_folder(tmp_path / "inverted" / "fashion-mnist", inverted)
    drifted_config = config.replace(data_source=f"idx:{drifted_dir}", run_id="drifted")
    drifted = ingest(drifted_config)
    with pytest.raises(DataValidationError, match=r"pixel_mean_drift \[test\]: pixel mean 1[0-9]{2}\.\d+ vs"):
        validate(drifted_config, drifted)
    accepted = validate(drifted_config.replace(update_schema=True), drifted)
    assert accepted.severe is False and accepted.anomalies >= 2
    assert all(a["severity"] == "warning" for a in _report(drifted_config)["anomalies"])


def test_schema_mismatch_is_severe(make_config):
    config = make_config()
    validate(config, ingest(config))
    renamed = config.replace(class_names=[f"class{i}" for i in range(10)], run_id="renamed")
    with pytest.raises(DataValidationError, match=r"class_names: class names \['class0'"):
        validate(renamed, ingest(renamed))
