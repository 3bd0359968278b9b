"""Stage 1, ingest: turn a data source into an immutable TFDS-format snapshot with its problem spec.

Sources (`data_source`):
    csv:<file or glob>      tables read with pyarrow (`pipeline.data.tables`)
    parquet:<file or glob>
    images:<dir>            <dir>/<class>/*.png|jpg or <dir>/<split>/<class>/* (`image_folder`)
    tfds:<name>             any prepared TFDS dataset (`tfds_source`); downloads only with `allow_download`
    idx:<dir>               MNIST-format IDX files (`idx`)

The problem spec (features, label, task) is inferred and the config's overrides applied
(`problem_inference`). Rows without a label are dropped and counted. A source with one split
is divided into train/validation/test by `split_fractions` (`division`: by a seeded hash of
each row's content, so identical rows land in the same split).

Ingest runs in three steps, which the training DAG runs as tasks and `ingest` runs in turn:

1. `plan_ingest` reads the source (every reader streams, in chunks), infers the problem,
   divides a one-split source, hashes the fingerprint and counts each chunk's rows per
   split; it cuts the chunks into parts of about `ingest_part_mb` of values and writes the
   plan to a folder named by the fingerprint.
2. `write_part` reads one part's chunks again and writes their records keyed by their index
   in the whole split (`shard_writer.SpilledRecords`). Parts are independent: the DAG maps
   one task per part (`.expand()`), so Celery or Kubernetes workers share them, and a retried
   part that was finished is not written again.
3. `finish_ingest` merges the parts into TFDS shards and publishes the snapshot. The snapshot
   is byte for byte the same however many parts wrote it.

The snapshot folder is named by a content fingerprint, so ingesting unchanged data again
reuses the existing snapshot and changed data never overwrites an old one. What a failed
ingest wrote is never published.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import atomic_write_json, fsync_tree, read_json, staging_dir, utc_now
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import DataSourceError, SourceChangedError
from pipeline.core.problem import ProblemSpec
from pipeline.data import idx
from pipeline.data.byte_columns import Ragged, join_rows, utf8
from pipeline.data.division import Cut, divide, split_of
from pipeline.data.problem_inference import PreparedSplit, infer_problem, prepare_columns
from pipeline.data.snapshot import SNAPSHOT_FILE, SNAPSHOT_FORMAT, TEST, TRAIN, VALIDATION, Snapshot
from pipeline.data.source_data import SourceData

log = logging.getLogger(__name__)

LABEL_COLUMN = "label"
SINGLE_SPLIT = "data"
DIVIDED_SPLITS = (TRAIN, VALIDATION, TEST)
CHUNK_ROWS = 4096
PLAN_FILE = "plan.json"
PART_FILE = "part.json"
DIGEST_FILE = "row-digests.u64"
PLANS_FOLDER = ".plans"
PLAN_MAX_AGE_S = 7 * 86400


@dataclasses.dataclass(frozen=True)
class IngestPart:
    """Consecutive chunks of one source split, written by one `write_part` call (one mapped task).

    Attributes:
        plan: The plan's folder.
        index: The part's number in the plan, from 0.
        parts: How many parts the plan has.
        split: The source split read.
        first_chunk: The first chunk of that split in the part.
        chunks: How many chunks.
    """

    plan: str
    index: int
    parts: int
    split: str
    first_chunk: int
    chunks: int

    @property
    def folder(self) -> Path:
        return Path(self.plan) / "parts" / f"{self.index:05d}"


@dataclasses.dataclass(frozen=True)
class IngestPlan:
    """What `plan_ingest` found, stored as plan.json: enough for any process to write a part.

    Attributes:
        folder: Where the plan, the row hashes of a divided source, and the parts live.
        fingerprint: The snapshot's content fingerprint.
        name: The snapshot's dataset name.
        folder_name: The snapshot folder's name.
        description: Where the data came from, for dataset_info.json.
        problem: The problem spec.
        rows: Rows per split of the snapshot.
        dropped: Rows left out per split for lack of a label.
        reopen: The source's `SourceData.reopen` (None: parts read the source afresh).
        cuts: The division's cuts for a one-split source, else None.
        chunk_rows: {source split: per chunk, {snapshot split: rows}}.
        parts: The parts, in order.
    """

    folder: Path
    fingerprint: str
    name: str
    folder_name: str
    description: str
    problem: ProblemSpec
    rows: dict[str, int]
    dropped: dict[str, int]
    reopen: dict | None
    cuts: list[Cut] | None
    chunk_rows: dict[str, list[dict[str, int]]]
    parts: list[IngestPart]

    def to_dict(self) -> dict[str, Any]:
        payload = dataclasses.asdict(self)
        payload.pop("folder")
        payload["problem"] = self.problem.to_dict()
        payload["parts"] = [dataclasses.asdict(part) | {"plan": None} for part in self.parts]
        return payload

    @classmethod
    def load(cls, folder: str | Path) -> IngestPlan:
        """Reads a plan folder's plan.json.

        Raises:
            DataSourceError: if the folder holds no plan (removed after publishing, say).
        """
        folder = Path(folder)
        try:
            payload = read_json(folder / PLAN_FILE)
        except FileNotFoundError:
            raise DataSourceError(f"{folder}: no ingest plan here (published and removed, or never written)") from None
        payload["problem"] = ProblemSpec.from_dict(payload["problem"])
        payload["cuts"] = None if payload["cuts"] is None else [tuple(c) if c else None for c in payload["cuts"]]
        payload["parts"] = [IngestPart(**(part | {"plan": str(folder)})) for part in payload["parts"]]
        return cls(folder=folder, **payload)


def ingest(config: PipelineConfig) -> Snapshot:
    """Runs the ingest stage in this process: plans, writes every part in turn, and publishes.

    The plan lives in a private staging folder, removed afterwards whatever happens.

    Args:
        config: The pipeline config; `data_source` says what to read, `label`, `task`,
            `feature_types`, `exclude_columns`, `class_names` shape the problem spec.

    Returns:
        The (new or already existing) snapshot of the source's current content.

    Raises:
        DataSourceError: if the source is missing, empty, corrupt, malformed or unknown, or
            its label cannot be learnt, or the snapshot cannot be written; the message names
            the file, column or feature.
    """
    with staging_dir(_snapshot_root(config), "ingest") as folder:  # removed on leaving, whatever happens
        plan = plan_ingest(config, folder)
        for part in plan.parts:
            write_part(config, part)
        return finish_ingest(config, folder)


def plan_ingest(config: PipelineConfig, folder: Path | None = None) -> IngestPlan:
    """Reads the source once (after problem inference's pass) and plans the parts.

    Args:
        config: The pipeline config (`ingest_part_mb` sizes the parts).
        folder: Where to put the plan; None: `<workdir>/snapshots/.plans/<name>-<fingerprint>`,
            where a plan of the same data and config already there is reused (with its parts).

    Returns:
        The plan.

    Raises:
        DataSourceError: as `ingest`.
    """
    source = read_source(config)
    problem = infer_problem(source, config)
    plans = _snapshot_root(config) / PLANS_FOLDER
    with staging_dir(_snapshot_root(config), "plan") as scratch:
        work = Path(folder) if folder is not None else scratch  # renamed to the named plan folder at the end
        cuts = None
        if set(source.splits) == {SINGLE_SPLIT}:
            cuts, measured = _divide_and_measure(source, problem, config, work / DIGEST_FILE)
        else:
            measured = _measure(source, problem)
        digest, rows, dropped, chunk_rows, chunk_bytes = measured
        for split, count in rows.items():
            if dropped[split]:
                log.warning("%s: %d rows of split %r have no label: left out", source.location, dropped[split], split)
            if count == 0:
                raise DataSourceError(f"{source.location}: split {split!r} has no rows with a label")
        safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name) or "data"
        target = work
        if folder is None:
            target = plans / f"{safe_name}-{digest[:12]}-{_options_digest(config)}"
            if (target / PLAN_FILE).is_file():
                log.info("ingest plan %s already exists: reusing it and its finished parts", target)
                return IngestPlan.load(target)
        plan = IngestPlan(
            folder=target,
            fingerprint=digest,
            name=source.name if source.location.startswith("tfds:") else safe_name,
            folder_name=f"{safe_name}-{digest[:12]}",
            description=f"{source.location}: {problem.task} of {problem.label!r}",
            problem=problem,
            rows=rows,
            dropped=dropped,
            reopen=source.reopen,
            cuts=cuts,
            chunk_rows=chunk_rows,
            parts=_cut_parts(str(target), chunk_bytes, config.ingest_part_mb * (1 << 20)),
        )
        if (_snapshot_path(config, plan) / SNAPSHOT_FILE).is_file():  # nothing to write: one empty part
            plan = dataclasses.replace(plan, parts=[IngestPart(str(target), 0, 1, min(chunk_rows), 0, 0)])
        atomic_write_json(work / PLAN_FILE, plan.to_dict())
        if folder is not None:
            return plan
        plans.mkdir(exist_ok=True)
        _remove_old_plans(plans)
        try:
            os.rename(scratch, target)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST) and (target / PLAN_FILE).is_file():
                return IngestPlan.load(target)  # planned concurrently
            raise
        log.info("planned ingest in %d part(s): %s", len(plan.parts), target)
        return plan


def _remove_old_plans(plans: Path) -> None:
    """Removes plans untouched for `PLAN_MAX_AGE_S` (of runs that failed and were not rerun)."""
    now = time.time()
    for plan in plans.iterdir():
        try:
            idle = now - max(entry.stat().st_mtime for entry in [plan, *plan.rglob("*")])
        except FileNotFoundError:
            continue  # removed meanwhile
        if idle > PLAN_MAX_AGE_S:
            log.info("removing the ingest plan %s, untouched for %.0f days", plan, idle / 86400)
            shutil.rmtree(plan, ignore_errors=True)


def _options_digest(config: PipelineConfig) -> str:
    """Tells apart plans of the same data cut into parts differently."""
    options = json.dumps([config.ingest_part_mb, config.split_fractions, config.seed])
    return hashlib.sha256(options.encode()).hexdigest()[:8]


def source_chunks(
    source: SourceData, problem: ProblemSpec, split: str, first_chunk: int = 0
) -> Iterator[PreparedSplit]:
    """One split of the source brought to the problem spec, a chunk at a time from `first_chunk` on.

    A streamed source's chunks are its reader's; a source held in memory is cut every `CHUNK_ROWS` rows.
    """
    if source.stream is not None:
        for columns in source.stream(split, first_chunk):
            one = dataclasses.replace(source, splits={split: columns}, stream=None)
            yield prepare_columns(one, problem)[split]
        return
    part = prepare_columns(dataclasses.replace(source, splits={split: source.splits[split]}), problem)[split]
    total = len(part.labels)
    for start in range(first_chunk * CHUNK_ROWS, max(total, 1), CHUNK_ROWS):
        end = min(start + CHUNK_ROWS, total)
        yield PreparedSplit(
            {key: values[start:end] for key, values in part.features.items()},
            part.labels[start:end],
            part.dropped_missing_label if start == 0 else 0,
        )


def _routed(
    chunk: PreparedSplit, source_split: str, cuts: list[Cut] | None, digest_file: Path, first_row: int
) -> dict[str, PreparedSplit]:
    """A chunk's rows by the snapshot split they belong to; a divided source's dropped rows count in train."""
    if cuts is None:
        return {source_split: chunk}
    which = split_of(digest_file, first_row, len(chunk.labels), cuts)
    routed = {}
    for number, split in enumerate(DIVIDED_SPLITS):
        keep = np.flatnonzero(which == number)
        routed[split] = PreparedSplit(
            {key: values[keep] for key, values in chunk.features.items()},
            chunk.labels[keep],
            chunk.dropped_missing_label if split == TRAIN else 0,
        )
    return routed


class _Fingerprint:
    """SHA-256 of the snapshot format, the problem spec and the rows, fed a chunk at a time.

    Each column of a split is hashed on its own, so the digest does not depend on how a split
    is cut into chunks, nor on the order in which chunks of different splits arrive.
    """

    def __init__(self, problem: ProblemSpec):
        self._problem = problem
        self._keys = [*sorted(f.key for f in problem.features), problem.label_key]
        self._columns: dict[str, dict[str, Any]] = {}
        self.rows: dict[str, int] = {}
        self.dropped: dict[str, int] = {}

    def add(self, split: str, chunk: PreparedSplit) -> None:
        if split not in self._columns:
            self._columns[split] = {key: hashlib.sha256() for key in self._keys}
            self.rows[split] = self.dropped[split] = 0
        self.rows[split] += len(chunk.labels)
        self.dropped[split] += chunk.dropped_missing_label
        columns = self._columns[split]
        for key, values in chunk.features.items():
            _hash_values(columns[key], values)
        _hash_values(columns[self._problem.label_key], chunk.labels)

    def hexdigest(self, extra: str = "") -> str:
        """The digest; `extra` is hashed with it (what else decides the snapshot's content)."""
        hasher = hashlib.sha256(f"snapshot-format={SNAPSHOT_FORMAT};{extra}".encode())
        hasher.update(json.dumps(self._problem.to_dict(), sort_keys=True).encode())
        for split in sorted(self._columns):
            hasher.update(f"split={split};rows={self.rows[split]};dropped={self.dropped[split]};".encode())
            for key, column in self._columns[split].items():
                hasher.update(f"{key}:{column.hexdigest()};".encode())
        return hasher.hexdigest()


def _hash_values(hasher, values: np.ndarray) -> None:
    if values.dtype == object:  # each value's UTF-8 length (8 bytes) and bytes
        text = utf8(values)
        prefixed = join_rows([Ragged.fixed(text.lengths.astype("<i8").view(np.uint8).reshape(-1, 8)), text])
        hasher.update(prefixed.data.tobytes())
    else:
        hasher.update(np.ascontiguousarray(values).tobytes())


def _measure(source: SourceData, problem: ProblemSpec):
    """Reads every split once: the fingerprint, rows and dropped rows per split, and per chunk its
    rows and its size in bytes."""
    fingerprint = _Fingerprint(problem)
    chunk_rows: dict[str, list[dict[str, int]]] = {}
    chunk_bytes: dict[str, list[int]] = {}
    for split in sorted(source.splits):
        fingerprint.add(split, _NO_ROWS)  # a split without rows is still counted
        chunk_rows[split], chunk_bytes[split] = [], []
        for chunk in source_chunks(source, problem, split):
            fingerprint.add(split, chunk)
            chunk_rows[split].append({split: len(chunk.labels)})
            chunk_bytes[split].append(_values_bytes(chunk))
    return fingerprint.hexdigest(), fingerprint.rows, fingerprint.dropped, chunk_rows, chunk_bytes


def _divide_and_measure(source: SourceData, problem: ProblemSpec, config: PipelineConfig, digest_file: Path):
    """`_measure` for a one-split source, in the same pass as the division (`division.divide`).

    The fingerprint hashes the source's rows and the division (its shares, seed and cuts), which
    together decide every snapshot split's rows; each chunk's rows per snapshot split are then
    read from the row hashes on disk.
    """
    fingerprint = _Fingerprint(problem)
    fingerprint.add(SINGLE_SPLIT, _NO_ROWS)
    sizes, chunk_bytes = [], []

    def observed(chunks: Iterator[PreparedSplit]) -> Iterator[PreparedSplit]:
        for chunk in chunks:
            fingerprint.add(SINGLE_SPLIT, chunk)
            sizes.append(len(chunk.labels))
            chunk_bytes.append(_values_bytes(chunk))
            yield chunk

    chunks = observed(source_chunks(source, problem, SINGLE_SPLIT))
    cuts = divide(chunks, config.split_fractions, config.seed, digest_file)
    chunk_rows, first_row = [], 0
    for size in sizes:
        which = np.bincount(split_of(digest_file, first_row, size, cuts), minlength=len(DIVIDED_SPLITS))
        chunk_rows.append({split: int(count) for split, count in zip(DIVIDED_SPLITS, which, strict=True)})
        first_row += size
    rows = {split: sum(counts[split] for counts in chunk_rows) for split in DIVIDED_SPLITS}
    dropped = {split: fingerprint.dropped[SINGLE_SPLIT] if split == TRAIN else 0 for split in DIVIDED_SPLITS}
    division = json.dumps({"fractions": config.split_fractions, "seed": config.seed, "cuts": cuts})
    digest = fingerprint.hexdigest(extra=f"division={division};")
    return cuts, (digest, rows, dropped, {SINGLE_SPLIT: chunk_rows}, {SINGLE_SPLIT: chunk_bytes})


_NO_ROWS = PreparedSplit({}, np.zeros(0), 0)


def _values_bytes(chunk: PreparedSplit) -> int:
    """About how many bytes a chunk's values take (text by its UTF-8 bytes)."""
    total = chunk.labels.nbytes
    for values in chunk.features.values():
        total += len(utf8(values).data) + 8 * len(values) if values.dtype == object else values.nbytes
    return total


def _cut_parts(plan: str, chunk_bytes: dict[str, list[int]], part_bytes: float) -> list[IngestPart]:
    """Consecutive chunks of each source split, about `part_bytes` of values a part."""
    ranges = []
    for split, sizes in chunk_bytes.items():
        first, held = 0, 0
        for number, size in enumerate(sizes):
            held += size
            if held >= part_bytes or number == len(sizes) - 1:
                ranges.append((split, first, number + 1 - first))
                first, held = number + 1, 0
        if not sizes:
            ranges.append((split, 0, 0))
    return [IngestPart(plan, index, len(ranges), *where) for index, where in enumerate(ranges)]


def write_part(config: PipelineConfig, part: IngestPart) -> str:
    """Writes one part's records (see the module doc); a part already written is left as it is.

    Args:
        config: The pipeline config the plan was made with.
        part: The part.

    Returns:
        The part's folder.

    Raises:
        DataSourceError: if the source changed since it was planned, cannot be read, or the
            part cannot be written (a full disk); nothing of the part is left.
    """
    plan = IngestPlan.load(part.plan)
    if (part.folder / PART_FILE).is_file():
        log.info("ingest part %d of %d was written already: keeping it", part.index + 1, part.parts)
        return str(part.folder)
    if (_snapshot_path(config, plan) / SNAPSHOT_FILE).is_file():
        return str(part.folder)  # the data has a snapshot already: `finish_ingest` reuses it
    source = read_source(config, plan.reopen)
    from pipeline.data.example_encoder import serialize_rows
    from pipeline.data.shard_writer import SpilledRecords

    before = plan.chunk_rows[part.split][: part.first_chunk]
    next_index = {split: sum(rows.get(split, 0) for rows in before) for split in plan.rows}
    first_row = sum(sum(rows.values()) for rows in before)
    expected = plan.chunk_rows[part.split][part.first_chunk : part.first_chunk + part.chunks]
    splits_written = len(DIVIDED_SPLITS) if plan.cuts is not None else 1
    budget = max(1, (config.ingest_memory_budget_mb << 20) // splits_written)
    part.folder.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(part.folder.parent, f"part-{part.index}") as staging:
        try:
            records = {split: SpilledRecords(staging / split, split, budget) for split in plan.rows}
            chunks = source_chunks(source, plan.problem, part.split, part.first_chunk)
            read = 0
            try:
                for chunk, planned in zip(itertools.islice(chunks, part.chunks), expected, strict=False):
                    routed = _routed(chunk, part.split, plan.cuts, plan.folder / DIGEST_FILE, first_row)
                    first_row += len(chunk.labels)
                    if {split: len(rows.labels) for split, rows in routed.items()} != planned:
                        raise _changed(source, part)
                    for split, rows in routed.items():
                        encoded = serialize_rows(plan.problem, rows.features, rows.labels)
                        records[split].add_many(next_index[split], encoded)
                        next_index[split] += len(rows.labels)
                    read += 1
            except SourceChangedError as err:
                raise _changed(source, part, err) from None
            if read != part.chunks:
                raise _changed(source, part)
            atomic_write_json(staging / PART_FILE, {split: out.close() for split, out in records.items()})
            fsync_tree(staging)
            os.rename(staging, part.folder)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST) and (part.folder / PART_FILE).is_file():
                return str(part.folder)  # written concurrently by another try
            raise _write_failed(part.folder.parent, err) from err
    log.info("wrote ingest part %d of %d (%s, %d chunks)", part.index + 1, part.parts, part.split, part.chunks)
    return str(part.folder)


def _changed(source: SourceData, part: IngestPart, cause: SourceChangedError | None = None) -> DataSourceError:
    found = str(cause) if cause else "does not hold the rows planned"
    return DataSourceError(
        f"{source.location}: split {part.split!r} changed while it was ingested (part {part.index + 1} of "
        f"{part.parts}, from chunk {part.first_chunk}: {found}): ingest it again"
    )


def finish_ingest(config: PipelineConfig, plan_folder: str | Path) -> Snapshot:
    """Merges the plan's parts into a snapshot and publishes it (or reuses the existing one).

    The plan's folder is removed once the snapshot is published; finishing a plan that is gone
    (a retried task) returns the snapshot its folder's name points to, if it was published.

    Raises:
        DataSourceError: if a part is missing or the snapshot cannot be written (a full disk);
            what was published stays as it was.
    """
    from pipeline.data.shard_writer import SplitParts, write_merged

    plan_folder = Path(plan_folder)
    if not (plan_folder / PLAN_FILE).is_file() and plan_folder.parent.name == PLANS_FOLDER:
        published = _snapshot_root(config) / plan_folder.name.rsplit("-", 1)[0]  # less the options digest
        if found := _existing(published):
            return found
    plan = IngestPlan.load(plan_folder)
    final = _snapshot_path(config, plan)
    if not (found := _existing(final)):
        missing = [part.index + 1 for part in plan.parts if not (part.folder / PART_FILE).is_file()]
        if missing:
            raise DataSourceError(f"{plan.folder}: ingest parts {missing} of {len(plan.parts)} were not written")
        written = [read_json(part.folder / PART_FILE) for part in plan.parts]
        splits = {
            split: SplitParts(
                [part.folder / split for part in plan.parts],
                rows=sum(sizes[split]["rows"] for sizes in written),
                bytes=sum(sizes[split]["bytes"] for sizes in written),
            )
            for split in plan.rows
        }
        with staging_dir(_snapshot_root(config), plan.folder_name) as staging:
            log.info("writing the snapshot %s", final.name)
            try:
                dataset_dir = write_merged(
                    staging / "tfds",
                    plan.problem,
                    splits,
                    description=plan.description,
                    shards=config.snapshot_shards,
                    memory_budget_bytes=config.ingest_memory_budget_mb << 20,
                )
            except OSError as err:
                raise _write_failed(staging.parent, err) from err
            found = _publish(staging, final, _snapshot_of(config, plan, final, dataset_dir.relative_to(staging)))
    shutil.rmtree(plan.folder, ignore_errors=True)
    return found


def _write_failed(where: Path, err: OSError) -> DataSourceError:
    return DataSourceError(f"writing the snapshot under {where} failed: {err.strerror or err}")


def _snapshot_of(config: PipelineConfig, plan: IngestPlan, final: Path, tfds_dir: Path) -> Snapshot:
    return Snapshot(
        path=final,
        name=plan.name,
        source=config.data_source,
        fingerprint=plan.fingerprint,
        splits=dict(sorted(plan.rows.items())),
        problem=plan.problem,
        dropped_rows=dict(sorted(plan.dropped.items())),
        tfds_dir=str(tfds_dir),
        created_at=utc_now(),
    )


def _snapshot_root(config: PipelineConfig) -> Path:
    return config.workdir_path / "snapshots"


def _snapshot_path(config: PipelineConfig, plan: IngestPlan) -> Path:
    return _snapshot_root(config) / plan.folder_name


def _existing(final: Path) -> Snapshot | None:
    if (final / SNAPSHOT_FILE).is_file():
        log.info("snapshot %s already exists: reusing it", final)
        return Snapshot.load(final)
    return None


def _publish(staging: Path, final: Path, snapshot: Snapshot) -> Snapshot:
    """Writes snapshot.json last, then renames the staging folder into place."""
    atomic_write_json(staging / SNAPSHOT_FILE, snapshot.to_dict())
    fsync_tree(staging)
    try:
        os.rename(staging, final)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST) and (final / SNAPSHOT_FILE).is_file():
            log.info("snapshot %s was published concurrently: reusing it", final)
            return Snapshot.load(final)
        raise
    log.info("published snapshot %s", final)
    return Snapshot.load(final)


def read_source(config: PipelineConfig, reopen: dict | None = None) -> SourceData:
    """Reads the configured source into columns (`SourceData`).

    Args:
        config: The pipeline config (`data_source` and how to read it).
        reopen: The `SourceData.reopen` of an earlier read: the source is opened for streaming
            without being read first (no summaries; what the reader settled is taken from it).
    """
    kind, _, location = config.data_source.partition(":")
    exclude = list(config.exclude_columns or ())
    if kind in ("csv", "parquet"):
        from pipeline.data.tables import read_table_source

        return read_table_source(kind, location, exclude, reopen)
    if kind == "images":
        from pipeline.data.image_folder import read_image_folder

        return _without(read_image_folder(location, config.image_mode, config.image_size, reopen), exclude)
    if kind == "tfds":
        from pipeline.data.tfds_source import read_tfds_source

        return read_tfds_source(config, location, summarize=reopen is None)
    return _without(read_idx_source(Path(location), config.class_names), exclude)


def _without(source: SourceData, exclude: list[str]) -> SourceData:
    unknown = sorted(set(exclude) - set(source.columns))
    if unknown:
        raise DataSourceError(f"exclude_columns names columns that {source.location} does not have: {unknown}")
    if exclude:
        source.columns = [c for c in source.columns if c not in exclude]
        for columns in source.splits.values():
            for name in exclude:
                columns.pop(name, None)
    return source


def read_idx_source(folder: Path, configured_names: list[str] | None) -> SourceData:
    """An IDX folder as an 'images' column (uint8 [N,H,W,1]) and a 'label' column of class ids, streamed.

    The labels (a byte per image) are read whole; the images are read `CHUNK_ROWS` at a time
    whenever the split is streamed. For inference, `splits` holds every label and, in place of
    the images, a read-only view repeating the first image (inference needs only their shape).

    Raises:
        DataSourceError: for broken files, splits of different image shapes, or labels outside the classes.
    """
    from pipeline.core.problem import IMAGE_KEY

    split_files = {files.split: files for files in idx.find_split_files(folder)}
    headers = {split: idx.check_split(files) for split, files in split_files.items()}
    labels = {split: idx.read_idx(files.labels, idx.LABELS_MAGIC) for split, files in split_files.items()}
    class_names = idx.resolve_class_names(folder, list(labels.values()), configured_names)
    shapes = {shape for _, shape in headers.values()}
    if len(shapes) != 1:
        raise DataSourceError(f"{folder}: splits have different image shapes {sorted(shapes)}")
    (image_shape,) = shapes
    for split, values in labels.items():
        if values.size and int(values.max()) >= len(class_names):
            bad = int(np.argmax(values >= len(class_names)))
            raise DataSourceError(
                f"{split_files[split].labels}: label {int(values[bad])} at index {bad} is outside the class "
                f"range 0..{len(class_names) - 1} ({len(class_names)} class names)"
            )
    first_images = {split: next(idx.iter_images(files.images, 1)) for split, files in split_files.items()}

    def stream(split: str, first_chunk: int = 0) -> Iterator[dict[str, np.ndarray]]:
        start = 0
        for images in idx.iter_images(split_files[split].images, CHUNK_ROWS):
            end = start + len(images)
            if start < first_chunk * CHUNK_ROWS:  # read past: the file is a gzip stream
                start = end
                continue
            yield {IMAGE_KEY: images[..., np.newaxis], LABEL_COLUMN: labels[split][start:end].astype(np.int64)}
            start = end

    return SourceData(
        name=folder.name or "idx",
        splits={
            split: {
                IMAGE_KEY: np.broadcast_to(first_images[split][..., np.newaxis], (len(values), *image_shape, 1)),
                LABEL_COLUMN: values.astype(np.int64),
            }
            for split, values in labels.items()
        },
        columns=[IMAGE_KEY, LABEL_COLUMN],
        class_names={LABEL_COLUMN: class_names},
        label_hint=LABEL_COLUMN,
        location=f"idx:{folder}",
        stream=stream,
        reopen={},
    )
