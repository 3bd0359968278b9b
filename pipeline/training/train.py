"""Stage 4, train: a Keras model under the strategy the hardware calls for.

The model follows the problem spec: its inputs and preprocessing layers come from
`pipeline.training.features`, its body from the configured builder (`pipeline.training.models`),
its loss, metrics and monitored metric from the task (`task_training`): binary cross-entropy,
AUC and accuracy, monitored on validation AUC; (label-smoothed) categorical cross-entropy and
accuracy, monitored on validation accuracy; mean squared error, RMSE and MAE, monitored on
validation RMSE.

Callbacks: BackupAndRestore (rerunning a killed run with the same run_id resumes
from its last finished epoch), early stopping, best-checkpoint selection on the
monitored metric, TensorBoard and a CSV log. Writes the final model
(`model.keras`, the best checkpoint), `history.json`, `feature_statistics.json` and
`training_curves.png`.

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
from pipeline.core.config import AUTO, PipelineConfig
from pipeline.core.errors import DataSourceError, TrainingError
from pipeline.core.problem import BINARY, MULTICLASS, REGRESSION, ProblemSpec
from pipeline.data import preprocess
from pipeline.data.snapshot import TEST, TRAIN, VALIDATION, Snapshot
from pipeline.training.features import FeatureStatistics, streamed_feature_statistics
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
    monitor: str  # the validation metric that chose the checkpoint, e.g. 'val_accuracy'
    best_val_score: float
    model_builder: str  # the builder that made the model ('cnn', 'tabular', 'package.module:function')
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


def plot_history(history: dict[str, list[float]], path: Path, metric: str = "accuracy") -> Path:
    """Draws the loss and the monitored metric per epoch (train and validation) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e + 1 for e in history.get("epoch", [])]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, name in zip(axes, ("loss", metric), strict=True):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in history:
                axis.plot(epochs, history[key], marker="o", label=label)
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
    return path


@dataclasses.dataclass(frozen=True)
class TaskTraining:
    """How a task is trained: its loss, its metrics, and the validation metric that picks the model."""

    loss: keras.losses.Loss
    metrics: list
    metric: str  # e.g. 'accuracy'; the monitor is 'val_' + metric
    mode: str  # 'max' or 'min'

    @property
    def monitor(self) -> str:
        return f"val_{self.metric}"


def task_training(problem: ProblemSpec, config: PipelineConfig) -> TaskTraining:
    """The loss, metrics and monitor of the problem's task (label smoothing: multiclass only).

    Raises:
        ConfigError: if `monitor_metric` is not one the task's training logs.
    """
    task = _task_training(problem, config)
    if config.monitor_metric == AUTO:
        return task
    config.check_for(problem)  # a metric this task logs
    mode = "max" if config.monitor_metric in ("accuracy", "auc") else "min"
    return dataclasses.replace(task, metric=config.monitor_metric, mode=mode)


def _task_training(problem: ProblemSpec, config: PipelineConfig) -> TaskTraining:
    if problem.task == BINARY:
        return TaskTraining(
            keras.losses.BinaryCrossentropy(),
            [
                keras.metrics.AUC(name="auc"),
                keras.metrics.BinaryAccuracy(name="accuracy", threshold=config.decision_threshold),
            ],
            "auc",
            "max",
        )
    if problem.task == REGRESSION:
        return TaskTraining(
            keras.losses.MeanSquaredError(),
            [keras.metrics.RootMeanSquaredError(name="rmse"), keras.metrics.MeanAbsoluteError(name="mae")],
            "rmse",
            "min",
        )
    if config.label_smoothing > 0:  # prepare_data gives one-hot labels then: Keras smooths one-hot labels only.
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    return TaskTraining(loss, ["accuracy"], "accuracy", "max")


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall time (training and validation) to the logs as `epoch_seconds`."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.monotonic() - self._started, 3)


