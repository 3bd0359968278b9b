"""What problem inference needs to know of a column, gathered in one pass over its chunks.

A `ColumnSummary` takes a column's values chunk by chunk (in the `SourceData` convention) and
keeps a bounded summary: the kind of values, how many are present, whether the numbers are
whole, the distinct values (exactly, up to `MAX_TRACKED_VALUES`), and for text how many values
are numbers, the first that is not, the words per value and a k-minimum-values sketch of the
distinct count. Problem inference reads only summaries, so a source held in memory and one
streamed from a 50 GB file are inferred by the same rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable

import numpy as np

from pipeline.core.errors import DataSourceError
from pipeline.data.source_data import is_image_column, missing_mask

MAX_TRACKED_VALUES = 10_000
SKETCH_SIZE = 4096
IMAGE, TEXT, INTEGER, DECIMAL = "image", "text", "integer", "decimal"
_WORD = re.compile(r"\w+")


def as_number(text: str) -> float | None:
    """`text` as a float, or None if it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def _value_hashes(values: Iterable[str]) -> np.ndarray:
    """A fixed 64-bit hash of each text (the same in every process, unlike `hash`)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little") for v in values), np.uint64
    )


@dataclasses.dataclass
class ColumnSummary:
    """A bounded summary of one column's values (see the module doc).

    Attributes:
        name: The column.
        kind: 'image', 'text', 'integer' (whole numbers, none missing) or 'decimal'; None before any value.
        image_shape: An image column's [H, W, C].
        rows: Values seen, missing ones included.
        present: Values that are not missing.
        whole: Every present number is whole.
        distinct: The distinct present values, or None once there were more than `MAX_TRACKED_VALUES`.
        numbers: Text values that read as numbers.
        first_non_number: (row, value) of the first present text value that is not a number.
        words: Words in all present text values.
        sketch: The `SKETCH_SIZE` smallest hashes of the text values (a distinct-count sketch).
    """

    name: str
    kind: str | None = None
    image_shape: tuple[int, ...] | None = None
    rows: int = 0
    present: int = 0
    whole: bool = True
    distinct: set | None = dataclasses.field(default_factory=set)
    numbers: int = 0
    first_non_number: tuple[int, str] | None = None
    words: int = 0
    sketch: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.uint64))

    def add(self, values: np.ndarray, location: str) -> None:
        """Takes the next chunk of the column's values.

        Raises:
            DataSourceError: if the chunk's values are of another kind than the earlier ones.
        """
        kind = _kind(values)
        self._settle_kind(kind, values, location)
        offset, self.rows = self.rows, self.rows + len(values)
        if kind == IMAGE:
            self.present += len(values)
            return
        present_rows = np.flatnonzero(~missing_mask(values))
        present = values[present_rows]
        self.present += len(present)
        if not present.size:
            return
        if kind == TEXT:
            distinct = self._add_texts(present, present_rows + offset)
        else:
            distinct = np.unique(present) if self.distinct is not None else None
            if kind == DECIMAL and self.whole:
                self.whole = bool(np.all(np.mod(present, 1) == 0))
        if self.distinct is not None:
            self._track(distinct.tolist())

    def _settle_kind(self, kind: str, values: np.ndarray, location: str) -> None:
        if self.kind is None or self.kind == kind:
            self.kind = kind
            if kind == IMAGE:
                shape = tuple(int(d) for d in values.shape[1:])
                if self.image_shape not in (None, shape):
                    raise DataSourceError(
                        f"{location}: column {self.name!r} has images of {shape} and {self.image_shape}"
                    )
                self.image_shape = shape
            return
        if {self.kind, kind} == {INTEGER, DECIMAL}:
            self.kind = DECIMAL  # whole numbers, some missing further on
            return
        raise DataSourceError(
            f"{location}: column {self.name!r} holds {self.kind} values first and {kind} values later"
        )

    def _add_texts(self, present: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Counts numbers and words once per distinct value (weighted by its count); returns the distinct values."""
        distinct, first, counts = _distinct_texts(present)
        numbers = np.fromiter((as_number(v) is not None for v in distinct), bool, len(distinct))
        self.numbers += int(counts[numbers].sum())
        if self.first_non_number is None and not numbers.all():
            earliest = int(first[~numbers].min())
            self.first_non_number = (int(rows[earliest]), present[earliest])
        self.words += sum(len(_WORD.findall(value)) * int(count) for value, count in zip(distinct, counts, strict=True))
        self.sketch = np.union1d(self.sketch, _value_hashes(distinct))[:SKETCH_SIZE]
        return distinct

    def _track(self, values: list) -> None:
        self.distinct.update(values)
        if len(self.distinct) > MAX_TRACKED_VALUES:
            self.distinct = None

    def distinct_count(self) -> int:
        """Distinct present values: exact while tracked, else estimated from the sketch."""
        if self.distinct is not None:
            return len(self.distinct)
        if len(self.sketch) < SKETCH_SIZE:
            return len(self.sketch)
        return int((SKETCH_SIZE - 1) / (float(self.sketch[-1]) / 2.0**64))

    def sorted_values(self) -> list:
        """The distinct present values, sorted.

        Raises:
            ValueError: if there were too many to track.
        """
        if self.distinct is None:
            raise ValueError(f"column {self.name!r} has more than {MAX_TRACKED_VALUES} distinct values")
        return sorted(self.distinct)


def _distinct_texts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct texts (in order of first appearance), where each first appears, and how often."""
    import pyarrow as pa

    encoded = pa.array(values, pa.string()).dictionary_encode()
    indices = encoded.indices.to_numpy()
    _, first = np.unique(indices, return_index=True)
    counts = np.bincount(indices, minlength=len(encoded.dictionary))
    return encoded.dictionary.to_numpy(zero_copy_only=False), first, counts


def _kind(values: np.ndarray) -> str:
    if is_image_column(values):
        return IMAGE
    if values.dtype == object:
        return TEXT
    return INTEGER if values.dtype.kind in "iu" else DECIMAL


def summarize_columns(splits: dict[str, dict[str, np.ndarray]], columns: list[str], location: str) -> dict:
    """Summaries of columns held in memory, splits taken in name order."""
    summaries = {name: ColumnSummary(name) for name in columns}
    for _, split_columns in sorted(splits.items()):
        for name in columns:
            summaries[name].add(split_columns[name], location)
    return summaries
