"""Atomic writes and locks: readers never see half a file."""

import pytest

from pipeline.core.artifacts import atomic_output, atomic_write_json, read_json


def test_atomic_output_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "sub" / "model.keras"
    with atomic_output(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".keras" and tmp.name.startswith(".tmp-")
        tmp.write_text("first")
    assert path.read_text() == "first"

    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.keras"]


def test_atomic_write_json_round_trips(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert read_json(tmp_path / "a.json") == {"b": [1, 2]}


def test_stale_staging_cleanup_removes_only_abandoned_folders(tmp_path):
    import os
    import time

    from pipeline.core.artifacts import remove_stale_staging, staging_dir

    abandoned = tmp_path / ".tmp-export-killed"  # its writer died: the owner file is not locked
    abandoned.mkdir()
    (tmp_path / ".tmp-export-killed.owner").touch()
    old_temp_file = tmp_path / ".tmp-1234-evaluation.json"  # no owner file, untouched for two hours
    old_temp_file.write_text("{}")
    os.utime(old_temp_file, (time.time() - 7200, time.time() - 7200))
    young_temp_file = tmp_path / ".tmp-5678-evaluation.json"  # maybe another process's atomic write
    young_temp_file.write_text("{}")
    with staging_dir(tmp_path, "export") as live:
        (live / "saved_model.pb").write_bytes(b"being written")
        removed = remove_stale_staging(tmp_path)
        assert sorted(p.name for p in removed) == [".tmp-1234-evaluation.json", ".tmp-export-killed"]
        assert (live / "saved_model.pb").exists() and young_temp_file.exists()
        assert not (tmp_path / ".tmp-export-killed.owner").exists()
    assert not live.exists() and not live.with_name(live.name + ".owner").exists()


def test_a_failed_staging_block_leaves_nothing(tmp_path):
    from pipeline.core.artifacts import staging_dir

    with pytest.raises(RuntimeError), staging_dir(tmp_path, "snapshot") as staging:
        (staging / "part").write_text("x")
        raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging.lock"]
