import gzip
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline.core.errors import DataSourceError
from pipeline.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, write_idx, write_idx_folder
from pipeline.data.ingest import ingest
from pipeline.data.snapshot import Snapshot


def _published_snapshots(config):
    root = config.workdir_path / "snapshots"
    return [p for p in root.iterdir() if not p.name.startswith(".")] if root.exists() else []


def test_idx_folder_becomes_a_tfds_snapshot(make_config, fashion_subset):
    config = make_config()
    snapshot = ingest(config)

    assert snapshot.splits == {"train": 2000, "test": 500}
    assert snapshot.class_names[0] == "T-shirt/top" and snapshot.num_classes == 10
    assert snapshot.image_shape == (28, 28, 1)
    assert len(snapshot.fingerprint) == 64
    assert snapshot.path.name == f"fashion-mnist-{snapshot.fingerprint[:12]}"
    reopened = Snapshot.load(snapshot.path)
    assert reopened == snapshot
    assert snapshot.problem.task == "multiclass" and [f.key for f in snapshot.problem.features] == ["images"]
    # The TFDS copy holds exactly the source's examples (TFDS reorders them).
    features, labels = snapshot.split_columns("test")
    images = features["images"]
    source_images, source_labels = fashion_subset["t10k"]
    assert images.shape == (500, 28, 28, 1) and images.dtype == np.uint8
    assert sorted(map(bytes, images[..., 0])) == sorted(map(bytes, source_images))
    assert np.bincount(labels, minlength=10).tolist() == np.bincount(source_labels, minlength=10).tolist()
    assert tfds.builder_from_directory(str(snapshot.path / snapshot.tfds_dir)).info.name == "columns_dataset"


def test_same_data_reuses_snapshot_and_new_data_gets_a_new_one(make_config, tmp_path, fashion_subset):
    config = make_config()
    first = ingest(config)
    mtime = (first.path / "snapshot.json").stat().st_mtime_ns
    assert ingest(config).path == first.path
    assert (first.path / "snapshot.json").stat().st_mtime_ns == mtime

    images, labels = fashion_subset["train"]
    changed = write_idx_folder(
        tmp_path / "v2" / "fashion-mnist",
        {"train": (images[:1900], labels[:1900]), "t10k": fashion_subset["t10k"]},
    )
    second = ingest(config.replace(data_source=f"idx:{changed}"))
    assert second.fingerprint != first.fingerprint
    assert second.splits["train"] == 1900
    assert Snapshot.load(first.path) == first  # The old snapshot is untouched.
    assert len(_published_snapshots(config)) == 2


def test_class_names_from_file_or_config(make_config, tmp_path, fashion_subset):
    folder = write_idx_folder(tmp_path / "clothes", fashion_subset)
    assert ingest(make_config(data_source=f"idx:{folder}")).class_names == [str(i) for i in range(10)]
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    assert ingest(make_config(data_source=f"idx:{folder}")).class_names[3] == "c3"
    named = ingest(make_config(data_source=f"idx:{folder}", class_names=[f"k{i}" for i in range(10)]))
    assert named.class_names[9] == "k9"


def _copy_source(small_idx_dir, tmp_path):
    return shutil.copytree(small_idx_dir, tmp_path / "broken" / "fashion-mnist")


def _corrupt_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: d.rename(d.parent / "gone"), r"IDX data folder .* does not exist"),
        (lambda d: [p.unlink() for p in d.iterdir()], r"holds no '\*-images-idx3-ubyte"),
        (lambda d: (d / "t10k-labels-idx1-ubyte.gz").unlink(), "split 'test' has no labels file"),
        (
            lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(
                (d / "train-images-idx3-ubyte.gz").read_bytes()[:20000]
            ),
            r"train-images-idx3-ubyte.gz: gzip file is truncated",
        ),
        (
            lambda d: _corrupt_middle(d / "train-images-idx3-ubyte.gz"),
            r"train-images-idx3-ubyte.gz: corrupt gzip data",
        ),
        (
            lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all"),
            r"t10k-labels-idx1-ubyte.gz: corrupt gzip data",
        ),
    ],
    ids=["missing-folder", "empty-folder", "missing-labels", "truncated-gzip", "corrupt-gzip", "not-gzip"],
)
def test_broken_sources_fail_clearly_and_publish_nothing(make_config, small_idx_dir, tmp_path, breakage, message):
    folder = _copy_source(small_idx_dir, tmp_path)
    breakage(folder)
    config = make_config(data_source=f"idx:{folder}")
    with pytest.raises(DataSourceError, match=message):
        ingest(config)
    assert _published_snapshots(config) == []


