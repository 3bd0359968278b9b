import json

import keras
import pytest

from pipeline.data.ingest import ingest
from pipeline.data.preprocess import split_size
from pipeline.training.models import batch_norm_momentum
from pipeline.training.train import read_history, steps_per_epoch, train


def test_training_writes_model_history_curves_and_logs(trained_run):
    result = trained_run["train"]
    assert result.model_path.name == "model.keras" and result.model_path.exists()
    assert result.epochs_run == 1
    history = json.loads(result.history_path.read_text())
    assert history["epoch"] == [0]
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert result.monitor == "val_accuracy" and result.model_builder == "cnn"
    assert result.best_val_score == pytest.approx(max(history["val_accuracy"]))
    assert result.curves_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(result.tensorboard_dir.rglob("events.out.tfevents.*"))
    assert (result.model_path.parent / "best.keras").exists()
    assert not (result.model_path.parent / "backup").exists()  # Removed after a finished run.
    assert result.hardware["strategy"] in ("cpu", "one_device", "mirrored")
    model = keras.models.load_model(result.model_path)
    assert list(model.input) == ["images"] and model.output_shape == (None, 10)
    steps = steps_per_epoch(trained_run["config"], split_size(trained_run["snapshot"], "train[:90%]"))
    momenta = {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {batch_norm_momentum(steps)} and steps < 50  # a small set: below Keras's 0.99
    statistics = json.loads((result.model_path.parent / "feature_statistics.json").read_text())
    assert statistics["splits"] == {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}
    assert 60 < statistics["image_moments"]["images"][0] < 90  # the normalisation layer's pixel mean


class InterruptAfterFirstEpoch(keras.callbacks.Callback):
    """Simulates a crash right after epoch 1 was backed up."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("simulated crash")


class RecordEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_interrupted_run_resumes_from_backup(make_config):
    config = make_config(epochs=3, run_id="resumable")
    snapshot = ingest(config)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, snapshot, extra_callbacks=[InterruptAfterFirstEpoch()])
    out = config.workdir_path / "runs" / "resumable" / "train"
    assert (out / "backup").exists()
    assert read_history(out / "training_log.csv")["epoch"] == [0]

    recorder = RecordEpochs()
    result = train(config, snapshot, extra_callbacks=[recorder])
    assert recorder.epochs == [1, 2]  # Epoch 0 was not trained again.
    assert result.epochs_run == 3
    assert json.loads(result.history_path.read_text())["epoch"] == [0, 1, 2]


def test_same_seed_gives_the_same_training(make_config):
    config = make_config(model="mlp", run_id="seeded-a")
    snapshot = ingest(config)
    first = json.loads(train(config, snapshot).history_path.read_text())
    second = json.loads(train(config.replace(run_id="seeded-b"), snapshot).history_path.read_text())
    assert first["loss"] == pytest.approx(second["loss"], rel=1e-5)
    assert first["val_accuracy"] == second["val_accuracy"]


def test_each_epoch_records_its_wall_time(trained_run):
    history = json.loads(trained_run["train"].history_path.read_text())
    assert len(history["epoch_seconds"]) == 1 and history["epoch_seconds"][0] > 0


def test_the_learning_rate_warms_up_then_decays(make_config):
    from pipeline.training.train import learning_rate_schedule

    config = make_config(epochs=10, batch_size=100, learning_rate=0.002, warmup_epochs=1)
    schedule = learning_rate_schedule(config, train_size=1000)  # 10 steps per epoch, 100 in all
    rates = [float(schedule(step)) for step in (0, 10, 55, 100)]
    assert rates[0] == pytest.approx(0.0002)  # a tenth of the peak
    assert rates[1] == pytest.approx(0.002)  # the peak after one epoch
    assert rates[0] < rates[2] < rates[1] and rates[3] == pytest.approx(0.0, abs=1e-6)
    short = learning_rate_schedule(
        make_config(epochs=1, batch_size=100, learning_rate=0.001, warmup_epochs=5), train_size=1000
    )
    assert float(short(5)) == pytest.approx(0.001)  # warmup takes at most half the run
    plain = learning_rate_schedule(
        make_config(epochs=2, batch_size=100, learning_rate=0.001, warmup_epochs=0), train_size=1000
    )
    assert float(plain(0)) == pytest.approx(0.001)


def test_label_smoothing_trains_on_one_hot_labels_and_is_off_at_zero(make_config):
    from pipeline.training.train import prepare_data, task_training

    snapshot = ingest(make_config())
    _, smoothed = next(iter(prepare_data(make_config(label_smoothing=0.1), snapshot).train))
    assert smoothed.shape == (64, 10) and float(smoothed.numpy().sum()) == pytest.approx(64)
    loss = task_training(snapshot.problem, make_config(label_smoothing=0.1)).loss
    assert isinstance(loss, keras.losses.CategoricalCrossentropy)
    _, plain = next(iter(prepare_data(make_config(label_smoothing=0.0), snapshot).train))
    assert plain.shape == (64,) and plain.dtype.name == "int32"
    loss = task_training(snapshot.problem, make_config(label_smoothing=0.0)).loss
    assert isinstance(loss, keras.losses.SparseCategoricalCrossentropy)
