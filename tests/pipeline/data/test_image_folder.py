"""`images:` sources: class folders (with or without split folders), sizes and modes, broken images."""

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import DataSourceError
from pipeline.data.ingest import ingest


def _draw(path, shade: int, size=(12, 10), mode="L"):
    """An image whose left half has `shade` (the class signal) and right half noise."""
    rng = np.random.default_rng(shade)
    pixels = rng.integers(0, 60, (size[1], size[0]), dtype=np.uint8)
    pixels[:, : size[0] // 2] = shade
    image = Image.fromarray(pixels, "L")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert(mode).save(path)
    return path


def _folder(root, per_class=30, split=None, **kwargs):
    for name, shade in (("cats", 200), ("dogs", 90), ("owls", 140)):
        for index in range(per_class):
            base = root / split if split else root
            _draw(base / name / f"{index:03d}.png", shade + index % 3, **kwargs)
    return root


def test_class_folders_become_an_image_classification_snapshot(make_config, tmp_path):
    folder = _folder(tmp_path / "animals")
    (folder / "cats" / "notes.txt").write_text("not an image: ignored")
    _draw(folder / "dogs" / "big.jpg", 90, size=(24, 20))  # resized to the most common size
    snapshot = ingest(make_config(data_source=f"images:{folder}"))
    problem = snapshot.problem
    assert problem.task == "multiclass" and problem.class_names == ("cats", "dogs", "owls")
    assert [(f.key, f.kind, f.shape) for f in problem.features] == [("images", "image", (10, 12, 1))]
    assert snapshot.image_shape == (10, 12, 1)
    assert sum(snapshot.splits.values()) == 91 and set(snapshot.splits) == {"train", "validation", "test"}
    images, labels = snapshot.split_columns("train")
    assert images["images"].dtype == np.uint8 and images["images"].shape[1:] == (10, 12, 1)
    assert set(labels.tolist()) == {0, 1, 2}


def test_split_folders_and_a_configured_size_and_mode(make_config, tmp_path):
    root = tmp_path / "pets"
    _folder(root, 20, split="train")
    _folder(root, 5, split="val", mode="RGB")  # 'val' is the validation split
    _folder(root, 5, split="test", mode="RGB")
    config = make_config(data_source=f"images:{root}", image_size=[8, 8], image_mode="RGB")
    snapshot = ingest(config)
    assert snapshot.splits == {"test": 15, "train": 60, "validation": 15}
    assert snapshot.image_shape == (8, 8, 3)
    assert snapshot.resolve_split("auto", "train") == "train"  # a validation split of its own


def test_mixed_modes_need_a_mode_and_a_corrupt_image_is_named(make_config, tmp_path):
    folder = _folder(tmp_path / "mixed", 4)
    _draw(folder / "owls" / "colour.png", 140, mode="RGB")
    config = make_config(data_source=f"images:{folder}")
    with pytest.raises(DataSourceError, match=r"images have different colour modes: .* is L, .*colour.png is RGB; set"):
        ingest(config)
    assert ingest(config.replace(image_mode="L")).image_shape == (10, 12, 1)

    (folder / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataSourceError, match=r"dogs/broken.png: cannot decode the image"):
        ingest(config.replace(image_mode="L", run_id="broken"))


def test_images_stream_in_chunks_and_a_picture_broken_after_its_header_is_named(make_config, tmp_path, monkeypatch):
    from pipeline.data import source_data

    folder = _folder(tmp_path / "animals", 12)
    whole = ingest(make_config(data_source=f"images:{folder}"))
    monkeypatch.setattr(source_data, "CHUNK_BYTES", 5 * 120)  # five 10x12 images a chunk
    chunked = ingest(make_config(data_source=f"images:{folder}", workdir=str(tmp_path / "chunked")))
    assert chunked.fingerprint == whole.fingerprint and chunked.splits == whole.splits
    assert np.array_equal(chunked.split_columns("test")[0]["images"], whole.split_columns("test")[0]["images"])

    good = (folder / "owls" / "005.png").read_bytes()
    (folder / "owls" / "005.png").write_bytes(good[: len(good) // 2])  # the header reads, the pixels do not
    config = make_config(data_source=f"images:{folder}", workdir=str(tmp_path / "broken"))
    with pytest.raises(DataSourceError, match=r"owls/005.png: cannot decode the image"):
        ingest(config)
    assert not [p for p in (tmp_path / "broken" / "snapshots").iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize(
    "layout, message",
    [
        (lambda root: root.mkdir(), r"no class folders \(expected .*/<class>/\*.png\)"),
        (lambda root: (root / "cats").mkdir(parents=True), r"cats: class folder holds no PNG or JPEG images"),
        (lambda root: None, r"images:.*/missing: no such folder"),
    ],
)
def test_empty_or_missing_folders(make_config, tmp_path, layout, message):
    root = tmp_path / "missing"
    layout(root)
    with pytest.raises(DataSourceError, match=message):
        ingest(make_config(data_source=f"images:{root}"))


def test_a_part_reads_the_planned_file_list_and_refuses_images_changed_since(make_config, tmp_path, monkeypatch):
    """Parts take the folder's listing, mode and size from the plan (no listing or header pass of
    every image per part), and check each file they decode against it."""
    import os

    from pipeline.data import image_folder, source_data
    from pipeline.data.ingest import finish_ingest, plan_ingest, write_part

    folder = _folder(tmp_path / "animals", 12)
    whole = ingest(make_config(data_source=f"images:{folder}", workdir=str(tmp_path / "whole")))
    monkeypatch.setattr(source_data, "CHUNK_BYTES", 6 * 120)  # six 10x12 images a chunk
    config = make_config(data_source=f"images:{folder}", ingest_part_mb=0.001)
    plan = plan_ingest(config)
    assert len(plan.parts) >= 3
    assert plan.reopen["mode"] == "L" and plan.reopen["size"] == [10, 12]
    assert sorted(entry[0] for entry in plan.reopen["files"]["data"])[0] == "cats/000.png"

    def headers_read_again(*args):
        raise AssertionError("a part read every image's header again")

    monkeypatch.setattr(image_folder, "_target_mode_and_size", headers_read_again)
    monkeypatch.setattr(image_folder, "find_images", headers_read_again)
    last = plan.parts[-1]
    *_, (last_image, *_) = plan.reopen["files"]["data"]
    changed = folder / last_image
    stat = changed.stat()
    _draw(changed, 17)  # another picture under the same name, after planning
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with pytest.raises(
        DataSourceError, match=rf"changed while it was ingested \(part {last.index + 1} of .*{last_image}: "
    ):
        write_part(config, last)
    assert not last.folder.exists()
    changed.unlink()
    with pytest.raises(DataSourceError, match=rf"{last_image}: removed since the folder was listed"):
        write_part(config, last)

    _draw(changed, 140 + 11 % 3)  # the original picture back, as listed (same bytes, size and time)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    for part in plan.parts:
        write_part(config, part)
    merged = finish_ingest(config, plan.folder)
    assert merged.fingerprint == whole.fingerprint and merged.splits == whole.splits
    assert np.array_equal(merged.split_columns("train")[0]["images"], whole.split_columns("train")[0]["images"])


def test_images_decoded_in_threads_make_the_same_snapshot_and_a_broken_one_is_named(make_config, tmp_path, monkeypatch):
    """Slow-to-decode images (here: every image) are decoded on every core after the first few."""
    from pipeline.data import image_folder, source_data, threads

    folder = _folder(tmp_path / "animals", 12)
    one_by_one = ingest(make_config(data_source=f"images:{folder}", workdir=str(tmp_path / "one")))
    monkeypatch.setattr(image_folder, "PARALLEL_DECODE_S", 0.0)
    monkeypatch.setattr(image_folder, "DECODE_PROBE", 2)
    monkeypatch.setattr(source_data, "CHUNK_BYTES", 10 * 120)  # ten 10x12 images a chunk
    monkeypatch.setattr(threads, "cores", lambda: 2)
    threaded = ingest(make_config(data_source=f"images:{folder}", workdir=str(tmp_path / "threaded")))
    assert threaded.fingerprint == one_by_one.fingerprint
    assert np.array_equal(threaded.split_columns("train")[0]["images"], one_by_one.split_columns("train")[0]["images"])

    good = (folder / "dogs" / "010.png").read_bytes()  # chunk 2 holds dogs/008-011 and owls/000-005: past its first two
    (folder / "dogs" / "010.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataSourceError, match=r"dogs/010.png: cannot decode the image"):
        ingest(make_config(data_source=f"images:{folder}", workdir=str(tmp_path / "broken")))


def test_a_plan_written_before_listings_were_kept_lists_the_folder_again(tmp_path):
    """An older plan's `reopen` holds no file list: a part then lists and reads the headers itself."""
    from pipeline.data.image_folder import read_image_folder

    folder = _folder(tmp_path / "animals", 3)
    again = read_image_folder(folder, "auto", None, reopen={})
    assert again.reopen["mode"] == "L" and again.reopen["size"] == [10, 12]
    assert [entry[:2] for entry in again.reopen["files"]["data"]][:2] == [
        ["cats/000.png", "cats"],
        ["cats/001.png", "cats"],
    ]
