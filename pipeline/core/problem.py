"""The problem spec: what the model reads, what it predicts, and how it is judged.

One home for the facts every stage reads instead of assuming images: the features
(name -> kind, dtype, shape), the label, the task, the class names, the serving contract
derived from them, and the metrics each task is measured and gated by.

Ingest infers a spec from the data (`pipeline.data.problem_inference`), the config can
override each part, and the snapshot and the model card record it. Kinds of feature:

    numeric      float32 (or int64 when the column is whole numbers without missing values)
    categorical  string (or int64 when the column is whole numbers without missing values)
    text         string, tokenised on whitespace and punctuation
    image        uint8 [H, W, C]

Serving contract (`serving_default`): one input per feature, named by its key, shaped
[N] (images [N, H, W, C]); classification answers `probabilities` [N, K], `class_ids` [N]
and `class_names` [N], regression `predictions` [N]. A missing numeric value is NaN and a
missing categorical or text value the empty string, in training and in requests alike.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pipeline.core.errors import ConfigError

BINARY, MULTICLASS, REGRESSION = "binary", "multiclass", "regression"
TASKS = (BINARY, MULTICLASS, REGRESSION)
NUMERIC, CATEGORICAL, TEXT, IMAGE = "numeric", "categorical", "text", "image"
KINDS = (NUMERIC, CATEGORICAL, TEXT, IMAGE)
FLOAT, INT, STRING, UINT8 = "float32", "int64", "string", "uint8"
_DTYPES_BY_KIND = {NUMERIC: (FLOAT, INT), CATEGORICAL: (STRING, INT), TEXT: (STRING,), IMAGE: (UINT8,)}

# The name the one image input of IDX and image-folder sources has (their files name no column).
IMAGE_KEY = "images"
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")

# Metric -> (higher is better, tasks it exists for). Evaluation computes them; the gate and
# training's monitor read their direction here.
CLASSIFICATION = (BINARY, MULTICLASS)
METRICS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "accuracy": (True, CLASSIFICATION),
    "log_loss": (False, CLASSIFICATION),
    "macro_f1": (True, CLASSIFICATION),
    "auc": (True, (BINARY,)),
    "precision": (True, (BINARY,)),
    "recall": (True, (BINARY,)),
    "f1": (True, (BINARY,)),
    "rmse": (False, (REGRESSION,)),
    "mae": (False, (REGRESSION,)),
    "r2": (True, (REGRESSION,)),
}
# What each task is gated and monitored on unless the config names another metric.
DEFAULT_METRIC = {BINARY: "auc", MULTICLASS: "accuracy", REGRESSION: "rmse"}
# The metrics training logs per task (besides the loss): what `monitor_metric` may name.
TRAINING_METRICS = {BINARY: ("auc", "accuracy"), MULTICLASS: ("accuracy",), REGRESSION: ("rmse", "mae")}
# The metrics shown first for a task (run notes, registry page, report).
HEADLINE_METRICS = {
    BINARY: ("auc", "accuracy", "log_loss", "f1"),
    MULTICLASS: ("accuracy", "macro_f1", "log_loss"),
    REGRESSION: ("rmse", "mae", "r2"),
}


def signature_key(name: str) -> str:
    """The serving input name of a source column: characters outside [A-Za-z0-9_] become '_'.

    Args:
        name: A column (or TFDS feature) name as the source spells it.

    Returns:
        The key, e.g. 'bill length (mm)' -> 'bill_length__mm_'.
    """
    return _KEY_UNSAFE.sub("_", name) or "_"


def higher_is_better(metric: str) -> bool:
    """Whether larger values of `metric` are better.

    Raises:
        ConfigError: if the metric is unknown.
    """
    try:
        return METRICS[metric][0]
    except KeyError:
        raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}") from None


def check_metric_for_task(metric: str, task: str, option: str) -> None:
    """Raises ConfigError if `metric` (the value of config `option`) does not exist for `task`."""
    higher_is_better(metric)
    if task not in METRICS[metric][1]:
        usable = [name for name, (_, tasks) in METRICS.items() if task in tasks]
        raise ConfigError(f"{option} {metric!r} is not a {task} metric; choose one of: {', '.join(usable)}")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One model input.

    Attributes:
        name: The column (or TFDS feature) name in the source.
        key: The serving input name (`signature_key(name)`), also the snapshot's feature key.
        kind: 'numeric', 'categorical', 'text' or 'image'.
        dtype: What serving takes: 'float32', 'int64', 'string' or 'uint8' (images).
        shape: () for one value per row; (H, W, C) for images.
    """

    name: str
    key: str
    kind: str
    dtype: str
    shape: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"feature {self.name!r}: unknown kind {self.kind!r}; choose one of: {', '.join(KINDS)}")
        if self.dtype not in _DTYPES_BY_KIND[self.kind]:
            raise ConfigError(
                f"feature {self.name!r}: a {self.kind} feature is {' or '.join(_DTYPES_BY_KIND[self.kind])}, "
                f"not {self.dtype}"
            )
        if not _KEY_PATTERN.match(self.key):
            raise ConfigError(f"feature {self.name!r}: key {self.key!r} must match [A-Za-z0-9_]+")
        if (self.kind == IMAGE) != (len(self.shape) == 3):
            raise ConfigError(f"feature {self.name!r}: images have a shape (H, W, C) and only images do")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureSpec:
        return cls(**{**values, "shape": tuple(values.get("shape", ()))})


