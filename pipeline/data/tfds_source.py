"""`tfds:<name>` sources: any prepared TFDS dataset whose features are scalars, text, class labels or images.

The label is the `label` option or the dataset's supervised label; every other top-level
feature becomes a model input: fixed-size images, class labels (as their names:
categorical), text and scalar tensors. Other features (sequences, nested dictionaries,
variable-size images, tensors with a shape) are refused by name unless excluded.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import DataSourceError
from pipeline.data.column_summary import ColumnSummary
from pipeline.data.source_data import SourceData, chunk_rows, text_column

log = logging.getLogger(__name__)


def progress_bars_on_terminals_only() -> None:
    """TFDS progress bars for a person at a terminal; in a task log each redraw would be a line."""
    import tensorflow_datasets as tfds

    tfds.display_progress_bar(sys.stderr.isatty())


def open_builder(config: PipelineConfig, name: str):
    """A prepared TFDS builder; prepares it only when `allow_download` is set.

    Raises:
        DataSourceError: if the name is unknown, or the data is not prepared and may not be downloaded.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=config.tfds_data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DataSourceError(f"unknown TFDS dataset {name!r}: {str(err).splitlines()[0]}") from None
    if not builder.is_prepared():
        if not config.allow_download:
            raise DataSourceError(
                f"TFDS dataset {name!r} is not prepared under {builder.data_dir_root} and "
                "allow_download is off: prepare it there first, point tfds_data_dir at a "
                "prepared copy, or set allow_download"
            )
        log.info("downloading and preparing TFDS dataset %s", name)
        progress_bars_on_terminals_only()
        builder.download_and_prepare()
    return builder


def _column_kind(name: str, feature, dataset: str) -> str:
    """'image', 'class', 'text' or 'scalar' for a supported TFDS feature; raises for others."""
    import tensorflow_datasets as tfds

    features = tfds.features
    if isinstance(feature, features.ClassLabel):
        return "class"
    if isinstance(feature, features.Text):
        return "text"
    if isinstance(feature, features.Image):
        if len(feature.shape) != 3 or None in feature.shape:
            raise DataSourceError(
                f"TFDS dataset {dataset!r}: feature {name!r} is an image of variable size {feature.shape}: "
                "only fixed-size images are supported; exclude it (exclude_columns)"
            )
        return "image"
    if isinstance(feature, features.Tensor) and type(feature) is features.Tensor:
        if tuple(feature.shape) == ():
            return "scalar"
        if len(feature.shape) == 3 and None not in feature.shape and np.dtype(feature.np_dtype) == np.uint8:
            return "image"
    raise DataSourceError(
        f"TFDS dataset {dataset!r}: feature {name!r} ({type(feature).__name__}, shape "
        f"{getattr(feature, 'shape', '?')}) is not a scalar, text, class label or fixed-size image; exclude it "
        "(exclude_columns)"
    )


def _convert(kind: str, array: np.ndarray, name: str, dataset: str) -> np.ndarray:
    """One batch of a feature in the `SourceData` convention."""
    if kind == "image":
        return array.astype(np.uint8)
    if kind == "class":
        return array.astype(np.int64)
    if array.dtype == np.bool_:
        return text_column(array.tolist(), name, dataset)
    if kind != "text" and array.dtype.kind in "iu":
        return array.astype(np.int64)
    if kind != "text" and array.dtype.kind == "f":
        return array.astype(np.float64)
    return text_column(list(array), name, dataset)


def _row_size(features, kinds: dict[str, str]) -> int:
    """A row's bytes as far as they are known (images dominate); for the chunk size."""
    return sum(int(np.prod(features[key].shape)) if kind == "image" else 8 for key, kind in kinds.items())


def read_tfds_source(config: PipelineConfig, name: str, summarize: bool = True) -> SourceData:
    """A prepared TFDS dataset as columns, streamed a batch at a time.

    Every split is read once here to summarize the columns for problem inference; ingest
    then streams the splits again (`SourceData.stream`). Class-label features that are not
    the label become categorical text columns of their names; the label keeps its class ids
    and names. With `summarize` False the splits are not read here (no summaries).

    Raises:
        DataSourceError: naming the dataset and feature, for unknown names, unprepared data,
            unsupported features or an empty split.
    """
    import tensorflow_datasets as tfds

    builder = open_builder(config, name)
    features = builder.info.features
    exclude = set(config.exclude_columns or ())
    unknown = sorted(exclude - set(features.keys()))
    if unknown:
        raise DataSourceError(f"exclude_columns names features that TFDS dataset {name!r} does not have: {unknown}")
    keys = builder.info.supervised_keys
    label_hint = keys[1] if keys and len(keys) == 2 and isinstance(keys[1], str) else None
    label = config.label or label_hint
    kinds = {key: _column_kind(key, feature, name) for key, feature in features.items() if key not in exclude}
    if not kinds:
        raise DataSourceError(f"TFDS dataset {name!r}: exclude_columns leaves no feature")
    class_inputs = {key: list(features[key].names) for key, kind in kinds.items() if kind == "class" and key != label}
    rows = chunk_rows(_row_size(features, kinds))
    selected = list(kinds)

    def stream(split: str, first_chunk: int = 0) -> Iterator[dict[str, np.ndarray]]:
        dataset = builder.as_dataset(
            split=f"{split}[{first_chunk * rows}:]" if first_chunk else split,
            shuffle_files=False,
            read_config=tfds.ReadConfig(try_autocache=False),
        ).map(lambda example: {key: example[key] for key in selected})
        for batch in tfds.as_numpy(dataset.batch(rows)):
            columns = {key: _convert(kind, batch[key], key, name) for key, kind in kinds.items()}
            for key, names in class_inputs.items():  # a class-label input is a categorical feature of its names
                columns[key] = text_column([names[i] for i in columns[key]], key, name)
            yield columns

    location = f"tfds:{name}"
    summaries = {key: ColumnSummary(key) for key in kinds}
    for split in sorted(builder.info.splits) if summarize else ():
        before = summaries[selected[0]].rows
        for columns in stream(split):
            for key, values in columns.items():
                summaries[key].add(values, location)
        if summaries[selected[0]].rows == before:
            raise DataSourceError(f"TFDS dataset {name!r}: split {split!r} is empty")
    return SourceData(
        name=builder.info.full_name,
        splits={split: {} for split in sorted(builder.info.splits)},
        columns=selected,
        class_names={label: list(features[label].names)} if kinds.get(label) == "class" else {},
        label_hint=label_hint,
        location=location,
        stream=stream,
        summaries=summaries if summarize else None,
        reopen={},
    )
