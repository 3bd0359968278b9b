"""Infers the problem spec from a source's columns; the config overrides any part of it.

Rules (each overridable: `label`, `task`, `feature_types`, `exclude_columns`, `class_names`):

- The label is `label`, else the source's own label (TFDS supervised key, an image folder's
  classes), else the one column named 'label' or 'target' (any case).
- Task: text, booleans and known class labels are classes; numbers are classes when they are
  whole and take at most `MAX_INTEGER_CLASSES` values, else regression. Two classes make a
  binary task, more a multiclass one.
- Features: images are images; numbers are numeric; text is categorical, unless its values
  average at least `TEXT_MIN_WORDS` words and mostly differ from each other (then text).
  A text column whose values are mostly numbers is refused as mixed types.
- Class names: the source's, or `class_names` (in that order), or the label's values sorted.

The rules read only each column's `ColumnSummary` (one bounded pass over the values), so a
source streamed from files bigger than memory is inferred exactly as one held in memory.

`prepare_columns` then brings every split to the spec: feature columns converted to their
dtype (missing numbers NaN, missing text ''), labels as class ids (classification) or float32,
and rows without a label dropped and counted.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.core.config import AUTO, PipelineConfig
from pipeline.core.errors import DataSourceError
from pipeline.core.problem import (
    BINARY,
    CATEGORICAL,
    FLOAT,
    IMAGE,
    INT,
    MULTICLASS,
    NUMERIC,
    REGRESSION,
    STRING,
    TEXT,
    UINT8,
    FeatureSpec,
    ProblemSpec,
    signature_key,
)
from pipeline.data.column_summary import IMAGE as IMAGE_VALUES
from pipeline.data.column_summary import INTEGER as INTEGER_VALUES
from pipeline.data.column_summary import MAX_TRACKED_VALUES, ColumnSummary, summarize_columns
from pipeline.data.column_summary import TEXT as TEXT_VALUES
from pipeline.data.source_data import SourceData, missing_mask

MAX_INTEGER_CLASSES = 20
TEXT_MIN_WORDS = 3.0
TEXT_MIN_DISTINCT_SHARE = 0.5
MIXED_TYPES_SHARE = 0.5  # a text column with at least this share of numbers is a broken numeric column
_LABEL_NAMES = ("label", "target")


def choose_label(source: SourceData, config: PipelineConfig) -> str:
    """The label column's name.

    Raises:
        DataSourceError: if the configured label is not a column, or none can be chosen.
    """
    if config.label is not None:
        if config.label not in source.columns:
            raise DataSourceError(
                f"{source.location}: label column {config.label!r} does not exist; the columns are: "
                + ", ".join(source.columns)
            )
        return config.label
    if source.label_hint in source.columns:
        return source.label_hint
    named = [c for c in source.columns if c.lower() in _LABEL_NAMES]
    if len(named) == 1:
        return named[0]
    raise DataSourceError(
        f"{source.location}: say which column is the label (--label COLUMN); the columns are: "
        + ", ".join(source.columns)
    )


def _distinct_labels(label: ColumnSummary, location: str) -> list:
    try:
        return label.sorted_values()
    except ValueError:
        raise DataSourceError(
            f"{location}: label column {label.name!r} has more than {MAX_TRACKED_VALUES} distinct values: "
            "too many classes (set task=regression if it holds amounts)"
        ) from None


def infer_task(source: SourceData, label: ColumnSummary, configured: str) -> str:
    """The task: the configured one, or inferred from the label's summary (see the module doc).

    Raises:
        DataSourceError: if the label has no values, a single value, or values the task cannot learn.
    """
    location, name = source.location, label.name
    if label.kind == IMAGE_VALUES:
        raise DataSourceError(f"{location}: label column {name!r} holds images")
    if label.present == 0:
        raise DataSourceError(f"{location}: label column {name!r} has no values")
    if label.distinct_count() == 1 and label.distinct is not None:
        (value,) = label.distinct
        raise DataSourceError(
            f"{location}: label column {name!r} has a single value ({value!r} in all {label.present} rows): "
            "nothing to learn"
        )
    numeric = label.kind != TEXT_VALUES and name not in source.class_names
    if configured == REGRESSION:
        if not numeric:
            sample = label.first_non_number[1] if label.first_non_number else None
            if sample is not None or name in source.class_names:
                raise DataSourceError(
                    f"{location}: label column {name!r} holds classes"
                    + (f" (e.g. {sample!r})" if sample is not None else "")
                    + ", not numbers: a regression task needs numbers"
                )
        return REGRESSION
    few_whole_numbers = label.whole and label.distinct is not None and len(label.distinct) <= MAX_INTEGER_CLASSES
    if configured == AUTO and numeric and not few_whole_numbers:
        return REGRESSION
    count = len(source.class_names[name]) if name in source.class_names else len(_distinct_labels(label, location))
    if configured == AUTO:
        return BINARY if count == 2 else MULTICLASS
    if configured == BINARY and count != 2:
        raise DataSourceError(
            f"{location}: label column {name!r} has {count} distinct values: a binary task needs exactly 2"
        )
    return configured


def _text_kind(summary: ColumnSummary, location: str) -> str:
    name, present = summary.name, summary.present
    if present == 0:
        raise DataSourceError(f"{location}: column {name!r} has no values at all: exclude it (exclude_columns)")
    numbers = summary.numbers
    if numbers and numbers < present and numbers / present >= MIXED_TYPES_SHARE:
        row, value = summary.first_non_number
        raise DataSourceError(
            f"{location}: column {name!r} mixes numbers and text ({numbers} of {present} values are numbers; "
            f"row {row} is {value!r}): fix the data, or set feature_types {name}=categorical"
        )
    words = summary.words / present
    distinct_share = summary.distinct_count() / present
    return TEXT if words >= TEXT_MIN_WORDS and distinct_share >= TEXT_MIN_DISTINCT_SHARE else CATEGORICAL


def _feature(summary: ColumnSummary, kind: str | None, location: str) -> FeatureSpec:
    name = summary.name
    key = signature_key(name)
    if summary.kind == IMAGE_VALUES:
        if kind not in (None, IMAGE):
            raise DataSourceError(f"{location}: column {name!r} holds images; it cannot be {kind}")
        return FeatureSpec(name, key, IMAGE, UINT8, summary.image_shape)
    if kind == IMAGE:
        raise DataSourceError(f"{location}: column {name!r} holds no images (feature_types says image)")
    if summary.present == 0:
        raise DataSourceError(f"{location}: column {name!r} has no values at all: exclude it (exclude_columns)")
    if summary.kind == TEXT_VALUES:
        kind = kind or _text_kind(summary, location)
        if kind == NUMERIC:
            if summary.first_non_number is not None:
                raise DataSourceError(
                    f"{location}: column {name!r} is declared numeric but holds {summary.first_non_number[1]!r}, "
                    "which is not a number"
                )
            return FeatureSpec(name, key, NUMERIC, FLOAT)
        return FeatureSpec(name, key, kind, STRING)
    whole_and_complete = summary.kind == INTEGER_VALUES
    if kind in (None, NUMERIC):
        return FeatureSpec(name, key, NUMERIC, INT if whole_and_complete else FLOAT)
    if kind == CATEGORICAL and whole_and_complete:
        return FeatureSpec(name, key, CATEGORICAL, INT)
    return FeatureSpec(name, key, kind, STRING)


def _class_names(source: SourceData, label: ColumnSummary, config: PipelineConfig) -> list[str]:
    """The class names in class-id order: the source's, the configured order, or the sorted values."""
    if label.name in source.class_names:
        known = source.class_names[label.name]
        if config.class_names:
            if len(config.class_names) != len(known):
                raise DataSourceError(
                    f"class_names has {len(config.class_names)} names but label {label.name!r} has {len(known)} classes"
                )
            return list(config.class_names)
        return list(known)
    values = _distinct_labels(label, source.location)
    distinct = values if label.kind == TEXT_VALUES else [_format_number(v) for v in values]
    if config.class_names:
        missing = sorted(set(distinct) - set(config.class_names))
        if missing:
            raise DataSourceError(
                f"label {label.name!r} has values that class_names does not list: {missing[:10]}"
                + (" ..." if len(missing) > 10 else "")
            )
        return list(config.class_names)
    return distinct


