"""What a data source holds, as columns in memory, before the problem is known.

Every reader (`tables`, `image_folder`, `tfds_source`, IDX in `ingest`) returns a `SourceData`
whose columns follow one convention, so problem inference and the snapshot writer need not
know where the data came from:

    float64      numbers, NaN where missing
    int64        whole numbers without missing values (a column of whole numbers with gaps is float64)
    object       text as `str`, None where missing (booleans become 'false' / 'true')
    uint8        images [N, H, W, C]
    int64 + `class_names`   class ids whose names the source knows (IDX, image folders, TFDS ClassLabel)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from pipeline.core.errors import DataSourceError


@dataclasses.dataclass
class SourceData:
    """The columns of each split of a source.

    Attributes:
        name: Dataset name (the snapshot folder's prefix).
        splits: {split: {column: values}}, every column of a split the same length.
        columns: Column names in source order.
        class_names: {column: names} for class-id columns whose names the source knows.
        label_hint: The column the source itself calls its label (TFDS supervised key, 'label'), if any.
        location: What was read (a path, glob or TFDS name), for messages.
        stream: For a source too big to hold: `stream(split, first_chunk=0)` gives one split's
            columns in chunks, from chunk `first_chunk` on (chunks are cut the same way on
            every read). Ingest then reads the rows through `stream`, and `splits` holds only
            what the reader chooses to keep (the split names, at least, as keys).
        summaries: {column: `ColumnSummary`} over every row, for a streamed source whose
            `splits` do not hold every value (problem inference reads them instead).
        reopen: What the reader settled while reading (CSV column types, say), as JSON, for
            `ingest.read_source(config, reopen)` to open the same stream again without reading
            the source first (ingest's parts do); None for a reader that cannot.
    """

    name: str
    splits: dict[str, dict[str, np.ndarray]]
    columns: list[str]
    class_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    label_hint: str | None = None
    location: str = ""
    stream: Callable[..., Iterator[dict[str, np.ndarray]]] | None = None
    summaries: dict | None = None
    reopen: dict | None = None


CHUNK_BYTES = 16 << 20
MAX_CHUNK_ROWS = 4096


def chunk_rows(row_bytes: int) -> int:
    """Rows a streamed chunk holds: about `CHUNK_BYTES` of values, at most `MAX_CHUNK_ROWS`."""
    return int(max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // max(1, int(row_bytes)))))


def is_image_column(values: np.ndarray) -> bool:
    return values.dtype == np.uint8 and values.ndim == 4


def is_text_column(values: np.ndarray) -> bool:
    return values.dtype == object


def missing_mask(values: np.ndarray) -> np.ndarray:
    """True where a value is missing (NaN, None); never for images or whole numbers."""
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype == object:
        return np.equal(values, None)  # elementwise `is None` on an object column
    return np.zeros(len(values), bool)


def text_column(values: list, column: str, location: str) -> np.ndarray:
    """Builds an object column of str / None from Python values (bools become 'false' / 'true')."""
    out = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        if value is None or isinstance(value, str):
            out[index] = value
        elif isinstance(value, bool):
            out[index] = "true" if value else "false"
        elif isinstance(value, bytes):
            try:
                out[index] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise DataSourceError(f"{location}: column {column!r} row {index} is not UTF-8 text") from None
        else:
            out[index] = str(value)
    return out
