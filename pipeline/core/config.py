"""The one configuration object that flows into every stage.

`PipelineConfig` holds every option with its default, bounds, choices and help text:
the one home of those facts. The YAML loader, the CLI flags (`pipeline.cli`) and the
Airflow trigger form (`trigger_form_schema`, turned into `Param`s by the DAG) are all
generated from it. A config is built from a YAML file and/or `key=value` overrides and
checked once by `PipelineConfig.validate`, so stages can trust what they get.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import ConfigError
from pipeline.core.problem import METRICS, ProblemSpec

DEFAULT_DATA_SOURCE = "idx:/usr/share/datasets/fashion-mnist"
SOURCE_KINDS = ("idx", "tfds", "csv", "parquet", "images")
# Built-in model builders (pipeline.training.models); `model` also takes 'package.module:function'.
MODEL_NAMES = ("auto", "cnn", "cnn_deep", "mlp", "tabular", "text", "multimodal")
TASK_CHOICES = ("auto", "binary", "multiclass", "regression")
FEATURE_TYPE_CHOICES = ("numeric", "categorical", "text", "image")
IMAGE_MODES = ("auto", "L", "RGB")
MONITOR_CHOICES = ("auto", "loss", "accuracy", "auc", "rmse", "mae")
AUTO = "auto"
_MODEL_PATH_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
STRATEGIES = ("auto", "mirrored", "one_device", "cpu", "multi_worker")
MIXED_PRECISION_MODES = ("auto", "on", "off")
_RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,127}$")
_MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _field(default: Any, help: str, *, title: str | None = None, **schema: Any) -> Any:
    """A config field: its help text, an optional trigger-form title and JSON-schema bounds.

    `schema` takes `minimum`, `maximum`, `exclusive_minimum`, `exclusive_maximum`,
    `choices` (allowed values) and `pattern`; `validate` enforces them and the trigger
    form shows them. A `title` puts the field on the Airflow trigger form; `example`
    (a typical value) goes into its description.
    """
    metadata = {"help": help, "title": title, **schema}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class PipelineConfig:
    """All pipeline options. Field names double as CLI flags (`--batch-size`)."""

    # Data
    data_source: str = _field(
        DEFAULT_DATA_SOURCE,
        "Where the data comes from: 'csv:<file or glob>', 'parquet:<file or glob>', 'images:<dir>' "
        "(<dir>/<class>/* or <dir>/<split>/<class>/*), 'tfds:<name>' or 'idx:<dir>' (MNIST-format IDX files).",
        title="Data source",
        example="idx:/usr/share/datasets/fashion-mnist",
        pattern=r"^(idx|tfds|csv|parquet|images):.+",
    )
    label: str | None = _field(
        None,
        "The label column (tables) or TFDS feature; default: a column named 'label' or 'target', or the "
        "TFDS dataset's supervised label.",
    )
    task: str = _field(
        AUTO,
        "What is predicted: 'binary', 'multiclass', 'regression', or 'auto' (from the label: text, booleans and "
        "whole numbers with few values are classes, other numbers regression).",
        choices=TASK_CHOICES,
    )
    feature_types: dict[str, str] | None = _field(
        None,
        "Kinds of feature that override inference, by source column name: numeric, categorical, text or image "
        "(YAML mapping; 'col=kind,col2=kind' on the command line).",
    )
    exclude_columns: list[str] | None = _field(None, "Source columns that are not features (ids, leaks).")
    split_fractions: list[float] = _field(
        [0.8, 0.1, 0.1],
        "Train, validation and test shares of a source with one split (seeded by `seed`, deterministic).",
    )
    image_size: list[int] | None = _field(
        None, "Height and width image-folder images are resized to (default: the most common size)."
    )
    image_mode: str = _field(
        AUTO,
        "Colour mode of image-folder images: 'L' (grayscale), 'RGB', or 'auto' (all images must share one).",
        choices=IMAGE_MODES,
    )
    ingest_memory_budget_mb: int = _field(
        32,
        "Serialized examples an ingest part holds in memory before it spills them to disk (MiB, shared "
        "by the splits it writes), and what the merge into shards may hold; the snapshot is the same "
        "whatever the budget.",
        minimum=1,
    )
    ingest_part_mb: float = _field(
        256.0,
        "Source values per ingest part (MiB): the training DAG writes each part in its own mapped task "
        "(`ingest_part`), so more parts spread ingest over more workers; the snapshot is the same "
        "whatever the size.",
        exclusive_minimum=0,
    )
    snapshot_shards: int | None = _field(
        None,
        "Shard files per split of a new snapshot (unset: TFDS's rule, 64 MiB to 1 GiB each). More shards "
        "let more workers read their own part; an existing snapshot of the same data keeps its shards.",
        minimum=1,
    )
    tfds_data_dir: str | None = _field(None, "TFDS data_dir for 'tfds:' sources (TFDS's default when unset).")
    allow_download: bool = _field(False, "Let a 'tfds:' source download and prepare data (needs network).")
    class_names: list[str] | None = _field(
        None,
        "Class names in class-id order: an IDX source's names (else class_names.txt in the folder, or known "
        "names); for a table, the label values in the order to number them (binary: the second is positive).",
    )
    train_split: str = _field(
        AUTO,
        "TFDS split expression used for training ('auto': 'train' when the snapshot has a validation split, "
        "else 'train[:90%]').",
    )
    validation_split: str = _field(
        AUTO,
        "Split used for early stopping and checkpoint selection ('auto': 'validation', else 'train[90%:]').",
    )
    test_split: str = _field(AUTO, "Held-out split used by the evaluation gate ('auto': 'test').")

    # Workspace
    workdir: str = _field("artifacts", "Root folder for snapshots, runs and validation state.")
    run_id: str | None = _field(None, "Run identifier; reuse one to resume an interrupted run.")
    seed: int = _field(42, "Seed for shuffling, initialisation and augmentation.")

    # Validation
    max_label_shift: float = _field(
        0.10, "Severe if any class frequency moves more than this (L-infinity) vs the previous snapshot."
    )
    max_pixel_drift: float = _field(
        0.25,
        "Severe if the pixel mean moves more than this many previous standard deviations "
        "(or the pixel std changes by more than this fraction).",
    )
    max_split_size_change: float = _field(
        0.50, "Severe if a split's size changes by more than this fraction vs the previous snapshot."
    )
    max_missing_rate_increase: float = _field(
        0.05,
        "Severe if a feature's share of missing values grows by more than this over the schema's (stored from the "
        "first snapshot's training split).",
        minimum=0,
        maximum=1,
    )
    max_unseen_share: float = _field(
        0.01,
        "Severe if more than this share of a categorical feature's values are not in the schema's vocabulary.",
        minimum=0,
        maximum=1,
    )
    max_out_of_range_share: float = _field(
        0.01,
        "Warning if more than this share of a numeric feature's values fall outside the schema's min-max range.",
        minimum=0,
        maximum=1,
    )
    max_empty_text_increase: float = _field(
        0.05, "Warning if a text feature's share of empty values grows by more than this.", minimum=0, maximum=1
    )
    max_feature_drift: float = _field(
        0.1,
        "Drift of a feature (vs the previous snapshot, and of requests vs the training data): severe above this "
        "L-infinity distance of category shares, or Jensen-Shannon divergence (0-1) of the values' histogram.",
        minimum=0,
        maximum=1,
    )
    min_rows_to_judge: int = _field(
        100,
        "Splits with fewer rows get their drift, missing-value, range and empty-text checks as warnings: too few "
        "rows to tell a change from chance (unseen categories stay severe).",
        minimum=1,
    )
    feature_drift_thresholds: dict[str, float] | None = _field(
        None,
        "max_feature_drift per feature, by column name or key (YAML mapping; 'col=0.2,col2=0.05' on the command "
        "line); features not named use max_feature_drift.",
    )
    update_schema: bool = _field(
        False, "Accept this snapshot's schema as the new stored schema instead of checking it."
    )

    # Preprocessing
    shuffle_buffer: int = _field(10_000, "Shuffle buffer size in examples.", minimum=1)
    augment: bool = _field(False, "Random horizontal flips and small shifts while training.")
    augment_shift: float = _field(
        0.1,
        "Largest random shift when augmenting, as a fraction of height and width (0: flips only).",
        minimum=0,
        maximum=0.5,
    )
    cache: bool = _field(
        True,
        "Cache the training data in memory after the first epoch (images decoded, tables as their serialized "
        "records), when the split fits `cache_max_mb`.",
    )
    cache_max_mb: int = _field(
        2048,
        "Largest split (in MiB, as tf.data's cache holds it) that training caches in memory; bigger splits are "
        "streamed from the snapshot's shards every epoch.",
        minimum=0,
    )

    # Features inside the model
    max_vocabulary: int = _field(
        1000, "Categories kept per categorical feature (the most frequent; others share one unknown slot).", minimum=1
    )
    text_max_tokens: int = _field(20000, "Vocabulary size of a text feature's bag of words.", minimum=2)
    clip_numeric_features: bool = _field(
        True,
        "Bring a numeric feature's values outside the training split's range to its nearest end before "
        "standardising (as trees do), so that one far-out value cannot swing a prediction without bound.",
    )

    # Model and training
    model: str = _field(
        AUTO,
        "Model builder: 'auto' (cnn for one image input, text for text, tabular otherwise), a built-in name "
        f"({', '.join(MODEL_NAMES[1:])}) or your own function as 'package.module:function'.",
        title="Model",
        example="auto",
        pattern=rf"^({'|'.join(MODEL_NAMES)}|{_MODEL_PATH_PATTERN.pattern[1:-1]})$",
    )
    # Defaults tuned on the full Fashion-MNIST: >= 93% test accuracy within 5 minutes of training on
    # 2 CPU cores (bench/training_speed.py); the validation split chose them, the test split only reports.
    epochs: int = _field(
        12,
        "Maximum number of training epochs (early stopping may end sooner).",
        title="Epochs",
        example=12,
        minimum=1,
        maximum=500,
    )
    batch_size: int = _field(
        128, "Global batch size (split across replicas).", title="Batch size", example=128, minimum=1, maximum=8192
    )
    learning_rate: float = _field(
        2e-3,
        "Peak learning rate (Adam; linear warmup, then cosine decay).",
        title="Learning rate",
        example=0.002,
        exclusive_minimum=0,
        maximum=1,
    )
    warmup_epochs: float = _field(
        1.0,
        "Epochs of linear learning-rate warmup (from a tenth of the peak) before the cosine decay.",
        minimum=0,
        maximum=100,
    )
    label_smoothing: float = _field(
        0.1, "Label smoothing of the training loss (0 turns it off).", minimum=0, exclusive_maximum=1
    )
    test_time_flip: bool = _field(
        False,
        "Answer with the mean of each image's and its mirror's probabilities (test-time augmentation: "
        "twice the inference cost; pair it with augment).",
    )
    dropout: float = _field(0.15, "Dropout rate used by the model builders.", minimum=0, exclusive_maximum=1)
    early_stopping_patience: int = _field(4, "Epochs without validation improvement before stopping.", minimum=1)
    monitor_metric: str = _field(
        AUTO,
        "The validation metric that picks the checkpoint and stops early ('auto': accuracy for multiclass, auc for "
        "binary, rmse for regression; 'loss' suits small validation splits, where accuracy ties).",
        choices=MONITOR_CHOICES,
    )
    strategy: str = _field(
        "auto",
        "Distribution strategy: 'auto' (all local GPUs, else the CPU), 'mirrored', 'one_device', 'cpu', or "
        "'multi_worker' (MultiWorkerMirroredStrategy across the machines TF_CONFIG names).",
        choices=STRATEGIES,
    )
    mixed_precision: str = _field(
        "auto", "mixed_float16: 'auto' (on for GPUs), 'on' or 'off'.", choices=MIXED_PRECISION_MODES
    )
    jit_compile: bool = _field(False, "Compile the model with XLA.")

    # Evaluation gate
    gate_metric: str = _field(
        AUTO,
        "Gate: the metric gate_threshold and max_regression judge ('auto': accuracy for multiclass, auc for "
        "binary, rmse for regression).",
        title="Gate metric",
        example="auto",
        choices=(AUTO, *METRICS),
    )
    gate_threshold: float | None = _field(
        None,
        "Gate: absolute bound on gate_metric in its direction (at least this for accuracy, auc, r2...; at most "
        "this for rmse, mae, log_loss); none: no bound.",
        title="Gate threshold",
        example=0.9,
    )
    min_accuracy: float | None = _field(
        0.85,
        "Gate (classification): the candidate needs at least this test accuracy (none: not checked).",
        title="Minimum accuracy",
        example=0.9,
        minimum=0,
        maximum=1,
    )
    max_regression: float = _field(
        0.01,
        "Gate: largest allowed worsening of gate_metric vs the published baseline, in the metric's units.",
        title="Maximum regression",
        example=0.01,
        minimum=0,
    )
    decision_threshold: float = _field(
        0.5,
        "Binary tasks: the probability of the positive class from which a row is predicted positive.",
        exclusive_minimum=0,
        exclusive_maximum=1,
    )
    min_class_recall: float | None = _field(
        None,
        "Gate: every class needs at least this recall on the test split (none: no per-class floor).",
        minimum=0,
        maximum=1,
    )
    max_class_regression: float | None = _field(
        None,
        "Gate: largest allowed drop of any class's recall vs the published baseline (none: not checked).",
        minimum=0,
        maximum=1,
    )
    slice_features: list[str] | None = _field(
        None,
        "Gate: categorical features (column names or keys) whose values slice the test split; each slice gets the "
        "task's metrics and the slice rules (comma-separated on the command line).",
    )
    slice_min_size: int = _field(
        30, "Gate: slices with fewer test rows are reported but not gated (too few to judge).", minimum=1
    )
    slice_min_metric: float | None = _field(
        None,
        "Gate: every slice's gate_metric must be within this bound, in the metric's direction (at least for "
        "accuracy, auc...; at most for rmse...) (none: not checked).",
    )
    slice_max_regression: float | None = _field(
        None,
        "Gate: largest allowed worsening of a slice's gate_metric vs the baseline on the same slice (none: not "
        "checked).",
        minimum=0,
    )
    baseline_version: int | None = _field(
        None, "Published version to compare against (default: the one labelled stable, else the newest one)."
    )

    # Export
    model_base_path: str = _field(
        "artifacts/models", "Serving base path; versions go to <model_base_path>/<model_name>/<N>."
    )
    model_name: str | None = _field(
        None,
        "Name of the served model (default: the data source's file or folder name with characters outside "
        "[A-Za-z0-9_] as '_', e.g. fashion_mnist for the default source).",
    )
    keep_versions: int = _field(5, "Number of newest versions to keep after publishing.", minimum=1)
    warmup_requests: int = _field(
        10, "Records written to assets.extra/tf_serving_warmup_requests.", minimum=1, maximum=1000
    )

    # Serving, infra-validation and promotion
    serving_config_file: str = _field(
        "artifacts/serving/models.config",
        "ModelServerConfig the serving server reads; promotion rewrites its versions and labels.",
    )
    serving_grpc_target: str | None = _field(
        "localhost:8500", "gRPC address of the serving server (config reloads, smoke tests); none to skip."
    )
    serving_rest_url: str | None = _field("http://localhost:8501", "REST address of the serving server.")
    serving_management_target: str | None = _field(
        None,
        "gRPC address for config reloads when the server serves model management apart "
        "(--model_management_address); default: serving_grpc_target.",
    )
    serving_replicas: list[str] | None = _field(
        None,
        "More serving servers on the same model storage (gRPC host:port; a YAML list, comma-separated on "
        "the command line): promotion applies every change to each of them too, and undoes it on all "
        "when one refuses.",
    )
    serving_model_base_path: str | None = _field(
        None, "model_base_path as the serving server sees it (e.g. /models in a container); default: the same."
    )
    infra_validation_grpc_target: str | None = _field(
        None, "A dedicated TF Serving to infra-validate in (default: a sandboxed local server process)."
    )
    # Request logging and drift monitoring (the closed loop)
    request_log_sampling_rate: float = _field(
        0.0,
        "Share of Predict calls the serving server writes as PredictionLog records (its logging_config; 0: off).",
        minimum=0,
        maximum=1,
    )
    request_log_dir: str = _field(
        "artifacts/request_logs", "Folder of the request logs (<dir>/<model_name>.<time>-<pid>-<n>.tfrecord)."
    )
    drift_min_requests: int = _field(
        100, "Drift check: fewer logged requests than this are not judged (too few to tell).", minimum=1
    )
    drift_max_pixel_mean_shift: float = _field(
        0.5,
        "Drift: largest allowed shift of the requests' pixel mean, in training-data standard deviations.",
        minimum=0,
    )
    drift_max_prediction_shift: float = _field(
        0.1,
        "Drift of a regression model's predictions: largest Jensen-Shannon divergence (0-1) of their histogram from "
        "the training labels'.",
        minimum=0,
        maximum=1,
    )
    drift_max_class_distance: float = _field(
        0.25,
        "Drift: largest allowed total variation distance of the predicted-class distribution from the training "
        "labels'.",
        minimum=0,
        maximum=1,
    )
    # Canary on live traffic (between the smoke test and `stable`)
    canary_watch_seconds: float = _field(
        0.0,
        "How long the canary is watched on live traffic before `stable` moves (0: no watch). A canary that "
        "fails a threshold is rolled back at once; one with too little traffic at the end is rolled back too.",
        minimum=0,
        maximum=7 * 24 * 3600,
    )
    canary_traffic_percent: int = _field(
        10,
        "Share (%) of unaddressed live requests the canary answers while watched (the local server's "
        "traffic_split label; in front of TF Serving, the load balancer's split).",
        minimum=0,
        maximum=100,
    )
    canary_shadow: bool = _field(
        False,
        "Also mirror the sampled unaddressed requests to the canary while watched; its answers are logged for "
        "the comparison, never returned (needs request logging).",
    )
    canary_min_requests: int = _field(50, "Canary watch: answers the canary must give before it is judged.", minimum=1)
    canary_max_error_rate: float = _field(
        0.01,
        "Canary watch: largest allowed excess of the canary's error rate over stable's, in the window.",
        minimum=0,
        maximum=1,
    )
    canary_max_latency_ratio: float = _field(
        2.0, "Canary watch: largest allowed canary/stable mean latency ratio in the window.", exclusive_minimum=0
    )
    canary_min_agreement: float | None = _field(
        0.9,
        "Canary watch: least share of the canary's logged answers that agree with stable's on the same inputs "
        "(the same class; regression: within canary_regression_tolerance) (none: not checked, e.g. without "
        "request logging).",
        minimum=0,
        maximum=1,
    )
    canary_regression_tolerance: float = _field(
        0.1,
        "Canary watch, regression models: a canary's prediction agrees with stable's when it is within this "
        "relative difference of it (classification: the same class).",
        exclusive_minimum=0,
        maximum=10,
    )
    infra_validation_rest_url: str | None = _field(
        None, "REST address of that dedicated TF Serving (with infra_validation_grpc_target)."
    )
    infra_validation_timeout_s: float = _field(
        180.0, "Longest the candidate may take to load and answer in infra-validation.", exclusive_minimum=0
    )
    smoke_test_examples: int = _field(
        64, "Real test images sent in infra-validation and smoke tests.", minimum=1, maximum=10000
    )
    force: bool = _field(
        False,
        "Train and promote even if data, config and code equal the stable model's; needs a force reason.",
        title="Force",
        example=True,
    )
    force_reason: str | None = _field(
        None,
        "Why the run is forced: required with force, kept in the lineage log with who and when.",
        title="Force reason",
        example="retrain after the labelling fix",
    )

    def validate(self) -> PipelineConfig:
        """Checks every value and returns self.

        Returns:
            This config, unchanged.

        Raises:
            ConfigError: naming the first field whose value is not acceptable.
        """
        for field in dataclasses.fields(self):
            _check_type(field, getattr(self, field.name))
            _check_range(field, getattr(self, field.name))
        if not re.match(_field_meta("data_source")["pattern"], self.data_source):
            raise ConfigError(
                "data_source must look like "
                + ", ".join(f"'{kind}:...'" for kind in SOURCE_KINDS)
                + f", got {self.data_source!r}"
            )
        if not re.match(_field_meta("model")["pattern"], self.model):
            raise ConfigError(
                f"model {self.model!r} is neither a built-in ({', '.join(MODEL_NAMES)}) nor an import path "
                "'package.module:function'"
            )
        for name, (low, high) in _MAPPING_BOUNDS.items():
            for key, value in (getattr(self, name) or {}).items():
                if not low <= value <= high:
                    raise ConfigError(f"{name}[{key!r}] must be between {low:g} and {high:g}, got {value}")
        for kind in (self.feature_types or {}).values():
            if kind not in FEATURE_TYPE_CHOICES:
                raise ConfigError(
                    f"feature_types: unknown kind {kind!r}; choose one of: {', '.join(FEATURE_TYPE_CHOICES)}"
                )
        if len(self.split_fractions) != 3 or any(share < 0 for share in self.split_fractions):
            raise ConfigError(
                f"split_fractions must be 3 shares >= 0 (train, validation, test), got {self.split_fractions}"
            )
        if abs(sum(self.split_fractions) - 1) > 1e-6 or not all(share > 0 for share in self.split_fractions):
            raise ConfigError(f"split_fractions must be 3 shares > 0 that sum to 1, got {self.split_fractions}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(f"image_size must be [height, width] of at least 1 pixel, got {self.image_size}")
        if self.run_id is not None and not _RUN_ID_PATTERN.match(self.run_id):
            raise ConfigError(f"run_id {self.run_id!r} must be 1-128 letters, digits or _.+:- (no slashes)")
        if self.model_name is None:
            self.model_name = default_model_name(self.data_source)
        if not _MODEL_NAME_PATTERN.match(self.model_name):
            raise ConfigError(f"model_name {self.model_name!r} must be 1-64 letters, digits or _.- (no slashes)")
        if self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"class_names has duplicates: {self.class_names}")
        if self.canary_watch_seconds > 0 and self.request_log_sampling_rate <= 0:
            if self.canary_shadow:
                raise ConfigError(
                    "canary_shadow mirrors the requests the request log samples: set request_log_sampling_rate > 0"
                )
            if self.canary_min_agreement is not None:
                raise ConfigError(
                    "canary_min_agreement compares the canary's logged answers with stable's: set "
                    "request_log_sampling_rate > 0, or canary_min_agreement to none"
                )
        if self.force and not (self.force_reason or "").strip():
            raise ConfigError("force needs a force_reason: say why the run must train and promote anyway (audited)")
        return self

    def check_for(self, problem: ProblemSpec) -> PipelineConfig:
        """Checks the options that name features or metrics against the data's problem spec; returns self.

        Raises:
            ConfigError: naming the option and the key: a gate or monitored metric the task does not have,
                a slice feature that does not exist or is not categorical, a drift threshold for a feature
                the data does not have.
        """
        from pipeline.core.problem import CATEGORICAL, TRAINING_METRICS, check_metric_for_task

        if self.gate_metric != AUTO:
            check_metric_for_task(self.gate_metric, problem.task, "gate_metric")
        features = {f.key: f for f in problem.features} | {f.name: f for f in problem.features}
        keys = ", ".join(f.key for f in problem.features)
        for name in self.slice_features or ():
            if name not in features:
                raise ConfigError(f"slice_features: {name!r} is not a feature; the features are: {keys}")
            if features[name].kind != CATEGORICAL:
                raise ConfigError(
                    f"slice_features: {name!r} is a {features[name].kind} feature; slices need a categorical one"
                )
        unknown = sorted(set(self.feature_drift_thresholds or {}) - set(features))
        if unknown:
            raise ConfigError(
                f"feature_drift_thresholds names features the data does not have: {unknown}; the features are: {keys}"
            )
        logged = TRAINING_METRICS[problem.task]
        if self.monitor_metric not in (AUTO, "loss", *logged):
            raise ConfigError(
                f"monitor_metric {self.monitor_metric!r} is not logged for a {problem.task} task; choose one of: "
                f"auto, loss, {', '.join(logged)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as plain JSON-serialisable values."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> PipelineConfig:
        """Returns a validated copy with `changes` applied."""
        return dataclasses.replace(self, **changes).validate()

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir)

    @property
    def model_dir(self) -> Path:
        """The folder holding the numbered versions of the served model."""
        return Path(self.model_base_path) / self.model_name


def default_model_name(data_source: str) -> str:
    """The served model's name a data source suggests: its file's stem or folder's name, as an identifier.

    'idx:/usr/share/datasets/fashion-mnist' -> 'fashion_mnist', 'csv:/data/penguins.csv' -> 'penguins',
    'csv:/data/trips/*.parquet' -> 'trips', 'tfds:mnist' -> 'mnist'.
    """
    kind, _, location = data_source.partition(":")
    if kind == "tfds":
        location = location.split("/", 1)[0]  # 'mnist/3.0.1' names the dataset 'mnist'
    path = Path(location.rstrip("/"))
    while path.name and any(char in path.name for char in "*?["):
        path = path.parent
    stem = path.name.split("[", 1)[0].split("/", 1)[0]
    for suffix in (".gz", ".csv", ".parquet", ".pq", ".tsv"):
        stem = stem.removesuffix(suffix)
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem).strip("_")
    return name[:64] or "model"


# The options that decide what a run produces (training and the gate): equal values, data
# and code mean a new run would reproduce the decision already made for the stable model.
RUN_SIGNATURE_FIELDS = (
    "data_source",
    "label",
    "task",
    "feature_types",
    "exclude_columns",
    "split_fractions",
    "image_size",
    "image_mode",
    "class_names",
    "train_split",
    "validation_split",
    "test_split",
    "seed",
    "batch_size",
    "shuffle_buffer",
    "max_vocabulary",
    "text_max_tokens",
    "clip_numeric_features",
    "augment",
    "augment_shift",
    "model",
    "test_time_flip",
    "epochs",
    "learning_rate",
    "warmup_epochs",
    "label_smoothing",
    "dropout",
    "early_stopping_patience",
    "monitor_metric",
    "mixed_precision",
    "jit_compile",
    "gate_metric",
    "gate_threshold",
    "min_accuracy",
    "max_regression",
    "decision_threshold",
    "min_class_recall",
    "max_class_regression",
    "slice_features",
    "slice_min_size",
    "slice_min_metric",
    "slice_max_regression",
)


def run_signature(config: PipelineConfig | dict[str, Any]) -> dict[str, Any]:
    """Returns the subset of a config (or of its dict form) that decides a run's outcome."""
    values = config if isinstance(config, dict) else config.to_dict()
    return {name: values.get(name) for name in RUN_SIGNATURE_FIELDS}


