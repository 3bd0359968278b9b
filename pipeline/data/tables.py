"""`csv:` and `parquet:` sources: a file or a glob of files read with pyarrow.

All files of a glob must have the same columns; their types are unified (whole numbers in one
file and decimals in another become decimals). Text values that mean "missing" in CSV files
(`MISSING_MARKERS`: '', 'NA', 'null', '?', ...) are missing values, in text columns too.
"""

from __future__ import annotations

import glob as globbing
import logging
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataSourceError
from pipeline.data.source_data import SourceData, text_column

log = logging.getLogger(__name__)

# pyarrow's own null markers plus '?', which several public tables use.
MISSING_MARKERS = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
    "?",
)


def resolve_files(pattern: str, kind: str) -> list[Path]:
    """The files a `csv:` / `parquet:` location names: one file, or every match of a glob (sorted).

    Raises:
        DataSourceError: if nothing matches, or a match is not a readable file.
    """
    if any(char in pattern for char in "*?["):
        files = sorted(Path(p) for p in globbing.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise DataSourceError(f"{kind}:{pattern}: no file matches the pattern")
    else:
        path = Path(pattern)
        if not path.exists():
            raise DataSourceError(f"{kind}:{pattern}: no such file")
        if path.is_dir():
            raise DataSourceError(f"{kind}:{pattern} is a folder: name a file or a glob such as {pattern}/*.{kind}")
        files = [path]
    for path in files:
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise DataSourceError(f"{path}: cannot read ({err.strerror or err})") from None
    return files


def _read_arrow(path: Path, kind: str):
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    try:
        if kind == "parquet":
            return pq.read_table(path)
        return pa_csv.read_csv(
            path,
            convert_options=pa_csv.ConvertOptions(
                null_values=list(MISSING_MARKERS), strings_can_be_null=True, quoted_strings_can_be_null=True
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataSourceError(f"{path}: cannot read as {kind.upper()}: {first}") from None


def _numpy_column(column, name: str, path: Path) -> np.ndarray:
    """One Arrow column in the `SourceData` convention."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_decimal(kind) or pa.types.is_floating(kind):
        if pa.types.is_integer(kind) and column.null_count == 0:
            return column.to_numpy().astype(np.int64)
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind):
        return text_column(column.to_pylist(), name, str(path))
    if pa.types.is_null(kind):
        raise DataSourceError(f"{path}: column {name!r} has no values at all: exclude it (exclude_columns)")
    if pa.types.is_temporal(kind):
        raise DataSourceError(
            f"{path}: column {name!r} holds {kind} values: dates and times are not a feature kind; exclude it "
            "(exclude_columns) or derive numbers from it"
        )
    raise DataSourceError(
        f"{path}: column {name!r} holds {kind} values: only numbers, booleans and text are features; "
        "exclude it (exclude_columns)"
    )


def read_table_source(kind: str, pattern: str, exclude: list[str]) -> SourceData:
    """Reads a `csv:` or `parquet:` source into one split called 'data'.

    Args:
        kind: 'csv' or 'parquet'.
        pattern: A file path or a glob.
        exclude: Columns to leave out (they are not converted, so any type is fine).

    Returns:
        The columns, in the first file's order.

    Raises:
        DataSourceError: naming the file: unreadable, corrupt, empty, columns that differ
            between files, or a column of a type that is not a feature.
    """
    import pyarrow as pa

    files = resolve_files(pattern, kind)
    tables = []
    for path in files:
        table = _read_arrow(path, kind)
        if tables and table.column_names != tables[0][1].column_names:
            raise DataSourceError(
                f"{path}: columns {table.column_names} differ from those of {tables[0][0]} "
                f"({tables[0][1].column_names})"
            )
        tables.append((path, table))
    columns = tables[0][1].column_names
    if len(set(columns)) != len(columns):
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        raise DataSourceError(f"{files[0]}: column names repeat: {duplicated}")
    unknown = sorted(set(exclude) - set(columns))
    if unknown:
        raise DataSourceError(f"exclude_columns names columns that {files[0]} does not have: {unknown}")
    keep = [c for c in columns if c not in exclude]
    try:
        table = pa.concat_tables([t.select(keep) for _, t in tables], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataSourceError(f"{kind}:{pattern}: the files' column types do not agree: {err}") from None
    if table.num_rows == 0:
        raise DataSourceError(f"{kind}:{pattern}: the table has no rows ({', '.join(map(str, files))})")
    where = files[0] if len(files) == 1 else Path(pattern)
    data = {name: _numpy_column(table.column(name), name, where) for name in keep}
    log.info("read %d rows x %d columns from %d %s file(s)", table.num_rows, len(keep), len(files), kind)
    name = Path(files[0]).stem if len(files) == 1 else Path(pattern).parent.name or kind
    return SourceData(name=name, splits={"data": data}, columns=keep, location=f"{kind}:{pattern}")
