"""TFRecord files: the frames are TensorFlow's bytes; the reader gives back its records or names the bad frame."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.data import tfrecord
from pipeline.data.byte_columns import Ragged
from pipeline.data.tfrecord import CorruptRecordError, first_corrupt_record, frames, read_records

SIZES = [0, 1, 5, 127, 128, 300, 70_000, 5, 0, 9]


def _records(sizes=SIZES, seed=3):
    rng = np.random.default_rng(seed)
    return [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in sizes]


def _tf_file(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


def _offsets(records):
    return np.cumsum([0] + [len(r) + 16 for r in records[:-1]]).tolist()


def _read(path, **kwargs):
    batches = list(read_records(path, **kwargs))
    return [r for records, _ in batches for r in records.to_list()], [
        o for _, offsets in batches for o in offsets.tolist()
    ]


def test_frames_are_the_bytes_tensorflows_writer_writes(tmp_path):
    records = _records()
    ragged = Ragged(np.frombuffer(b"".join(records), np.uint8), np.asarray([len(r) for r in records], np.int64))
    assert frames(ragged) == _tf_file(tmp_path / "tf.tfrecord", records).read_bytes()
    assert frames(Ragged.empty()) == b""


@pytest.mark.parametrize("block", [tfrecord.READ_BLOCK_BYTES, 7, 200])
@pytest.mark.parametrize("batch", [1, 3, 4096])
def test_the_reader_gives_tensorflows_records_and_their_offsets(tmp_path, monkeypatch, block, batch):
    """Small read blocks put frames across blocks and frames larger than a block (70,000 bytes)."""
    monkeypatch.setattr(tfrecord, "READ_BLOCK_BYTES", block)
    records = _records()
    path = _tf_file(tmp_path / "tf.tfrecord", records)
    assert [bytes(r) for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()] == records
    assert _read(path, batch_records=batch) == (records, _offsets(records))
    assert all(len(r.lengths) <= batch for r, _ in read_records(path, batch_records=batch))
    assert _read(path, skip=3, take=4, batch_records=batch) == (records[3:7], _offsets(records)[3:7])
    assert _read(path, skip=9, take=1, batch_records=batch) == (records[9:], _offsets(records)[9:])
    assert _read(path, skip=10, take=0, batch_records=batch) == ([], [])


def test_records_of_one_size_read_back(tmp_path):
    records = _records([256] * 5000, seed=1)
    assert _read(_tf_file(tmp_path / "t.tfrecord", records), batch_records=4096)[0] == records


def test_an_empty_file_has_no_records(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    assert _read(tmp_path / "empty") == ([], [])
    assert first_corrupt_record(tmp_path / "empty") is None


def _damaged(tmp_path, at):
    records = _records()
    content = bytearray(_tf_file(tmp_path / "tf.tfrecord", records).read_bytes())
    content[at] ^= 0x40
    (tmp_path / "bad.tfrecord").write_bytes(bytes(content))
    return tmp_path / "bad.tfrecord", _offsets(records)


@pytest.mark.parametrize(
    "where, named, reason",
    [
        (100 + 12, 12, "the record's checksum does not match"),  # inside the 70,000 bytes
        (2, 0, "the record length's checksum does not match"),  # its length
        (9, 0, "the record length's checksum does not match"),  # the length's checksum
        (12 + 70_000 + 1, 12, "the record's checksum does not match"),  # the record's checksum
    ],
    ids=["record", "length", "length-checksum", "record-checksum"],
)
def test_a_damaged_frame_is_named_by_tensorflows_offset(tmp_path, where, named, reason):
    """TensorFlow names the frame's offset, or the record's where the record's checksum fails."""
    path, offsets = _damaged(tmp_path, _offsets(_records())[6] + where)
    at = offsets[6] + named
    with pytest.raises(CorruptRecordError) as raised:
        _read(path, batch_records=2)
    assert (raised.value.path, raised.value.offset, raised.value.reason) == (path, at, reason)
    assert str(raised.value) == f"{path}: corrupt record at byte {at} ({reason})"
    found = first_corrupt_record(path)
    assert (found.offset, found.reason) == (at, reason)
    with pytest.raises(tf.errors.DataLossError, match=rf"corrupted record at {at}\b"):
        list(tf.data.TFRecordDataset(str(path)))


def test_a_cut_file_and_a_short_file_are_named(tmp_path):
    """Stricter than TensorFlow, which takes a file cut inside a frame's length for its end."""
    records = _records()
    content = _tf_file(tmp_path / "tf.tfrecord", records).read_bytes()
    offsets = _offsets(records)
    for cut, reason in [
        (offsets[6] + 5, "the file ends inside a record"),
        (offsets[6] + 500, "the file ends inside a record"),
    ]:
        (tmp_path / "cut").write_bytes(content[:cut])
        with pytest.raises(CorruptRecordError) as raised:
            _read(tmp_path / "cut")
        assert (raised.value.offset, raised.value.reason) == (offsets[6], reason)
    (tmp_path / "short").write_bytes(content[: offsets[6]])
    assert _read(tmp_path / "short")[0] == records[:6]
    with pytest.raises(
        CorruptRecordError, match=r"short: corrupt record at byte \d+ \(the file ends after 6 of 8 records\)"
    ):
        _read(tmp_path / "short", skip=2, take=6)
    assert first_corrupt_record(tmp_path / "tf.tfrecord") is None