def _field_meta(name: str) -> dict[str, Any]:
    return PipelineConfig.__dataclass_fields__[name].metadata


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(PipelineConfig)


def _base_type(field_name: str) -> tuple[type, bool]:
    """Returns (scalar or list type, optional?) for a field's annotation."""
    hint = _type_hints()[field_name]
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = True
        hint = args[0]
    return hint, optional


def _check_type(field: dataclasses.Field, value: Any) -> None:
    hint, optional = _base_type(field.name)
    if value is None:
        if optional:
            return
        raise ConfigError(f"{field.name} must not be empty")
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list) or not all(_is_instance(v, item) for v in value):
            raise ConfigError(f"{field.name} must be a list of {_TYPE_WORDS[item]}, got {value!r}")
        return
    if typing.get_origin(hint) is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and _is_instance(v, item) for k, v in value.items()
        ):
            raise ConfigError(f"{field.name} must be a mapping of names to {_TYPE_WORDS[item]}, got {value!r}")
        return
    if not _is_instance(value, hint):
        raise ConfigError(f"{field.name} must be {hint.__name__}, got {type(value).__name__} {value!r}")


_TYPE_WORDS = {str: "strings", int: "integers", float: "numbers"}
# Bounds of each value of a mapping option (the thresholds per feature).
_MAPPING_BOUNDS = {"feature_drift_thresholds": (0.0, 1.0)}


