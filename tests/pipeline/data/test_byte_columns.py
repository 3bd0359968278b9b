"""Rows of bytes built a column at a time equal what a loop over the rows builds."""

import numpy as np
import pytest

from pipeline.data import byte_columns
from pipeline.data.byte_columns import Ragged, compact, join_rows, take, utf8, varint_lengths, varints
from pipeline.data.example_encoder import varint


def _ragged(rows):
    return Ragged(np.frombuffer(b"".join(rows), np.uint8).copy(), np.asarray([len(r) for r in rows], np.int64))


def test_utf8_encodes_text_and_takes_none_as_empty():
    values = np.asarray(["a", None, "", "naïve ☃", "x" * 300], dtype=object)
    encoded = utf8(values)
    assert encoded.to_list() == [b"a", b"", b"", "naïve ☃".encode(), b"x" * 300]
    assert utf8(np.asarray([], dtype=object)).to_list() == []


def test_varints_match_protobufs_encoding_of_every_length():
    values = np.asarray([0, 1, 127, 128, 300, 2**14, 2**35 - 1, 2**62, 2**63 - 1, -1, -(2**63)], np.int64)
    encoded = varints(values)
    assert encoded.to_list() == [varint(int(v) & (2**64 - 1)) for v in values.tolist()]
    assert varint_lengths(values).tolist() == [len(varint(int(v) & (2**64 - 1))) for v in values.tolist()]


@pytest.fixture(params=[1 << 20, 7], ids=["one-slice", "slices-of-7-bytes"])
def slice_bytes(request, monkeypatch):
    """The output is built a slice at a time; tiny slices (rows longer than a slice) build the same."""
    monkeypatch.setattr(byte_columns, "SLICE_BYTES", request.param)


@pytest.mark.parametrize("ragged_columns", [False, True], ids=["all-one-width", "ragged"])
def test_join_rows_concatenates_each_rows_bytes_column_after_column(ragged_columns, slice_bytes):
    rng = np.random.default_rng(0)
    rows = 257
    fixed = rng.integers(0, 256, (rows, 5), dtype=np.uint8)
    texts = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in rng.integers(0, 9 if ragged_columns else 1, rows)]
    columns = [Ragged.constant(b"\x0a", rows), Ragged.fixed(fixed), _ragged(texts), _ragged(texts[::-1])]
    joined = join_rows(columns)
    expected = [b"\x0a" + fixed[i].tobytes() + texts[i] + texts[::-1][i] for i in range(rows)]
    assert joined.to_list() == expected
    assert joined.lengths.tolist() == [len(row) for row in expected]


def test_take_gathers_rows_in_any_order():
    rng = np.random.default_rng(1)
    texts = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in rng.integers(0, 30, 500)]
    order = rng.permutation(500)
    assert take(_ragged(texts), order).to_list() == [texts[i] for i in order]


def test_compact_and_take():
    table = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert compact(table, np.asarray([1, 4, 0])).to_list() == [b"\x00", bytes([4, 5, 6, 7]), b""]
    rows = _ragged([b"ab", b"", b"cde", b"f"])
    assert take(rows, np.asarray([2, 0, 3, 1])).to_list() == [b"cde", b"ab", b"f", b""]
    assert take(rows, np.asarray([], np.int64)).to_list() == []


def test_arrow_round_trip_shares_the_bytes_and_reads_nulls_as_empty_rows():
    import pyarrow as pa

    rows = _ragged([b"ab", b"", b"cde"])
    arrow = rows.to_arrow()
    assert arrow.to_pylist() == [b"ab", b"", b"cde"]
    back = Ragged.from_arrow(arrow)
    assert np.shares_memory(back.data, rows.data) and back.to_list() == rows.to_list()
    sliced = Ragged.from_arrow(pa.array(["x", None, "yz", "w"], pa.string()).slice(1, 2))
    assert sliced.to_list() == [b"", b"yz"]


def test_rows_slices_without_copying_and_take_accepts_arrow_rows():
    rows = _ragged([b"ab", b"", b"cde", b"f"])
    assert rows.rows(1, 3).to_list() == [b"", b"cde"]
    assert rows.rows(0, 0).to_list() == [] and rows.rows(3, 4).to_list() == [b"f"]
    assert np.shares_memory(rows.rows(2, 4).data, rows.data)
    assert take(rows.to_arrow(), np.asarray([3, 3, 0])).to_list() == [b"f", b"f", b"ab"]