def _format_number(value) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def source_summaries(source: SourceData) -> dict[str, ColumnSummary]:
    """The summary of every column: the reader's own (a streamed source), else from the columns in memory."""
    if source.summaries is not None:
        return source.summaries
    return summarize_columns(source.splits, source.columns, source.location)


def infer_problem(source: SourceData, config: PipelineConfig) -> ProblemSpec:
    """Infers the problem spec of a source, with the config's overrides applied.

    Raises:
        DataSourceError: naming the column: a missing label, a label that cannot be learnt,
            an unknown column in feature_types, mixed types, or two columns with one key.
    """
    label = choose_label(source, config)
    overrides = dict(config.feature_types or {})
    unknown = sorted(set(overrides) - set(source.columns))
    if unknown:
        raise DataSourceError(f"feature_types names columns that {source.location} does not have: {unknown}")
    if label in overrides:
        raise DataSourceError(f"feature_types names the label column {label!r}; it is not a feature")
    summaries = source_summaries(source)
    task = infer_task(source, summaries[label], config.task)
    features = tuple(
        _feature(summaries[name], overrides.get(name), source.location) for name in source.columns if name != label
    )
    class_names = tuple(_class_names(source, summaries[label], config)) if task != REGRESSION else ()
    try:
        return ProblemSpec(task, label, signature_key(label), features, class_names)
    except Exception as err:  # ConfigError from the spec's own checks: a data problem here
        raise DataSourceError(f"{source.location}: {err}") from None