def _is_instance(value: Any, hint: type) -> bool:
    """isinstance, except that a bool is no number and an int is a float."""
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_range(field: dataclasses.Field, value: Any) -> None:
    if value is None or isinstance(value, (bool, list, dict)):
        return
    meta = field.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"unknown {field.name} {value!r}; choose one of: {', '.join(meta['choices'])}")
    if "minimum" in meta and value < meta["minimum"]:
        raise ConfigError(f"{field.name} must be >= {meta['minimum']}, got {value}")
    if "maximum" in meta and value > meta["maximum"]:
        raise ConfigError(f"{field.name} must be <= {meta['maximum']}, got {value}")
    if "exclusive_minimum" in meta and value <= meta["exclusive_minimum"]:
        raise ConfigError(f"{field.name} must be > {meta['exclusive_minimum']}, got {value}")
    if "exclusive_maximum" in meta and value >= meta["exclusive_maximum"]:
        raise ConfigError(f"{field.name} must be < {meta['exclusive_maximum']}, got {value}")


def field_names() -> list[str]:
    """Returns the names of all config fields in declaration order."""
    return [f.name for f in dataclasses.fields(PipelineConfig)]


def field_help(name: str) -> str:
    """Returns the help text of one config field, with its choices and range."""
    meta = _field_meta(name)
    details = [_describe_range(meta)] if _describe_range(meta) else []
    if "example" in meta:
        details.append(f"e.g. {json.dumps(meta['example'])}")
    return meta["help"] + (f" ({'; '.join(details)})" if details else "")


