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
