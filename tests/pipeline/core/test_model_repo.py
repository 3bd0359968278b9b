"""The model repository: which folders are versions, publishing, locking, pruning."""

import multiprocessing
import time
from pathlib import Path

import pytest

from pipeline.core import model_repo
from pipeline.core.errors import ExportError


def _staged(model_dir, name="staging"):
    staging = model_dir / f".tmp-{name}"
    (staging / "variables").mkdir(parents=True)
    (staging / "variables" / "variables.index").write_bytes(b"index")
    (staging / "variables" / "variables.data-00000-of-00001").write_bytes(b"data")
    (staging / "saved_model.pb").write_bytes(b"graph")
    return staging


def test_only_ascii_digit_folders_are_versions(tmp_path):
    for name in ("1", "007", "12", "²", "١", "1a", ".tmp-export-3", "tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a folder")
    assert model_repo.published_versions(tmp_path) == [1, 7, 12]
    assert not model_repo.is_version_name("²") and model_repo.is_version_name("0042")
    assert model_repo.published_versions(tmp_path / "missing") == []


def test_publish_renames_to_the_next_version_with_the_card(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "3").mkdir()
    version, final = model_repo.publish_version(_staged(model_dir), model_dir, {"model_name": "m"})
    assert (version, final) == (4, model_dir / "4")
    assert model_repo.read_model_card(final) == {"model_name": "m", "version": 4}
    assert (final / "saved_model.pb").read_bytes() == b"graph"
    assert model_repo.read_model_card(model_dir / "3") is None


def test_prune_keeps_the_newest_and_the_protected(tmp_path):
    for version in range(1, 7):
        (tmp_path / str(version)).mkdir()
    assert model_repo.prune_versions(tmp_path, keep=2, protected=[2]) == [1, 3, 4]
    assert model_repo.published_versions(tmp_path) == [2, 5, 6]
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def _hold_lock(model_dir, ready, seconds):
    with model_repo.publish_lock(model_dir):
        ready.set()
        time.sleep(seconds)


def test_the_publish_lock_excludes_other_processes(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(tmp_path, ready, 1.0))
    holder.start()
    assert ready.wait(30)
    started = time.monotonic()
    with model_repo.publish_lock(tmp_path):
        waited = time.monotonic() - started
    holder.join()
    assert waited > 0.5  # blocked until the other process let go


def test_an_unwritable_base_path_is_named(tmp_path):
    with pytest.raises(ExportError, match="model base path /proc/nope is not writable"):
        model_repo.ensure_writable(Path("/proc/nope/m"))