def _describe_range(meta: dict[str, Any]) -> str:
    if "choices" in meta:
        return "one of: " + ", ".join(meta["choices"])
    low = (
        f">= {meta['minimum']}"
        if "minimum" in meta
        else f"> {meta['exclusive_minimum']}"
        if "exclusive_minimum" in meta
        else ""
    )
    high = (
        f"<= {meta['maximum']}"
        if "maximum" in meta
        else f"< {meta['exclusive_maximum']}"
        if "exclusive_maximum" in meta
        else ""
    )
    return " and ".join(part for part in (low, high) if part)


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}
_SCHEMA_KEYS = {
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusive_minimum": "exclusiveMinimum",
    "exclusive_maximum": "exclusiveMaximum",
    "pattern": "pattern",
}


# Trigger-form options that mean nothing for a task (the form of a regression model shows no accuracy).
_FORM_FIELDS_NOT_FOR = {"regression": ("min_accuracy",)}


def trigger_form_fields(task: str = AUTO) -> list[str]:
    """Names of the options an orchestrator's trigger form shows (those with a title) for a task."""
    hidden = _FORM_FIELDS_NOT_FOR.get(task, ())
    return [f.name for f in dataclasses.fields(PipelineConfig) if f.metadata.get("title") and f.name not in hidden]


