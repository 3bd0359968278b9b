"""Stage 4, train: a Keras model under the strategy the hardware calls for.

Callbacks: BackupAndRestore (rerunning a killed run with the same run_id resumes
from its last finished epoch), early stopping, best-checkpoint selection on
validation accuracy, TensorBoard and a CSV log. Writes the final model
(`model.keras`, the best checkpoint), `history.json` and `training_curves.png`.

Under the 'multi_worker' strategy every worker runs this stage with the same run_id;
only the chief writes into the run's folder. The other workers run the same callbacks
(saving reads variables collectively, so all workers must save together) into a
scratch folder of their own machine, kept for resuming and removed when they finish.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import keras

from pipeline.core.artifacts import StageResult, atomic_output, atomic_write_json, stage_dir
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import TrainingError
from pipeline.data import preprocess
from pipeline.data.snapshot import Snapshot
from pipeline.training.hardware import HardwarePlan, plan_hardware
from pipeline.training.models import build_model, load_model

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainResult(StageResult):
    """Outputs of the train stage."""

    model_path: Path | None  # None on a multi-worker training worker that is not the chief
    history_path: Path | None
    curves_path: Path | None
    tensorboard_dir: Path | None
    epochs_run: int
    best_val_accuracy: float
    hardware: dict[str, Any]
    seconds: float
    is_chief: bool = True


@contextlib.contextmanager
def dtype_policy(name: str):
    """Sets Keras's global dtype policy for the duration of the block."""
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def read_history(csv_path: Path) -> dict[str, list[float]]:
    """Reads the CSV log into {metric: [value per epoch]}, keeping the last row per epoch.

    A resumed run may log an epoch twice (killed after logging, before the backup).
    """
    rows: dict[int, dict[str, str]] = {}
    if csv_path.exists():
        with open(csv_path, newline="") as handle:
            for row in csv.DictReader(handle):
                rows[int(row["epoch"])] = row
    history: dict[str, list[float]] = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            history.setdefault(key, []).append(int(value) if key == "epoch" else float(value))
    return history


def plot_history(history: dict[str, list[float]], path: Path) -> Path:
    """Draws loss and accuracy per epoch (train and validation) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e + 1 for e in history.get("epoch", [])]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if key in history:
                axis.plot(epochs, history[key], marker="o", label=label)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
    return path


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall time (training and validation) to the logs as `epoch_seconds`."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.monotonic() - self._started, 3)


def _callbacks(out: Path, config: PipelineConfig) -> list[keras.callbacks.Callback]:
    return [
        EpochTimer(),  # First, so the CSV log and TensorBoard record its figure.
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        keras.callbacks.ModelCheckpoint(
            str(out / "best.keras"), monitor="val_accuracy", mode="max", save_best_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy",
            mode="max",
            patience=config.early_stopping_patience,
            restore_best_weights=True,
        ),
        keras.callbacks.CSVLogger(str(out / "training_log.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False),
    ]


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The input pipelines of one training run and what the model needs to know about them."""

    train: object  # tf.data.Dataset
    validation: object  # tf.data.Dataset
    train_size: int
    pixel_mean: float
    pixel_variance: float


def prepare_data(config: PipelineConfig, snapshot: Snapshot) -> TrainingData:
    """Builds the training and validation pipelines and the training pixels' moments.

    Raises:
        TrainingError: if either split selects no examples.
    """
    train_size = preprocess.split_size(snapshot, config.train_split)
    if train_size == 0:
        raise TrainingError(f"training split {config.train_split!r} selects no examples")
    if preprocess.split_size(snapshot, config.validation_split) == 0:
        raise TrainingError(f"validation split {config.validation_split!r} selects no examples")
    mean, variance = preprocess.pixel_moments(
        preprocess.make_dataset(snapshot, config.train_split, config.replace(augment=False), training=False)
    )
    one_hot = snapshot.num_classes if config.label_smoothing > 0 else None  # Keras smooths one-hot labels only.
    return TrainingData(
        train=preprocess.make_dataset(snapshot, config.train_split, config, training=True, one_hot_classes=one_hot),
        validation=preprocess.make_dataset(
            snapshot, config.validation_split, config, training=False, one_hot_classes=one_hot
        ),
        train_size=train_size,
        pixel_mean=mean,
        pixel_variance=variance,
    )


def build_compiled_model(config: PipelineConfig, snapshot: Snapshot, data: TrainingData, hardware: HardwarePlan):
    """Builds the model and compiles it with Adam on a cosine schedule; call under the strategy's scope."""
    model = build_model(
        config.model,
        snapshot.image_shape,
        snapshot.num_classes,
        dropout=config.dropout,
        pixel_mean=data.pixel_mean,
        pixel_variance=data.pixel_variance,
        test_time_flip=config.test_time_flip,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate_schedule(config, data.train_size)),
        loss=_loss(config),
        metrics=["accuracy"],
        jit_compile=hardware.jit_compile,
    )
    return model