@dataclasses.dataclass
class PreparedSplit:
    """One split brought to the spec: {feature key: values}, labels, and rows dropped for lack of a label."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    dropped_missing_label: int


def _feature_values(feature: FeatureSpec, values: np.ndarray) -> np.ndarray:
    if feature.kind == IMAGE:
        return values
    if feature.dtype == FLOAT:
        if values.dtype == object:
            return np.asarray([np.nan if v is None else float(v) for v in values], np.float32)
        return values.astype(np.float32)
    if feature.dtype == INT:
        return values.astype(np.int64)
    if values.dtype == object:
        texts = values.copy()
        texts[np.equal(values, None)] = ""
        return texts
    texts = np.empty(len(values), dtype=object)
    texts[:] = ["" if v != v else _format_number(v) for v in values.tolist()]  # NaN != NaN: missing
    return texts


def _labels(problem: ProblemSpec, values: np.ndarray, source: SourceData) -> np.ndarray:
    if problem.task == REGRESSION:
        return (
            np.asarray([float(v) for v in values], np.float32) if values.dtype == object else values.astype(np.float32)
        )
    if problem.label in source.class_names:
        return values.astype(np.int64)
    import pyarrow as pa
    import pyarrow.compute as pc

    names = values if values.dtype == object else np.asarray([_format_number(v) for v in values], dtype=object)
    ids = pc.index_in(pa.array(names, pa.string()), value_set=pa.array(problem.class_names, pa.string()))
    if ids.null_count:  # inference saw every label, so only a spec applied to other data gets here
        unknown = names[np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0]]
        raise KeyError(unknown)
    return ids.to_numpy().astype(np.int64)


def prepare_columns(source: SourceData, problem: ProblemSpec) -> dict[str, PreparedSplit]:
    """Brings every split of a source to the problem spec (see the module doc)."""
    prepared = {}
    for split, columns in sorted(source.splits.items()):
        label_values = columns[problem.label]
        keep = ~missing_mask(label_values)
        features = {f.key: _feature_values(f, columns[f.name][keep]) for f in problem.features}
        labels = _labels(problem, label_values[keep], source)
        prepared[split] = PreparedSplit(features, labels, int((~keep).sum()))
    return prepared
