"""bench/tensor_encoding.py at its smallest: both encodings round-trip and the report is written."""

from __future__ import annotations

from bench import tensor_encoding


def test_the_encoding_benchmark_measures_both_encodings_for_every_dtype_and_end_to_end():
    rows = tensor_encoding.encode_decode(repeats=1)
    assert {row["dtype"] for row in rows} == set(tensor_encoding.OUTPUTS)
    for row in rows:
        assert row["field_encode_ms"] > 0 and row["content_decode_ms"] > 0
        if row["dtype"] == "float32":
            assert abs(row["field_bytes"] - row["content_bytes"]) < 16  # packed floats are the same bytes
    end_to_end = tensor_encoding.end_to_end(repeats=1)
    assert [row["rows"] for row in end_to_end] == tensor_encoding.ROWS
    report = tensor_encoding.markdown(
        {"machine": "test", "repeats": 1, "encode_decode": rows, "end_to_end": end_to_end}
    )
    assert "| float32 | 1,000,000 |" in report and "| 4096 |" in report
