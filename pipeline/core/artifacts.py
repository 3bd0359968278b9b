"""On-disk artifacts: atomic writes, run folders and the run manifest.

Layout under `config.workdir`:

    snapshots/<dataset>-<fingerprint[:12]>/   immutable data snapshots (ingest)
    validation/schema.json                    schema inferred on the first run
    validation/latest_statistics.json         statistics of the last accepted snapshot
    runs/<run_id>/manifest.json               each stage's outputs, by stage name
    runs/<run_id>/{validate,train,evaluate,export}/

Everything another process may read is written to a temporary sibling and
renamed into place, so readers see the old state or the new one, never half.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig

TMP_PREFIX = ".tmp-"
OWNER_SUFFIX = ".owner"  # `<staging folder>.owner`: flock held by the folder's writer
STAGING_LOCK = ".staging.lock"


class StageResult:
    """Mixin for a stage's result dataclass: `to_dict()` with paths as strings (XCom-safe)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def utc_now() -> str:
    """Returns the current UTC time as an ISO-8601 string."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def fsync_dir(path: Path) -> None:
    """Flushes a folder's entries (renames, new files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yields a temporary sibling of `path` to write; on success it replaces `path` atomically.

    The temporary file is flushed to disk before the rename and the folder after it, so
    readers (and a machine that loses power) see the old file or the new one, never half.
    On an exception the temporary file is removed and `path` is untouched. The temporary
    name keeps the suffix, so writers that pick a format by extension (`.keras`, `.png`) work.

    Args:
        path: Destination file; its parent folder is created if needed.

    Yields:
        The temporary path to write the complete contents to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Holds an exclusive advisory lock (flock) on `path`, created if missing, for the block."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes `data` to `path` so that readers never see a partial file.

    Args:
        path: Destination file; its parent folder is created if needed.
        data: The complete contents.

    Returns:
        The destination path.
    """
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    """Writes `payload` as indented JSON, atomically."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write_bytes(path, text.encode())


def read_json(path: str | Path) -> Any:
    """Reads a JSON file."""
    return json.loads(Path(path).read_text())


def fsync_tree(root: Path) -> None:
    """Flushes every file and folder under `root` to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(Path(folder) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


@contextlib.contextmanager
def staging_dir(parent: str | Path, label: str) -> Iterator[Path]:
    """Yields a fresh temporary folder inside `parent` that belongs to this process, removed on failure.

    The name starts with `.tmp-` so it is never mistaken for a finished artifact (nor for a
    numeric model version). While the block runs, this process holds an flock on the sibling
    file `<folder>.owner`: `remove_stale_staging` removes only folders whose owner lock is
    free (the owner exited or was killed), never another writer's live folder. The caller
    renames the folder into place.

    Args:
        parent: Folder on the same file system as the final destination.
        label: A readable part of the temporary name.

    Yields:
        The temporary folder.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{TMP_PREFIX}{label}-{uuid.uuid4().hex[:8]}"
    owner_path = _owner_path(tmp)
    # Created under the folder's staging lock, as cleanup runs under it: a cleaner never sees
    # a folder whose owner file is not locked yet.
    with file_lock(parent / STAGING_LOCK):
        owner = open(owner_path, "w")  # noqa: SIM115  (held until the block ends)
        fcntl.flock(owner, fcntl.LOCK_EX)
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    else:
        if tmp.exists():
            # Not renamed by the caller: nothing was published, do not leave litter.
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        owner_path.unlink(missing_ok=True)
        owner.close()


def _owner_path(staging: Path) -> Path:
    return staging.with_name(staging.name + OWNER_SUFFIX)


def _owner_alive(owner_path: Path) -> bool:
    """True while the process that created `owner_path` holds its lock."""
    try:
        with open(owner_path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def remove_stale_staging(parent: str | Path, unowned_grace_s: float = 3600.0) -> list[Path]:
    """Deletes `.tmp-*` leftovers of killed processes in `parent`, and nothing a live writer uses.

    A staging folder is removed when its owner lock is free (its writer is gone). A `.tmp-*`
    entry without an owner file (a temporary file of `atomic_output`, an old version being
    deleted, or a leftover of an older release) is removed only when it has not changed for
    `unowned_grace_s` seconds. Runs under the folder's staging lock.

    Returns:
        The removed paths.
    """
    parent = Path(parent)
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    with file_lock(parent / STAGING_LOCK):
        entries = {entry.name: entry for entry in parent.iterdir() if entry.name.startswith(TMP_PREFIX)}
        now = time.time()
        for name, entry in sorted(entries.items()):
            if name.endswith(OWNER_SUFFIX):
                staging = entry.with_name(name[: -len(OWNER_SUFFIX)])
                if not _owner_alive(entry):
                    if staging.exists():
                        shutil.rmtree(staging, ignore_errors=True)
                        removed.append(staging)
                    entry.unlink(missing_ok=True)
                continue
            if (name + OWNER_SUFFIX) in entries:
                continue  # judged by its owner file
            try:
                age = now - entry.lstat().st_mtime
            except FileNotFoundError:
                continue
            if age < unowned_grace_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def new_run_id() -> str:
    """Returns a sortable, unique run identifier."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def run_dir(config: PipelineConfig) -> Path:
    """Returns the folder of the config's run; `config.run_id` must be set."""
    if not config.run_id:
        raise ValueError("config.run_id is not set")
    return config.workdir_path / "runs" / config.run_id


def stage_dir(config: PipelineConfig, stage: str) -> Path:
    """Returns (and creates) the output folder of one stage of the run."""
    path = run_dir(config) / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_manifest(config: PipelineConfig) -> dict[str, Any]:
    """Returns the run's manifest (stage name -> recorded outputs); {} if none."""
    path = run_dir(config) / "manifest.json"
    return read_json(path) if path.exists() else {}


def record_stage(config: PipelineConfig, stage: str, outputs: dict[str, Any]) -> None:
    """Records one stage's outputs in the run manifest (atomically)."""
    manifest = read_manifest(config)
    manifest[stage] = {**outputs, "finished_at": utc_now()}
    atomic_write_json(run_dir(config) / "manifest.json", manifest)


def code_revision() -> str:
    """Returns the git revision of the pipeline code ('+dirty' if modified), or 'unknown'."""
    repo = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")
