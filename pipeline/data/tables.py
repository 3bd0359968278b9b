"""`csv:` and `parquet:` sources: a file or a glob of files streamed with pyarrow.

Tables are never held whole: a first pass settles the column types, summarizes each column
for problem inference (`scan_table`) and indexes the chunks (`TableFiles.arrow_chunks`: a CSV
file is cut into blocks of about `CSV_BLOCK_BYTES` at row ends, each parsed by pyarrow; a
Parquet file is read in batches, row group by row group); ingest then streams the rows a chunk
at a time, from any chunk on without reading those before it. All files of a glob must have
the same columns; their types are unified (whole numbers in one file and decimals in another
become decimals). Text values that mean "missing" in CSV files (`MISSING_MARKERS`: '', 'NA',
'null', '?', ...) are missing values, in text columns too.
"""

from __future__ import annotations

import dataclasses
import glob as globbing
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np

from pipeline.core.errors import DataSourceError, SourceChangedError
from pipeline.data.column_summary import ColumnSummary
from pipeline.data.source_data import SourceData

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


CSV_BLOCK_BYTES = 1 << 20
PARQUET_BATCH_ROWS = 8192
# How a CSV column's type widens when a later block holds a value its type cannot: pyarrow
# infers a streamed CSV's types from the first block only, and these are its inference steps.
_WIDER_TYPE = {"null": "int64", "int64": "double", "bool": "string"}
_CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): .*CSV conversion error to (\w+)")


class _WidenColumn(Exception):
    def __init__(self, column: str, to):
        super().__init__(column)
        self.column, self.to = column, to


def _convert_options(keep: list[str], types: dict):
    import pyarrow.csv as pa_csv

    return pa_csv.ConvertOptions(
        include_columns=keep,
        column_types=types,
        null_values=list(MISSING_MARKERS),
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )


def _read_error(path: Path, kind: str, err: Exception, rows_before: int = 0, byte_offset: int = 0) -> DataSourceError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    where = f" (in the rows after row {rows_before})" if rows_before else ""
    where = f" (in the rows from byte {byte_offset})" if byte_offset else where
    return DataSourceError(f"{path}: cannot read as {kind.upper()}: {first}{where}")