@dataclasses.dataclass(frozen=True)
class ProblemSpec:
    """What is learnt from what.

    Attributes:
        task: 'binary', 'multiclass' or 'regression'.
        label: The label column's name in the source.
        label_key: The label's key in the snapshot (`signature_key(label)`).
        features: The model's inputs, in source order.
        class_names: Classification: the name of each class id (binary: id 1 is the positive class).
    """

    task: str
    label: str
    label_key: str
    features: tuple[FeatureSpec, ...]
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        if not self.features:
            raise ConfigError(f"the problem has no features besides the label {self.label!r}")
        keys: dict[str, str] = {}
        for feature in self.features:
            if feature.key in keys or feature.key == self.label_key:
                other = keys.get(feature.key, self.label)
                raise ConfigError(
                    f"columns {other!r} and {feature.name!r} both map to the key {feature.key!r} "
                    "(characters outside [A-Za-z0-9_] become '_'): rename one or exclude it"
                )
            keys[feature.key] = feature.name
        if self.is_classification:
            if len(self.class_names) < 2:
                raise ConfigError(f"label {self.label!r}: classification needs at least 2 classes")
            if self.task == BINARY and len(self.class_names) != 2:
                raise ConfigError(
                    f"label {self.label!r} has {len(self.class_names)} classes: a binary task needs exactly 2"
                )
            if len(set(self.class_names)) != len(self.class_names):
                raise ConfigError(f"label {self.label!r}: class names repeat: {list(self.class_names)}")
        elif self.class_names:
            raise ConfigError(f"label {self.label!r}: a regression task has no class names")

    @property
    def is_classification(self) -> bool:
        return self.task in CLASSIFICATION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_features(self) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.features if f.kind == IMAGE)

    @property
    def single_image(self) -> FeatureSpec | None:
        """The image feature, when it is the only feature (the image models' case), else None."""
        return self.features[0] if len(self.features) == 1 and self.features[0].kind == IMAGE else None

    @property
    def default_metric(self) -> str:
        return DEFAULT_METRIC[self.task]

    def feature(self, key: str) -> FeatureSpec:
        """The feature with this key.

        Raises:
            ConfigError: naming the known keys, if there is none.
        """
        for feature in self.features:
            if feature.key == key:
                return feature
        raise ConfigError(f"no feature {key!r}; the features are: {', '.join(f.key for f in self.features)}")

    def renamed_columns(self) -> dict[str, str]:
        """{source name: key} of the columns whose key differs from their name (the model card's mapping)."""
        pairs = [(f.name, f.key) for f in self.features] + [(self.label, self.label_key)]
        return {name: key for name, key in pairs if name != key}

    def serving_inputs(self) -> dict[str, dict[str, Any]]:
        """The `serving_default` inputs: {key: {"dtype", "shape"}} with 'N' for the batch dimension."""
        return {f.key: {"dtype": f.dtype, "shape": ["N", *f.shape]} for f in self.features}

    def serving_outputs(self) -> dict[str, dict[str, Any]]:
        """The `serving_default` outputs: {name: {"dtype", "shape"}}."""
        if not self.is_classification:
            return {"predictions": {"dtype": FLOAT, "shape": ["N"]}}
        return {
            "probabilities": {"dtype": FLOAT, "shape": ["N", self.num_classes]},
            "class_ids": {"dtype": INT, "shape": ["N"]},
            "class_names": {"dtype": STRING, "shape": ["N"]},
        }

    def takes_examples(self) -> bool:
        """Whether Classify/Regress signatures on serialized tf.Example fit (no image features)."""
        return not self.image_features

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "label": self.label,
            "label_key": self.label_key,
            "features": [f.to_dict() for f in self.features],
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProblemSpec:
        """The spec stored by `to_dict` (in snapshot.json and the model card)."""
        return cls(
            task=values["task"],
            label=values["label"],
            label_key=values["label_key"],
            features=tuple(FeatureSpec.from_dict(f) for f in values["features"]),
            class_names=tuple(values.get("class_names", ())),
        )


def image_classification(image_shape: tuple[int, int, int], class_names: list[str], label: str = "label"):
    """The spec of an image-classification source with one image input (`IMAGE_KEY`): IDX and image folders."""
    return ProblemSpec(
        task=MULTICLASS if len(class_names) > 2 else BINARY,
        label=label,
        label_key=signature_key(label),
        features=(FeatureSpec(IMAGE_KEY, IMAGE_KEY, IMAGE, UINT8, tuple(int(d) for d in image_shape)),),
        class_names=tuple(class_names),
    )