def test_wrong_magic_number(make_config, small_idx_dir, tmp_path, fashion_subset):
    folder = _copy_source(small_idx_dir, tmp_path)
    images, _ = fashion_subset["train"]
    write_idx(folder / "train-images-idx3-ubyte.gz", images, 0x00000903)  # signed bytes
    with pytest.raises(DataSourceError, match=r"wrong IDX magic number 0x00000903, expected 0x00000803"):
        ingest(make_config(data_source=f"idx:{folder}"))
    write_idx(folder / "train-images-idx3-ubyte.gz", images[:, :, 0], LABELS_MAGIC)
    with pytest.raises(DataSourceError, match=r"wrong IDX magic number 0x00000801, expected 0x00000803"):
        ingest(make_config(data_source=f"idx:{folder}"))


def test_declared_image_shape_must_match_content(make_config, small_idx_dir, tmp_path, fashion_subset):
    folder = _copy_source(small_idx_dir, tmp_path)
    images, _ = fashion_subset["train"]
    path = folder / "train-images-idx3-ubyte.gz"
    header = IMAGES_MAGIC.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2000, 32, 32))
    with gzip.open(path, "wb") as handle:
        handle.write(header + images.tobytes())
    with pytest.raises(DataSourceError, match=r"declares shape \(2000, 32, 32\) .* holds 1568016 bytes"):
        ingest(make_config(data_source=f"idx:{folder}"))
    # Well-formed, but a different image shape from the other split.
    write_idx(path, np.zeros((2000, 32, 32), np.uint8), IMAGES_MAGIC)
    with pytest.raises(DataSourceError, match=r"splits have different image shapes"):
        ingest(make_config(data_source=f"idx:{folder}"))


def test_label_outside_class_range(make_config, small_idx_dir, tmp_path, fashion_subset):
    folder = _copy_source(small_idx_dir, tmp_path)
    labels = fashion_subset["t10k"][1].copy()
    labels[17] = 12
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels, LABELS_MAGIC)
    config = make_config(data_source=f"idx:{folder}")
    with pytest.raises(DataSourceError, match=r"label 12 at index 17 is outside the class range 0..9"):
        ingest(config)
    assert _published_snapshots(config) == []


def test_image_and_label_counts_must_agree(make_config, small_idx_dir, tmp_path, fashion_subset):
    folder = _copy_source(small_idx_dir, tmp_path)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", fashion_subset["t10k"][1][:499], LABELS_MAGIC)
    with pytest.raises(DataSourceError, match="has 500 images but t10k-labels-idx1-ubyte.gz has 499 labels"):
        ingest(make_config(data_source=f"idx:{folder}"))


