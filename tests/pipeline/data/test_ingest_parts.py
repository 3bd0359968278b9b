"""Ingest in parts (plan, parts, merge), as the training DAG's mapped tasks run it: the same snapshot as one process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline.data.ingest as ingest_module
from pipeline.core.errors import DataSourceError
from pipeline.data.ingest import IngestPlan, finish_ingest, ingest, plan_ingest, write_part
from tests.support import REPO_ROOT, TABLE_LABELS, table_rows, write_table


def _snapshot_files(snapshot) -> dict[str, bytes]:
    """Every file of a snapshot by its path inside it (dataset_info.json and snapshot.json without times)."""
    files = {}
    for path in sorted(p for p in snapshot.path.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name in ("snapshot.json", "dataset_info.json"):
            payload = json.loads(data)
            payload.pop("created_at", None)
            payload.pop("releaseNotes", None)
            data = json.dumps(payload, sort_keys=True).encode()
        files[str(path.relative_to(snapshot.path))] = data
    return files


@pytest.fixture
def csv_source(tmp_path, monkeypatch):
    """A table with numbers, categories, missing values and missing labels, read in blocks of ~40 rows."""
    import pipeline.data.tables as tables

    monkeypatch.setattr(tables, "CSV_BLOCK_BYTES", 512)
    return write_table(tmp_path / "loans.csv", table_rows("binary", rows=1500))


def _source_options(kind: str, csv_source: Path, tmp_path: Path, monkeypatch) -> dict:
    """Config options reading a small source of `kind` in chunks of a few kilobytes."""
    from pipeline.data import source_data

    monkeypatch.setattr(ingest_module, "CHUNK_ROWS", 256)  # idx: 8 chunks of train, 2 of test
    monkeypatch.setattr(source_data, "CHUNK_BYTES", 16 * 28 * 28)  # images, tfds: 16 images a chunk
    if kind == "csv":
        return {"data_source": f"csv:{csv_source}", "label": TABLE_LABELS["binary"]}
    if kind == "parquet":  # two files of several row groups, read in batches of 64 rows
        import pyarrow as pa
        import pyarrow.parquet as pq

        import pipeline.data.tables as tables

        monkeypatch.setattr(tables, "PARQUET_BATCH_ROWS", 64)
        rows = pa.table(table_rows("binary", rows=1500))
        for number, (start, end) in enumerate([(0, 700), (700, 1500)]):
            (tmp_path / "parquet").mkdir(exist_ok=True)
            pq.write_table(
                rows.slice(start, end - start), tmp_path / "parquet" / f"{number}.parquet", row_group_size=150
            )
        return {"data_source": f"parquet:{tmp_path}/parquet/*.parquet", "label": TABLE_LABELS["binary"]}
    if kind == "images":
        from tests.pipeline.data.test_image_folder import _folder

        return {"data_source": f"images:{_folder(tmp_path / 'animals', 40, size=(28, 28))}"}
    if kind == "tfds":
        from tests.pipeline.data.test_ingest_tfds import TinyShapes  # noqa: F401  (registers tiny_shapes)

        return {"data_source": "tfds:tiny_shapes", "tfds_data_dir": str(tmp_path / "tfds"), "allow_download": True}
    return {}


@pytest.mark.parametrize("kind", ["csv", "parquet", "idx", "images", "tfds"])
def test_parts_written_in_any_order_merge_into_the_snapshot_one_process_writes(
    kind, make_config, csv_source, tmp_path, monkeypatch
):
    options = _source_options(kind, csv_source, tmp_path, monkeypatch)
    whole = ingest(make_config(workdir=str(tmp_path / "whole"), **options))

    part_mb = {"csv": 0.005, "parquet": 0.005, "idx": 0.4, "images": 0.02, "tfds": 0.02}[kind]
    config = make_config(workdir=str(tmp_path / "parts"), ingest_part_mb=part_mb, ingest_memory_budget_mb=1, **options)
    plan = plan_ingest(config)
    assert len(plan.parts) >= 4 and {part.split for part in plan.parts} == set(plan.chunk_rows)
    assert any(part.first_chunk > 0 for part in plan.parts)  # parts that start part-way into a split
    for part in reversed(plan.parts):  # mapped tasks finish in any order
        write_part(config, part)
    merged = finish_ingest(config, plan.folder)

    assert merged.fingerprint == whole.fingerprint and merged.splits == whole.splits
    assert merged.path.name == whole.path.name
    assert _snapshot_files(merged) == _snapshot_files(whole)  # shard files byte for byte
    assert not plan.folder.exists()  # the plan and its parts go once the snapshot is published


def test_a_finished_part_is_kept_when_its_task_is_retried_and_a_plan_is_reused(make_config, csv_source):
    config = make_config(data_source=f"csv:{csv_source}", label=TABLE_LABELS["binary"], ingest_part_mb=0.01)
    plan = plan_ingest(config)
    folder = Path(write_part(config, plan.parts[0]))
    written = {path: path.stat().st_mtime_ns for path in folder.rglob("*")}
    assert write_part(config, plan.parts[0]) == str(folder)  # Airflow retries a part that had finished
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*")} == written

    again = plan_ingest(config)  # a rerun of the DAG on unchanged data: the same plan, its part kept
    assert again.folder == plan.folder and again.parts == plan.parts
    for part in again.parts:
        write_part(config, part)
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*")} == written
    assert finish_ingest(config, again.folder).splits == again.rows


def test_a_worker_killed_mid_part_is_retried_and_the_snapshot_equals_a_clean_run(make_config, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "CHUNK_ROWS", 256)
    clean = ingest(make_config(workdir=str(tmp_path / "clean")))
    config = make_config(ingest_part_mb=0.4, ingest_memory_budget_mb=1)
    plan = plan_ingest(config)
    part = max(plan.parts, key=lambda p: p.chunks)
    assert part.chunks >= 2
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal\n"
            "import pipeline.data.ingest as ingest_module\n"
            "from pipeline.core.config import PipelineConfig\n"
            "from pipeline.data import shard_writer\n"
            "ingest_module.CHUNK_ROWS = 256\n"
            "added = shard_writer.SpilledRecords.add_many\n"
            "def add_many(self, key, records):\n"
            "    added(self, key, records)\n"
            "    if self.count > 256:  # mid-part: the first chunk on disk, the second in memory\n"
            "        self._spill()\n"
            "        added(self, key + len(records.lengths), shard_writer.Ragged.of([b'held in memory']))\n"
            "        print('killing', flush=True)\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "shard_writer.SpilledRecords.add_many = add_many\n"
            f"config = PipelineConfig(**{config.to_dict()!r})\n"
            f"part = ingest_module.IngestPart(**{part.__dict__!r})\n"
            "ingest_module.write_part(config, part)\n",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout.readline().strip() == "killing"
    assert worker.wait() == -signal.SIGKILL
    assert not part.folder.exists()  # the killed try published nothing of its part
    assert any(part.folder.parent.glob(".tmp-part-*"))  # only its staging folder is left

    for each in plan.parts:  # Airflow's retry of the killed task, and the other mapped tasks
        write_part(config, each)
    merged = finish_ingest(config, plan.folder)
    assert _snapshot_files(merged) == _snapshot_files(clean)


def test_a_source_that_changes_after_planning_is_refused_and_nothing_is_published(make_config, tmp_path, monkeypatch):
    import pipeline.data.tables as tables

    monkeypatch.setattr(tables, "CSV_BLOCK_BYTES", 512)
    source = write_table(tmp_path / "loans.csv", table_rows("binary", rows=600))
    config = make_config(data_source=f"csv:{source}", label=TABLE_LABELS["binary"], ingest_part_mb=0.01)
    plan = plan_ingest(config)
    write_table(source, table_rows("binary", rows=600, seed=1))  # rewritten before the last part ran
    with pytest.raises(DataSourceError, match=r"changed while it was ingested \(part \d+ of \d+"):
        write_part(config, plan.parts[-1])
    assert not plan.parts[-1].folder.exists()
    with pytest.raises(DataSourceError, match=r"ingest parts \[.*\] of \d+ were not written"):
        finish_ingest(config, plan.folder)
    assert not [p for p in (config.workdir_path / "snapshots").iterdir() if not p.name.startswith(".")]


def test_a_part_reads_only_its_own_rows_of_a_table(make_config, csv_source):
    """A part seeks to its first CSV block (indexed when planning) instead of parsing the file up to it.

    Shown by damaging the file's first rows after planning, in place (same size and time): the
    last part does not read them, the first part does and names the file and byte offset.
    """
    import os

    config = make_config(data_source=f"csv:{csv_source}", label=TABLE_LABELS["binary"], ingest_part_mb=0.005)
    plan = plan_ingest(config)
    assert len(plan.parts) >= 4
    data, stat = csv_source.read_bytes(), csv_source.stat()
    header_end = data.index(b"\n") + 1
    second_row = data.index(b"\n", header_end) + 1
    damaged = data[:header_end] + b"x" * (second_row - header_end - 1) + data[second_row - 1 :]
    csv_source.write_bytes(damaged)
    os.utime(csv_source, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    write_part(config, plan.parts[-1])
    assert (plan.parts[-1].folder / "part.json").is_file()
    with pytest.raises(
        DataSourceError, match=rf"loans.csv: cannot read as CSV: .* \(in the rows from byte {header_end}\)"
    ):
        write_part(config, plan.parts[0])
    assert not plan.parts[0].folder.exists()


def test_a_published_plan_is_gone_and_says_so(make_config):
    config = make_config(ingest_part_mb=1)
    plan = plan_ingest(config)
    for part in plan.parts:
        write_part(config, part)
    snapshot = finish_ingest(config, plan.folder)
    assert finish_ingest(config, plan.folder).path == snapshot.path  # a retried merge task: nothing to do
    with pytest.raises(DataSourceError, match="no ingest plan here"):
        IngestPlan.load(plan.folder)


def test_a_split_left_without_rows_is_refused_when_planning(make_config, tmp_path):
    source = tmp_path / "two.csv"
    source.write_text("x,y\n1.5,a\n2.5,b\n,\n")  # two labelled rows: 80/10/10 leaves validation empty
    with pytest.raises(DataSourceError, match=r"split 'validation' has no rows with a label"):
        plan_ingest(make_config(data_source=f"csv:{source}", label="y"))
    assert not (make_config().workdir_path / "snapshots" / ".plans").exists()


def test_data_with_a_snapshot_plans_one_empty_part_and_writes_nothing(make_config):
    config = make_config(ingest_part_mb=0.4)
    published = ingest(config)
    plan = plan_ingest(config)
    assert [(part.index, part.chunks) for part in plan.parts] == [(0, 0)]  # the DAG still maps one task
    assert write_part(config, plan.parts[0]) == str(plan.parts[0].folder) and not plan.parts[0].folder.exists()
    assert finish_ingest(config, plan.folder).path == published.path
    assert not plan.folder.exists()


@pytest.mark.parametrize("kind", ["csv", "idx", "images"])
def test_a_part_is_written_without_importing_tensorflow(kind, make_config, tmp_path):
    """Each mapped ingest task is a new process: writing its records, PNG-encoded images included,
    needs neither TensorFlow (seconds to import, and its memory) nor TFDS."""
    from tests.pipeline.data.test_image_folder import _folder

    sources = {
        "csv": {"data_source": f"csv:{write_table(tmp_path / 'loans.csv', table_rows('binary', rows=300))}"},
        "idx": {},
        "images": {"data_source": f"images:{_folder(tmp_path / 'animals', 10, size=(28, 28))}"},
    }
    config = make_config(**sources[kind], **({"label": TABLE_LABELS["binary"]} if kind == "csv" else {}))
    plan = plan_ingest(config)
    code = (
        "import json, sys\n"
        "from pipeline.core.config import PipelineConfig\n"
        "from pipeline.data.ingest import IngestPart, write_part\n"
        f"config = PipelineConfig(**{config.to_dict()!r})\n"
        f"for part in {[part.__dict__ for part in plan.parts]!r}:\n"
        "    write_part(config, IngestPart(**part))\n"
        "print(json.dumps([name for name in ('tensorflow', 'tensorflow_datasets') if name in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
    snapshot = finish_ingest(config, plan.folder)
    assert snapshot.splits == plan.rows