def _callbacks(out: Path, config: PipelineConfig, task: TaskTraining) -> list[keras.callbacks.Callback]:
    return [
        EpochTimer(),  # First, so the CSV log and TensorBoard record its figure.
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        keras.callbacks.ModelCheckpoint(
            str(out / "best.keras"), monitor=task.monitor, mode=task.mode, save_best_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor=task.monitor,
            mode=task.mode,
            patience=config.early_stopping_patience,
            restore_best_weights=True,
        ),
        keras.callbacks.CSVLogger(str(out / "training_log.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False),
    ]


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The input pipelines of one training run and what the model's layers are fitted to.

    Attributes:
        train: Training batches (tf.data).
        validation: Validation batches.
        train_size: Training examples.
        splits: The resolved split expressions {'train', 'validation', 'test'}.
        statistics: The training split's statistics of every non-image feature.
        image_moments: {image key: (pixel mean, pixel variance)} of the training split.
        label_moments: Regression: (mean, std) of the training labels.
    """

    train: object  # tf.data.Dataset
    validation: object  # tf.data.Dataset
    train_size: int
    splits: dict[str, str]
    statistics: dict[str, FeatureStatistics]
    image_moments: dict[str, tuple[float, float]]
    label_moments: tuple[float, float] | None


def resolve_splits(config: PipelineConfig, snapshot: Snapshot) -> dict[str, str]:
    """The train, validation and test split expressions, 'auto' resolved against the snapshot."""
    return {
        TRAIN: snapshot.resolve_split(config.train_split, TRAIN),
        VALIDATION: snapshot.resolve_split(config.validation_split, VALIDATION),
        TEST: snapshot.resolve_split(config.test_split, TEST),
    }


def prepare_data(config: PipelineConfig, snapshot: Snapshot, workers: int = 1, worker_index: int = 0) -> TrainingData:
    """Builds the training and validation pipelines and the training split's statistics.

    Raises:
        TrainingError: if either split selects no examples.
    """
    problem = snapshot.problem
    splits = resolve_splits(config, snapshot)
    train_size = preprocess.split_size(snapshot, splits[TRAIN])
    if train_size == 0:
        raise TrainingError(f"training split {splits[TRAIN]!r} selects no examples")
    if preprocess.split_size(snapshot, splits[VALIDATION]) == 0:
        raise TrainingError(f"validation split {splits[VALIDATION]!r} selects no examples")
    image_moments = {}
    if problem.image_features:
        plain = preprocess.make_dataset(snapshot, splits[TRAIN], config.replace(augment=False), training=False)
        image_moments = {f.key: preprocess.pixel_moments(plain, f.key) for f in problem.image_features}
    statistics, label_moments = {}, None
    if len(problem.image_features) < len(problem.features) or problem.task == REGRESSION:
        statistics, moments = streamed_feature_statistics(
            problem, snapshot.iter_batches(splits[TRAIN]), train_size, config
        )
        if problem.task == REGRESSION:
            label_moments = moments
    # Keras smooths one-hot labels only.
    one_hot = snapshot.num_classes if problem.task == MULTICLASS and config.label_smoothing > 0 else None
    return TrainingData(
        train=preprocess.make_dataset(
            snapshot,
            splits[TRAIN],
            config,
            training=True,
            one_hot_classes=one_hot,
            workers=workers,
            worker_index=worker_index,
        ),
        validation=preprocess.make_dataset(
            snapshot,
            splits[VALIDATION],
            config,
            training=False,
            one_hot_classes=one_hot,
            workers=workers,
            worker_index=worker_index,
        ),
        train_size=train_size,
        splits=splits,
        statistics=statistics,
        image_moments=image_moments,
        label_moments=label_moments,
    )


def build_compiled_model(config: PipelineConfig, snapshot: Snapshot, data: TrainingData, hardware: HardwarePlan):
    """Builds the model and compiles it with Adam on a cosine schedule; call under the strategy's scope.

    Returns:
        (the builder's name, the compiled model, the task's training setup).
    """
    problem = snapshot.problem
    name, model = build_model(
        config,
        problem,
        data.statistics,
        data.image_moments,
        data.label_moments,
        steps_per_epoch=steps_per_epoch(config, data.train_size),
    )
    task = task_training(problem, config)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate_schedule(config, data.train_size)),
        loss=task.loss,
        metrics=task.metrics,
        jit_compile=hardware.jit_compile,
    )
    return name, model, task


def steps_per_epoch(config: PipelineConfig, train_size: int) -> int:
    """Training steps in one epoch: batches of the global batch size, the last one partial."""
    return -(-train_size // config.batch_size)


def learning_rate_schedule(config: PipelineConfig, train_size: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup from a tenth of the peak over `warmup_epochs` (at most half the run), then cosine decay."""
    steps = steps_per_epoch(config, train_size)
    total = steps * config.epochs
    warmup = min(round(config.warmup_epochs * steps), total // 2)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate / 10,
        decay_steps=max(1, total - warmup),
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
    )


def fit(
    config: PipelineConfig, snapshot: Snapshot, data: TrainingData, out: Path, callbacks: list, hardware: HardwarePlan
) -> tuple[str, keras.Model, TaskTraining]:
    """Trains under the strategy and precision of the hardware plan; returns (builder name, model, task setup).

    Raises:
        DataSourceError: naming the shard file, if a shard of the snapshot is corrupt.
    """
    import tensorflow as tf

    with dtype_policy(hardware.dtype_policy), hardware.strategy.scope():
        name, model, task = build_compiled_model(config, snapshot, data, hardware)
        log.info(
            "training %s (%s) on %d examples for up to %d epochs, monitoring %s%s",
            name,
            snapshot.problem.task,
            data.train_size,
            config.epochs,
            task.monitor,
            " (resuming)" if (out / "backup").exists() else "",
        )
        try:
            model.fit(
                data.train,
                validation_data=data.validation,
                epochs=config.epochs,
                callbacks=_callbacks(out, config, task) + callbacks,
                shuffle=False,  # The tf.data pipeline shuffles, seeded.
                verbose=2,
            )
        except tf.errors.DataLossError as err:
            raise DataSourceError(snapshot.corrupt_shard_message(err)) from None
    return name, model, task


def best_score(history: dict[str, list[float]], task: TaskTraining) -> float:
    """The best value of the monitored metric over the epochs (0 when there is none)."""
    values = history.get(task.monitor, [])
    if not values:
        return 0.0
    return max(values) if task.mode == "max" else min(values)


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


def _worker_result(scratch: Path, hardware: HardwarePlan, seconds: float, name: str, task: TaskTraining) -> TrainResult:
    """Summarises a non-chief worker's part and removes its scratch folder (the run finished)."""
    history = read_history(scratch / "training_log.csv")
    shutil.rmtree(scratch, ignore_errors=True)
    return TrainResult(
        model_path=None,
        history_path=None,
        curves_path=None,
        tensorboard_dir=None,
        epochs_run=len(history.get("loss", [])),
        monitor=task.monitor,
        best_val_score=best_score(history, task),
        model_builder=name,
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
        snapshot: The data snapshot to train on (its problem spec shapes the model).
        extra_callbacks: More Keras callbacks, run after the stage's own.

    Returns:
        Paths of the model and its training records, and a summary (on a multi-worker
        worker that is not the chief: the summary only, `is_chief` False).

    Raises:
        TrainingError: if the training split is empty or training diverges.
        ConfigError: if the split expressions, hardware options or model builder do not fit.
    """
    started = time.monotonic()
    hardware = plan_hardware(config)  # First: a multi-worker strategy must exist before any TensorFlow op.
    out = stage_dir(config, "train") if hardware.is_chief else worker_scratch_dir(config, hardware)
    if not (out / "backup").exists():  # A fresh run, not a resumed one: drop a failed attempt's logs.
        for stale in ("training_log.csv", "best.keras"):
            (out / stale).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    keras.utils.set_random_seed(config.seed)
    data = prepare_data(config, snapshot, hardware.workers, hardware.input_pipeline)
    log.info("training as %s of %d worker(s)", hardware.task, hardware.workers)
    name, model, task = fit(config, snapshot, data, out, list(extra_callbacks or []), hardware)
    if not hardware.is_chief:
        return _worker_result(out, hardware, time.monotonic() - started, name, task)
    model_path, history = save_outputs(model, out)
    atomic_write_json(
        out / "feature_statistics.json",
        {
            "splits": data.splits,
            "features": {key: stats.to_dict() for key, stats in data.statistics.items()},
            "image_moments": data.image_moments,
            "label_moments": data.label_moments,
        },
    )
    return TrainResult(
        model_path=model_path,
        history_path=atomic_write_json(out / "history.json", history),
        curves_path=plot_history(history, out / "training_curves.png", task.metric),
        tensorboard_dir=out / "tensorboard",
        epochs_run=len(history["loss"]),
        monitor=task.monitor,
        best_val_score=best_score(history, task),
        model_builder=name,
        hardware=hardware.describe(),
        seconds=round(time.monotonic() - started, 2),
    )
