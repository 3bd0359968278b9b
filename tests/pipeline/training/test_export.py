import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from pipeline.core.artifacts import atomic_write_json
from pipeline.core.errors import ExportError
from pipeline.core.model_repo import prune_versions, published_versions, read_class_names
from pipeline.training.export import export, write_saved_model
from pipeline.training.models import build_model
from tests.support import REPO_ROOT, export_candidate


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    config = trained_run["config"].replace(model_base_path=str(tmp_path_factory.mktemp("serving")))
    return config, export_candidate(trained_run, config)


def test_signature_takes_uint8_images_and_returns_probabilities_class_ids_and_names(exported):
    _, result = exported
    assert result.version == 1 and result.version_dir.name == "1"
    serve = tf.saved_model.load(str(result.version_dir)).signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.name == "images" and spec.dtype == tf.uint8
    outputs = serve.structured_outputs
    assert outputs["probabilities"].dtype == tf.float32 and outputs["probabilities"].shape.as_list() == [
        None,
        10,
    ]
    assert outputs["class_ids"].dtype == tf.int64 and outputs["class_ids"].shape.as_list() == [None]
    assert outputs["class_names"].dtype == tf.string and outputs["class_names"].shape.as_list() == [None]


def test_exported_predictions_equal_the_keras_models(exported, trained_run):
    _, result = exported
    images = trained_run["snapshot"].split_columns("test[:64]")[0]["images"]
    keras_probabilities = keras.models.load_model(trained_run["train"].model_path).predict(
        {"images": images.astype(np.float32)}, verbose=0
    )
    serve = tf.saved_model.load(str(result.version_dir)).signatures["serving_default"]
    rank3 = serve(images=tf.constant(images[..., 0]))
    rank4 = serve(images=tf.constant(images))
    np.testing.assert_allclose(rank3["probabilities"].numpy(), keras_probabilities, atol=1e-5)
    np.testing.assert_array_equal(rank3["class_ids"].numpy(), keras_probabilities.argmax(axis=1))
    names = trained_run["snapshot"].class_names
    assert [n.decode() for n in rank3["class_names"].numpy()] == [names[i] for i in keras_probabilities.argmax(axis=1)]
    np.testing.assert_array_equal(rank4["probabilities"].numpy(), rank3["probabilities"].numpy())


def test_a_test_time_flip_model_serves_the_mirror_average(trained_run, tmp_path):
    from pipeline.core.config import PipelineConfig

    problem = trained_run["snapshot"].problem
    config = PipelineConfig(dropout=0.1, test_time_flip=True).validate()
    _, model = build_model(config, problem, {}, {"images": (72.9, 8000.0)})
    model.save(tmp_path / "model.keras")
    write_saved_model(tmp_path / "model.keras", problem, tmp_path / "saved", 0.5)
    images = trained_run["snapshot"].split_columns("test[:16]")[0]["images"]
    inner = model.get_layer("probabilities").inner
    floats = images.astype(np.float32)
    expected = (
        inner.predict({"images": floats}, verbose=0) + inner.predict({"images": floats[:, :, ::-1]}, verbose=0)
    ) / 2
    serve = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    np.testing.assert_allclose(serve(images=tf.constant(images))["probabilities"].numpy(), expected, atol=1e-5)