def trigger_form_schema(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """JSON-schema keyword arguments of each trigger-form option, defaults taken from `config`.

    The DAG turns each entry into `airflow.sdk.Param(**entry)`; the pipeline stays free of Airflow.
    When the config names its task, the form shows that task's options and metrics only.

    Returns:
        {option: {"default", "type", "title", "description", and its bounds / enum / pattern}}.
    """
    schema = {}
    for name in trigger_form_fields(config.task):
        meta = _field_meta(name)
        hint, optional = _base_type(name)
        entry: dict[str, Any] = {
            "default": getattr(config, name),
            # An optional option may stay empty: Airflow's form marks a field required unless null is allowed.
            "type": [_JSON_TYPES[hint], "null"] if optional else _JSON_TYPES[hint],
            "title": meta["title"],
            "description": field_help(name),
        }
        bounds = {key: meta[attr] for attr, key in _SCHEMA_KEYS.items() if attr in meta}
        # Airflow's form clamps a number field to a top-level minimum/maximum as the user leaves
        # it (epochs 0 silently became 1); inside `allOf` the bounds are still enforced when the
        # run is triggered (the UI and the REST API refuse it, naming the field) but never clamped.
        if bounds:
            entry["allOf"] = [bounds]
        if "choices" in meta:
            entry["enum"] = list(meta["choices"])
        if name == "gate_metric" and config.task != AUTO:
            entry["enum"] = [AUTO, *(metric for metric, (_, tasks) in METRICS.items() if config.task in tasks)]
        schema[name] = entry
    return schema


def parse_value(name: str, text: str) -> Any:
    """Converts a command-line string to the type of config field `name`.

    Args:
        name: A config field name.
        text: The value as typed by the user.

    Returns:
        The value converted to the field's type.

    Raises:
        ConfigError: if the field is unknown or the text does not convert.
    """
    if name not in field_names():
        raise ConfigError(f"unknown config option {name!r}")
    hint, optional = _base_type(name)
    if optional and text.strip().lower() in ("", "none", "null"):
        return None
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        parts = [part.strip() for part in text.split(",") if part.strip()]
        try:
            return [item(part) for part in parts]
        except ValueError:
            raise ConfigError(f"{name} must be a comma-separated list of {_TYPE_WORDS[item]}, got {text!r}") from None
    if typing.get_origin(hint) is dict:
        _, item = typing.get_args(hint)
        pairs = [part.strip() for part in text.split(",") if part.strip()]
        if not all("=" in pair for pair in pairs):
            raise ConfigError(f"{name} must look like 'name=value,name2=value2', got {text!r}")
        try:
            return {key.strip(): item(value.strip()) for key, value in (pair.split("=", 1) for pair in pairs)}
        except ValueError:
            raise ConfigError(f"{name} must map names to {_TYPE_WORDS[item]}, got {text!r}") from None
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {text!r}")
    try:
        return hint(text)
    except ValueError:
        raise ConfigError(f"{name} must be {hint.__name__}, got {text!r}") from None


def _read_mapping(path: str | Path) -> dict[str, Any]:
    """Reads a YAML config file: a mapping of option names to values (empty file: none)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options")
    return loaded


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, preset: str = "default"
) -> PipelineConfig:
    """Builds a validated config from defaults, a preset, an optional YAML file and overrides.

    Args:
        path: A YAML file with a mapping of field names to values, or None.
        overrides: Field values that win over the file (already typed).
        preset: A name from `pipeline.core.presets.preset_names()`: its values sit under the file's.

    Returns:
        The validated `PipelineConfig`.

    Raises:
        ConfigError: if the file cannot be read, has unknown keys, or any value is invalid.
    """
    from pipeline.core.presets import preset_path

    values: dict[str, Any] = {}
    for source in (preset_path(preset), path):  # A preset is a config file that the user's file overrides.
        if source is not None:
            values.update(_read_mapping(source))
    values.update(overrides or {})
    unknown = sorted(set(values) - set(field_names()))
    if unknown:
        raise ConfigError(f"unknown config option(s): {', '.join(unknown)}")
    return PipelineConfig(**values).validate()