def learning_rate_schedule(config: PipelineConfig, train_size: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup from a tenth of the peak over `warmup_epochs` (at most half the run), then cosine decay."""
    steps_per_epoch = -(-train_size // config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total // 2)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate / 10,
        decay_steps=max(1, total - warmup),
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
    )


def _loss(config: PipelineConfig) -> keras.losses.Loss:
    if config.label_smoothing > 0:  # prepare_data gives one-hot labels then.
        return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def fit(
    config: PipelineConfig, snapshot: Snapshot, data: TrainingData, out: Path, callbacks: list, hardware: HardwarePlan
) -> keras.Model:
    """Trains under the strategy and precision of the hardware plan; returns the model."""
    with dtype_policy(hardware.dtype_policy), hardware.strategy.scope():
        model = build_compiled_model(config, snapshot, data, hardware)
        log.info(
            "training %s on %d examples for up to %d epochs%s",
            config.model,
            data.train_size,
            config.epochs,
            " (resuming)" if (out / "backup").exists() else "",
        )
        model.fit(
            data.train,
            validation_data=data.validation,
            epochs=config.epochs,
            callbacks=_callbacks(out, config) + callbacks,
            shuffle=False,  # The tf.data pipeline shuffles, seeded.
            verbose=2,
        )
    return model


def save_outputs(model: keras.Model, out: Path) -> tuple[Path, dict[str, list[float]]]:
    """Checks the training log, then saves the best checkpoint (or the last model) as `model.keras`.

    Returns:
        (model path, history per epoch).

    Raises:
        TrainingError: if training produced no usable (finite) loss values.
    """
    history = read_history(out / "training_log.csv")
    losses = history.get("loss", [])
    if not losses or any(value != value for value in losses):  # NaN never equals itself.
        raise TrainingError(f"training produced no usable loss values: {losses}")
    best = out / "best.keras"
    if best.exists():
        model = load_model(best)
    model_path = out / "model.keras"
    with atomic_output(model_path) as tmp:
        model.save(tmp)
    return model_path, history


def worker_scratch_dir(config: PipelineConfig, hardware: HardwarePlan) -> Path:
    """Returns (and creates) the local folder a non-chief worker writes its callbacks' files to."""
    name = f"mlops-train-{config.model_name}-{config.run_id}-{hardware.task.replace('/', '-')}"
    path = Path(tempfile.gettempdir()) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _worker_result(scratch: Path, hardware: HardwarePlan, seconds: float) -> TrainResult:
    """Summarises a non-chief worker's part and removes its scratch folder (the run finished)."""
    history = read_history(scratch / "training_log.csv")
    shutil.rmtree(scratch, ignore_errors=True)
    return TrainResult(
        model_path=None,
        history_path=None,
        curves_path=None,
        tensorboard_dir=None,
        epochs_run=len(history.get("loss", [])),
        best_val_accuracy=max(history.get("val_accuracy", [0.0])),
        hardware=hardware.describe(),
        seconds=round(seconds, 2),
        is_chief=False,
    )


def train(
    config: PipelineConfig,
    snapshot: Snapshot,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Runs the train stage.

    Args:
        config: Model, optimiser, hardware and seed options; `run_id` names the folder
            (and so which interrupted run to resume).
        snapshot: The data snapshot to train on.
        extra_callbacks: More Keras callbacks, run after the stage's own.

    Returns:
        Paths of the model and its training records, and a summary (on a multi-worker
        worker that is not the chief: the summary only, `is_chief` False).

    Raises:
        TrainingError: if the training split is empty or training diverges.
        ConfigError: if the split expressions or hardware options do not fit.
    """
    started = time.monotonic()
    hardware = plan_hardware(config)  # First: a multi-worker strategy must exist before any TensorFlow op.
    out = stage_dir(config, "train") if hardware.is_chief else worker_scratch_dir(config, hardware)
    if not (out / "backup").exists():  # A fresh run, not a resumed one: drop a failed attempt's logs.
        for stale in ("training_log.csv", "best.keras"):
            (out / stale).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    keras.utils.set_random_seed(config.seed)
    data = prepare_data(config, snapshot)
    log.info("training as %s of %d worker(s)", hardware.task, hardware.workers)
    model = fit(config, snapshot, data, out, list(extra_callbacks or []), hardware)
    if not hardware.is_chief:
        return _worker_result(out, hardware, time.monotonic() - started)
    model_path, history = save_outputs(model, out)
    return TrainResult(
        model_path=model_path,
        history_path=atomic_write_json(out / "history.json", history),
        curves_path=plot_history(history, out / "training_curves.png"),
        tensorboard_dir=out / "tensorboard",
        epochs_run=len(history["loss"]),
        best_val_accuracy=max(history.get("val_accuracy", [0.0])),
        hardware=hardware.describe(),
        seconds=round(time.monotonic() - started, 2),
    )