def test_wrong_image_shape_is_refused_with_a_message(exported):
    _, result = exported
    serve = tf.saved_model.load(str(result.version_dir)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must be uint8 \[N,28,28\]"):
        serve(images=tf.zeros([2, 28, 20], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="got shape"):
        serve(images=tf.zeros([28, 28], tf.uint8))


def test_assets_carry_class_names_model_card_and_warmup(exported, trained_run):
    config, result = exported
    snapshot = trained_run["snapshot"]
    assert read_class_names(result.version_dir) == snapshot.class_names
    card = json.loads(result.model_card_path.read_text())
    assert card["version"] == 1 and card["model_name"] == config.model_name
    assert card["data"]["fingerprint"] == snapshot.fingerprint
    assert card["data"]["source"] == snapshot.source
    assert card["config"]["epochs"] == 1
    assert card["metrics"]["accuracy"] == trained_run["evaluate"].score
    assert set(card["metrics"]) == {"accuracy", "macro_f1", "log_loss"} and card["gate_metric"] == "accuracy"
    assert card["code_revision"] and card["created_at"] and card["model_builder"] == "cnn"
    assert card["problem"]["task"] == "multiclass" and card["problem"]["features"][0]["key"] == "images"
    assert card["column_mapping"] == {} and card["model_code"] is None  # a built-in model, names kept
    assert card["signature"]["inputs"] == {"images": {"dtype": "uint8", "shape": ["N", 28, 28, 1]}}
    assert set(card["signatures"]) == {"serving_default"}  # no Classify/Regress signature for images

    serve = tf.saved_model.load(str(result.version_dir)).signatures["serving_default"]
    records = list(tf.data.TFRecordDataset(str(result.version_dir / "assets.extra" / "tf_serving_warmup_requests")))
    assert len(records) == config.warmup_requests
    batch_sizes = []
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.name == config.model_name
        assert request.model_spec.signature_name == "serving_default"
        images = tf.make_ndarray(request.inputs["images"])
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        batch_sizes.append(images.shape[0])
        assert serve(images=tf.constant(images))["class_ids"].shape == (images.shape[0],)
    assert batch_sizes == [1, 2, 4, 8]


def test_versions_increment_and_old_ones_are_pruned(trained_run, tmp_path):
    config = trained_run["config"].replace(model_base_path=str(tmp_path), keep_versions=2)
    versions = [export_candidate(trained_run, config, protected_versions=[1]).version for _ in range(4)]
    assert versions == [1, 2, 3, 4]
    assert published_versions(config.model_dir) == [1, 3, 4]  # 1 protected, 2 pruned.
    assert prune_versions(config.model_dir, keep=1) == [1, 3]
    assert sorted(p.name for p in config.model_dir.iterdir()) == [".publish.lock", ".staging.lock", "4"]


def test_unblessed_model_is_not_exported(trained_run, tmp_path):
    evaluation = json.loads(trained_run["evaluate"].evaluation_path.read_text())
    refused = atomic_write_json(tmp_path / "evaluation.json", {**evaluation, "blessed": False, "reasons": ["too weak"]})
    config = trained_run["config"].replace(model_base_path=str(tmp_path / "models"))
    with pytest.raises(ExportError, match="is not blessed \\(too weak\\); not exporting"):
        export(config, trained_run["snapshot"], trained_run["train"].model_path, refused)
    assert published_versions(config.model_dir) == []


def test_unwritable_model_base_path(trained_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = trained_run["config"].replace(model_base_path=str(blocker / "models"))
    with pytest.raises(ExportError, match=r"model base path .*a-file/models is not writable \(Not a directory"):
        export_candidate(trained_run, config)
    readonly = trained_run["config"].replace(model_base_path="/proc/models")
    with pytest.raises(ExportError, match=r"model base path /proc/models is not writable"):
        export_candidate(trained_run, readonly)


def _export_command(trained_run, base_path):
    config = trained_run["config"]
    return [
        sys.executable,
        "-m",
        "pipeline",
        "export",
        "--workdir",
        config.workdir,
        "--run-id",
        "killed-export",
        "--data-source",
        config.data_source,
        "--snapshot",
        str(trained_run["snapshot"].path),
        "--model-path",
        str(trained_run["train"].model_path),
        "--evaluation",
        str(trained_run["evaluate"].evaluation_path),
        "--model-base-path",
        str(base_path),
    ]


def test_killed_export_leaves_no_version_behind(trained_run, tmp_path):
    model_dir = tmp_path / "models" / trained_run["config"].model_name
    killed_mid_export = 0
    for delay in (0.0, 0.5):
        leftovers = set(model_dir.glob(".tmp-export-*"))
        process = subprocess.Popen(
            _export_command(trained_run, tmp_path / "models"),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not set(model_dir.glob(".tmp-export-*")) - leftovers and process.poll() is None:
            assert time.monotonic() < deadline, "export never started writing"
            time.sleep(0.01)
        time.sleep(delay)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            killed_mid_export += 1
        process.wait()
        assert published_versions(model_dir) == [], f"a version appeared after a kill at +{delay}s"
    assert killed_mid_export >= 1
    assert any(model_dir.glob(".tmp-export-*"))  # The killed process's half-written staging folder.

    finished = subprocess.run(
        _export_command(trained_run, tmp_path / "models"), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    assert published_versions(model_dir) == [1]
    assert not any(model_dir.glob(".tmp-*"))  # Leftovers cleaned by the next export.


def test_an_export_never_touches_another_writers_live_staging_folder(trained_run, tmp_path):
    """Issue: a second export deleted a first one's staging folder, which then published half a model."""
    from pipeline.core.artifacts import staging_dir

    config = trained_run["config"].replace(model_base_path=str(tmp_path))
    with staging_dir(config.model_dir, "export") as other:  # another exporter, still writing
        (other / "saved_model.pb").write_bytes(b"half")
        result = export_candidate(trained_run, config)
        assert (other / "saved_model.pb").read_bytes() == b"half"
    assert result.version == 1 and published_versions(config.model_dir) == [1]
    assert not other.exists() and not any(config.model_dir.glob(".tmp-*"))  # its owner removed it on exit


def test_an_incomplete_folder_is_never_published(trained_run, tmp_path):
    from pipeline.core import model_repo

    config = trained_run["config"].replace(model_base_path=str(tmp_path))
    staging = config.model_dir / ".tmp-export-manual"
    (staging / "assets.extra").mkdir(parents=True)  # what the race published: no graph, no variables
    with pytest.raises(ExportError, match="not a complete SavedModel: saved_model.pb is missing"):
        model_repo.publish_version(staging, config.model_dir, {})
    (staging / "saved_model.pb").write_bytes(b"x")
    (staging / "variables").mkdir()
    with pytest.raises(ExportError, match="variables index or data missing"):
        model_repo.publish_version(staging, config.model_dir, {})
    (staging / "variables" / "variables.index").write_bytes(b"x")
    (staging / "variables" / "variables.data-00000-of-00001").write_bytes(b"x")
    with pytest.raises(ExportError, match="does not load and answer"):
        model_repo.verify_saved_model(staging, {"images": np.zeros((1, 28, 28), np.uint8)})
    assert published_versions(config.model_dir) == []