def _column_names(path: Path, kind: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    try:
        if kind == "parquet":
            return pq.read_schema(path).names
        with open(path, "rb") as handle:  # the header row alone: a part reading its rows reads nothing before them
            header = handle.read(_csv_header_end(path))
        return pa_csv.read_csv(pa.BufferReader(header)).schema.names
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise _read_error(path, kind, err) from None


def _file_version(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _row_end(data: bytes, last: bool) -> int:
    """Where the first (or last) row of `data` ends: just after its line break; 0 if it has none.

    A line break is a row's end, as in pyarrow's own CSV reader, which takes no line breaks
    inside quoted values (`ParseOptions.newlines_in_values` off).
    """
    if last:
        return max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
    found = [at for at in (data.find(b"\n"), data.find(b"\r")) if at >= 0]
    if not found:
        return 0
    at = min(found)
    return at + 2 if data[at : at + 2] == b"\r\n" else at + 1


def _csv_header_end(path: Path) -> int:
    """The byte offset just after the header row (the file's size if it has only a header)."""
    with open(path, "rb") as handle:
        head = b""
        while block := handle.read(CSV_BLOCK_BYTES):
            head += block
            if end := _row_end(head[:-1] if len(head) > 1 else head, last=False):
                return end  # the last byte is held back: a '\r' there may be followed by '\n'
        return len(head)


def _parse_csv(path: Path, data: bytes, names: list[str], keep: list[str], types: dict, **where):
    """Rows of a CSV file (without its header) as an Arrow table, with `types` settled for every column."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    try:
        table = pa_csv.read_csv(
            pa.BufferReader(data),
            read_options=pa_csv.ReadOptions(column_names=names, block_size=max(CSV_BLOCK_BYTES, len(data))),
            convert_options=_convert_options(keep, types),
        )
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        _raise_or_widen(path, err, types, **where)
    for field in table.schema:
        types.setdefault(field.name, field.type)
    return table


def _csv_chunks_scanned(path: Path, keep: list[str], types: dict, ranges: list[list[int]]):
    """A CSV file's rows, read in blocks of about `CSV_BLOCK_BYTES` cut at row ends.

    Appends each block's byte range to `ranges` (those with rows), so that a later read can
    start at any block (`_csv_chunks_indexed`) instead of parsing the file up to it.
    """
    names = _column_names(path, "csv")
    start = _csv_header_end(path)
    rows, pending = 0, b""
    with open(path, "rb") as handle:
        handle.seek(start)
        while True:
            block = handle.read(CSV_BLOCK_BYTES)
            data = pending + block if pending else block
            cut = _row_end(data, last=True) if block else len(data)
            if not cut:
                if not block:
                    return
                pending = data  # a row longer than a block: read on
                continue
            table = _parse_csv(path, data[:cut], names, keep, types, rows_before=rows)
            if table.num_rows:
                ranges.append([start, start + cut])
                rows += table.num_rows
                yield table
            start, pending = start + cut, data[cut:]
            if not block:
                return


def _csv_chunks_indexed(path: Path, keep: list[str], types: dict, ranges: list[list[int]]):
    """The CSV blocks at these byte ranges (found by `_csv_chunks_scanned`), each read and parsed on its own."""
    names = _column_names(path, "csv")
    with open(path, "rb") as handle:
        for start, end in ranges:
            handle.seek(start)
            yield _parse_csv(path, handle.read(end - start), names, keep, types, byte_offset=start)


def _raise_or_widen(path: Path, err: Exception, types: dict, **where) -> NoReturn:
    """Raises `_WidenColumn` for a value its column's type cannot hold, else a `DataSourceError`."""
    import pyarrow as pa

    found = _CONVERSION_ERROR.search(str(err))
    if found:
        names = _column_names(path, "csv")
        index = int(found.group(1))
        column = names[index] if index < len(names) else None
        current = str(types.get(column, "string"))
        if current != "string":
            raise _WidenColumn(column, pa.type_for_alias(_WIDER_TYPE.get(current, "string")))
    raise _read_error(path, "csv", err, **where) from None


def _parquet_chunks(path: Path, keep: list[str], schema, counts: list[int], first_chunk: int | None = None):
    """A Parquet file's record batches, row group by row group.

    Scanning (`first_chunk` None), appends each row group's count of batches with rows to
    `counts`; reading from `first_chunk` (of this file), takes the counts as given and starts
    at that batch's row group.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    try:
        parquet = pq.ParquetFile(path)
        skip = first_chunk or 0
        for group in range(parquet.num_row_groups):
            if first_chunk is not None and skip >= counts[group]:
                skip -= counts[group]
                continue
            found = 0
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=keep):
                if not batch.num_rows:
                    continue
                found += 1
                rows += batch.num_rows
                if skip:
                    skip -= 1
                    continue
                yield batch.cast(schema) if schema is not None else batch
            if first_chunk is None:
                counts.append(found)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise _read_error(path, "parquet", err, rows) from None


def _numpy_column(column, name: str, path) -> np.ndarray:
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
    if pa.types.is_boolean(kind):
        column = pc.cast(column, pa.string())  # 'false' / 'true'
        kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)  # str, None where missing
    if pa.types.is_null(kind):  # every value of this batch is missing; problem inference refuses an empty column
        return np.full(len(column), np.nan)
    if pa.types.is_temporal(kind):
        raise DataSourceError(
            f"{path}: column {name!r} holds {kind} values: dates and times are not a feature kind; exclude it "
            "(exclude_columns) or derive numbers from it"
        )
    raise DataSourceError(
        f"{path}: column {name!r} holds {kind} values: only numbers, booleans and text are features; "
        "exclude it (exclude_columns)"
    )


@dataclasses.dataclass
class TableFiles:
    """The files of a `csv:` / `parquet:` source and the column types every file is read with.

    Attributes:
        kind: 'csv' or 'parquet'.
        files: The files, in order.
        columns: The columns read (the first file's order, excluded ones left out).
        types: {column: Arrow type}: for CSV, settled while scanning (first block, then widened
            where a later block needs it); for Parquet, the files' schemas unified.
        where: What messages name for a column's values (the file, or the glob).
        index: Per file, once read (`arrow_chunks`): its size and modification time, and where
            its chunks are (for CSV, each chunk's byte range; for Parquet, each row group's count
            of chunks).
    """

    kind: str
    files: list[Path]
    columns: list[str]
    types: dict
    where: Path
    index: list[dict] | None = None

    def arrow_chunks(self, first_chunk: int = 0) -> Iterator:
        """Every file's rows in order, as Arrow tables or record batches (chunks), read with the settled types.

        The first read (`index` None) reads every file from its start and indexes the chunks
        (CSV: their byte ranges; Parquet: the batches of each row group); later reads start at
        `first_chunk` without reading the chunks before it.
        """
        import pyarrow as pa

        schema = pa.schema([(name, self.types[name]) for name in self.columns]) if self.kind == "parquet" else None
        if self.index is None:
            if first_chunk:  # a plan written without an index: index the files first
                for _ in self.arrow_chunks():
                    pass
            else:
                index: list[dict] = []
                for path in self.files:
                    index.append({**_file_version(path), "chunks": []})
                    if self.kind == "parquet":
                        yield from _read_ahead(_parquet_chunks(path, self.columns, schema, index[-1]["chunks"]))
                    else:
                        yield from _read_ahead(_csv_chunks_scanned(path, self.columns, self.types, index[-1]["chunks"]))
                self.index = index
                return
        yield from _read_ahead(self._indexed_chunks(first_chunk, schema))

    def _indexed_chunks(self, first_chunk: int, schema) -> Iterator:
        for path, found in zip(self.files, self.index, strict=True):
            chunks = found["chunks"]
            in_file = len(chunks) if self.kind == "csv" else sum(chunks)
            if first_chunk >= in_file:
                first_chunk -= in_file
                continue
            if _file_version(path) != {key: found[key] for key in ("size", "mtime_ns")}:
                raise SourceChangedError(f"{path}: changed since it was first read (its size or modification time)")
            if self.kind == "parquet":
                yield from _parquet_chunks(path, self.columns, schema, chunks, first_chunk)
            else:
                yield from _csv_chunks_indexed(path, self.columns, self.types, chunks[first_chunk:])
            first_chunk = 0

    def chunks(self, first_chunk: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The rows as {column: values} in the `SourceData` convention, a chunk at a time.

        Args:
            first_chunk: Chunks (with rows) to leave out first; once the files are indexed,
                they are not read.
        """
        for chunk in self.arrow_chunks(first_chunk):
            yield {name: _numpy_column(chunk.column(name), name, self.where) for name in self.columns}

    def settled_types(self) -> dict[str, str]:
        """A CSV's column types settled while scanning, by name (`SourceData.reopen`); none for Parquet."""
        if self.kind != "csv":
            return {}
        return {name: str(arrow_type) for name, arrow_type in self.types.items()}


_DONE = object()


def _read_ahead(chunks: Iterator) -> Iterator:
    """The chunks, each read in a background thread while the caller works on the one before.

    pyarrow parses without holding the GIL, so on two cores or more the parse of the next
    chunk overlaps the caller's numpy work. Errors are raised where the chunk is asked for.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="table-read-ahead") as reader:
        try:
            coming = reader.submit(next, chunks, _DONE)
            while (chunk := coming.result()) is not _DONE:
                coming = reader.submit(next, chunks, _DONE)
                yield chunk
        finally:
            coming.cancel() or coming.exception()  # a read under way ends before the file is closed
            chunks.close()


def _parquet_types(files: list[Path], columns: list[str], pattern: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pa.unify_schemas([pq.read_schema(path) for path in files], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataSourceError(f"parquet:{pattern}: the files' column types do not agree: {err}") from None
    return {name: schema.field(name).type for name in columns}


def scan_table(table: TableFiles, location: str) -> dict[str, ColumnSummary]:
    """Reads the whole table once, settling CSV column types, and summarizes every column.

    A CSV column whose later values do not fit the type of its first block is widened (whole
    numbers to decimals, then to text) and the scan starts over: at most a few times per column.

    Returns:
        {column: summary over every row}.
    """
    while True:
        summaries = {name: ColumnSummary(name) for name in table.columns}
        try:
            for chunk in table.chunks():
                for name, values in chunk.items():
                    summaries[name].add(values, location)
            return summaries
        except _WidenColumn as widen:
            log.info("%s: column %r holds wider values further on: reading it as %s", location, widen.column, widen.to)
            table.types[widen.column] = widen.to


def read_table_source(kind: str, pattern: str, exclude: list[str], reopen: dict | None = None) -> SourceData:
    """Reads a `csv:` or `parquet:` source as one split called 'data', streamed a record batch at a time.

    The table is read once here to settle its column types and summarize its columns for
    problem inference; ingest then streams the rows again (`SourceData.stream`).

    Args:
        kind: 'csv' or 'parquet'.
        pattern: A file path or a glob.
        exclude: Columns to leave out (they are not converted, so any type is fine).
        reopen: `SourceData.reopen` of an earlier read of the same files: the column types
            are taken from it and the table is not scanned (no summaries).

    Returns:
        The source, its columns in the first file's order.

    Raises:
        DataSourceError: naming the file: unreadable, corrupt, empty, columns that differ
            between files, or a column of a type that is not a feature.
    """
    files = resolve_files(pattern, kind)
    columns = _column_names(files[0], kind)
    for path in files[1:]:
        other = _column_names(path, kind)
        if other != columns:
            raise DataSourceError(f"{path}: columns {other} differ from those of {files[0]} ({columns})")
    if len(set(columns)) != len(columns):
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        raise DataSourceError(f"{files[0]}: column names repeat: {duplicated}")
    unknown = sorted(set(exclude) - set(columns))
    if unknown:
        raise DataSourceError(f"exclude_columns names columns that {files[0]} does not have: {unknown}")
    keep = [c for c in columns if c not in exclude]
    types = _parquet_types(files, keep, pattern) if kind == "parquet" else {}
    table = TableFiles(kind, files, keep, types, files[0] if len(files) == 1 else Path(pattern))
    location = f"{kind}:{pattern}"
    name = Path(files[0]).stem if len(files) == 1 else Path(pattern).parent.name or kind
    summaries = None
    if reopen is not None:
        import pyarrow as pa

        if kind == "csv":  # a Parquet file's types come from its schema, as above
            table.types = {column: pa.type_for_alias(alias) for column, alias in reopen["types"].items()}
        table.index = reopen.get("chunks")
    else:
        summaries = scan_table(table, location)
        rows = summaries[keep[0]].rows if keep else 0
        if rows == 0:
            raise DataSourceError(f"{location}: the table has no rows ({', '.join(map(str, files))})")
        log.info("read %d rows x %d columns from %d %s file(s)", rows, len(keep), len(files), kind)
    return SourceData(
        name=name,
        splits={"data": {}},
        columns=keep,
        location=location,
        stream=lambda split, first_chunk=0: table.chunks(first_chunk),
        summaries=summaries,
        reopen={"types": table.settled_types(), "chunks": table.index},
    )