def test_read_idx_reads_uncompressed_files(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(
        read_idx(write_idx(tmp_path / "x-images-idx3-ubyte", array, IMAGES_MAGIC), IMAGES_MAGIC), array
    )


def test_snapshot_does_not_depend_on_chunk_size_or_memory_budget(make_config, tmp_path, monkeypatch):
    import pipeline.data.ingest as ingest_module

    first = ingest(make_config())
    monkeypatch.setattr(ingest_module, "CHUNK_ROWS", 333)
    second = ingest(make_config(workdir=str(tmp_path / "other"), ingest_memory_budget_mb=1))
    assert second.fingerprint == first.fingerprint and second.splits == first.splits
    for split in first.splits:
        a, b = first.split_columns(split), second.split_columns(split)
        assert np.array_equal(a[0]["images"], b[0]["images"]) and np.array_equal(a[1], b[1])


def test_a_one_split_source_is_divided_by_rank_of_its_row_hashes_in_bounded_memory(tmp_path, monkeypatch):
    import pipeline.data.division as division
    import pipeline.data.ingest as ingest_module
    from pipeline.data.problem_inference import PreparedSplit

    monkeypatch.setattr(division, "DIGEST_BUCKET_BITS", 2)  # few buckets: each cut is found among many rows
    monkeypatch.setattr(division, "DIGEST_READ_ROWS", 100)
    rng = np.random.default_rng(0)
    size = 2000
    numbers = rng.integers(0, 30, size).astype(np.float32)  # many identical rows: equal hashes
    texts = np.asarray([str(v) for v in rng.integers(0, 3, size)], dtype=object)
    rows = PreparedSplit({"x": numbers, "t": texts}, rng.integers(0, 2, size), 9)
    chunks = [
        PreparedSplit({k: v[start : start + 97] for k, v in rows.features.items()}, rows.labels[start : start + 97], 0)
        for start in range(0, size, 97)
    ]
    digest_file = tmp_path / "digests"
    cuts = division.divide(chunks, [0.7, 0.2, 0.1], 5, digest_file)
    routed = ingest_module._routed(rows, "data", cuts, digest_file, 0)

    # The reference: a stable sort of all hashes in memory, cut at the shares, each part in source order.
    order = np.argsort(division.row_digests(rows, 5), kind="stable")
    bounds = {"train": (0, 1400), "validation": (1400, 1800), "test": (1800, 2000)}
    for split, (start, end) in bounds.items():
        expected = np.sort(order[start:end])
        assert np.array_equal(routed[split].features["x"], numbers[expected])
        assert routed[split].features["t"].tolist() == texts[expected].tolist()
        assert np.array_equal(routed[split].labels, rows.labels[expected])
        assert routed[split].dropped_missing_label == (9 if split == "train" else 0)
    # Routing a later chunk reads that chunk's row hashes: the same answer as routing all rows at once.
    later = ingest_module._routed(chunks[3], "data", cuts, digest_file, 3 * 97)
    for split in bounds:
        in_all = division.split_of(digest_file, 0, size, cuts)[3 * 97 : 4 * 97] == list(bounds).index(split)
        assert np.array_equal(later[split].features["x"], chunks[3].features["x"][in_all])


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a disk that fills up (mounting needs root with CAP_SYS_ADMIN)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_writing_shards_publishes_nothing_and_keeps_what_was_published(
    make_config, small_disk, tmp_path
):
    published = ingest(make_config(workdir=str(small_disk)))
    noise = np.random.default_rng(0).integers(0, 256, (12_000, 28, 28), dtype=np.uint8)  # PNG cannot shrink it
    big = write_idx_folder(
        tmp_path / "big", {"train": (noise, np.arange(12_000) % 10), "t10k": (noise[:10], np.arange(10))}
    )
    with pytest.raises(DataSourceError, match=r"writing the snapshot under .* failed: No space left on device"):
        ingest(make_config(workdir=str(small_disk), data_source=f"idx:{big}", ingest_memory_budget_mb=1))
    left = sorted(p.name for p in (small_disk / "snapshots").iterdir() if p.name != ".staging.lock")
    assert left == [published.path.name]  # no .tmp-* staging folder left behind
    assert Snapshot.load(published.path).split_columns("test")[1].shape == (500,)


def test_the_fingerprint_hashes_each_text_as_its_length_and_utf8_bytes():
    import hashlib

    from pipeline.data.ingest import _hash_values

    values = np.asarray(["", "a", "naïve ☃", "x" * 1000], dtype=object)
    hasher, reference = hashlib.sha256(), hashlib.sha256()
    _hash_values(hasher, values)
    for value in values:
        encoded = value.encode("utf-8")
        reference.update(len(encoded).to_bytes(8, "little") + encoded)
    assert hasher.hexdigest() == reference.hexdigest()
