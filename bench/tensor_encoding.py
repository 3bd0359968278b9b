"""`make bench`: what answering Predict in TF Serving's typed fields costs against `tensor_content`.

TF Serving fills each output's typed `*_val` field by default and writes `tensor_content` only under
`--enable_serialization_as_tensor_content`; the local server does the same. Two measurements:

- per output tensor, in one process: the server's encoding plus serialization, and the client's
  parsing plus conversion to NumPy, for float32, int64 and string outputs of several sizes;
- end to end: gRPC Predict latency against a local server started with and without the flag
  (a model answering [rows, 3] float32 and [rows] float32).

Medians over repeats; figures in bench/results/tensor_encoding.{json,md}.

    .venv/bin/python bench/tensor_encoding.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_report  # noqa: E402
from serving import launcher, sample_models, tensors  # noqa: E402
from serving.client import TFServingClient  # noqa: E402

OUTPUTS = {
    "float32": lambda n: np.random.default_rng(0).random(n, dtype=np.float32),
    "int64": lambda n: np.arange(n, dtype=np.int64) % 10,
    "string": lambda n: np.array([b"T-shirt/top", b"Trouser", b"Pullover"] * (n // 3 + 1), dtype=object)[:n],
}
ELEMENTS = [10, 1_000, 100_000, 1_000_000]
ROWS = [1, 256, 4096]


def _median_ms(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 4)


def encode_decode(repeats: int) -> list[dict]:
    """Server encode + serialize and client parse + to_array, per dtype, size and encoding."""
    from tensorflow.core.framework import tensor_pb2

    rows = []
    for dtype, make in OUTPUTS.items():
        for count in ELEMENTS:
            if dtype == "string" and count > 100_000:
                continue
            array = make(count)
            row = {"dtype": dtype, "elements": count}
            for encoding in (tensors.FIELD, tensors.CONTENT):
                wire = tensors.to_tensor_proto(array, encoding).SerializeToString()

                def parse(wire=wire):
                    proto = tensor_pb2.TensorProto()
                    proto.ParseFromString(wire)
                    return tensors.to_array(proto)

                np.testing.assert_array_equal(parse(), array)
                row[f"{encoding}_encode_ms"] = _median_ms(
                    lambda encoding=encoding, array=array: tensors.to_tensor_proto(array, encoding).SerializeToString(),
                    repeats,
                )
                row[f"{encoding}_decode_ms"] = _median_ms(parse, repeats)
                row[f"{encoding}_bytes"] = len(wire)
            rows.append(row)
    return rows


def end_to_end(repeats: int) -> list[dict]:
    """gRPC Predict latency (median) with the server's default encoding and under the flag."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "scaler"
        sample_models.save_scaler(base, 1, 2.0)
        config = Path(tmp) / "models.config"
        config.write_text(f"model_config_list {{ config {{ name: 'scaler' base_path: '{base}' }} }}")
        for encoding, flags in ((tensors.FIELD, []), (tensors.CONTENT, ["--enable_serialization_as_tensor_content"])):
            server = launcher.start(
                [f"--model_config_file={config}", "--max_rows_per_request=0", *flags],
                log_path=Path(tmp) / f"{encoding}.log",
            )
            try:
                with TFServingClient(server.grpc_target, timeout=60) as client:
                    for rows in ROWS:
                        x = np.random.default_rng(rows).random((rows, 3), dtype=np.float32)
                        answer = client.predict("scaler", {"x": x})
                        np.testing.assert_allclose(answer["y"], x * 2)
                        results.setdefault(rows, {"rows": rows})[f"{encoding}_ms"] = _median_ms(
                            lambda x=x, client=client: client.predict("scaler", {"x": x}), repeats
                        )
            finally:
                server.stop()
    return list(results.values())


def markdown(results: dict) -> str:
    lines = [
        "# Predict answers: TF Serving's typed fields against tensor_content",
        "",
        f"{results['machine']}; medians of {results['repeats']} repeats.",
        "",
        "One output tensor: server encode + serialize, client parse + to NumPy (ms), and the bytes on the wire.",
        "",
        "| dtype | elements | typed fields encode | content encode | typed fields decode | content decode "
        "| typed fields bytes | content bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["encode_decode"]:
        lines.append(
            f"| {row['dtype']} | {row['elements']:,} | {row['field_encode_ms']} | {row['content_encode_ms']} "
            f"| {row['field_decode_ms']} | {row['content_decode_ms']} | {row['field_bytes']:,} "
            f"| {row['content_bytes']:,} |"
        )
    lines += [
        "",
        "gRPC Predict end to end (scaler model, outputs [rows, 3] and [rows] float32), median ms per request:",
        "",
        "| rows | typed fields (default) | tensor_content (flag) | ratio |",
        "|---|---|---|---|",
    ]
    for row in results["end_to_end"]:
        ratio = row["field_ms"] / row["content_ms"]
        lines.append(f"| {row['rows']} | {row['field_ms']} | {row['content_ms']} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    results = {
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "repeats": args.repeats,
        "encode_decode": encode_decode(args.repeats),
        "end_to_end": end_to_end(args.repeats),
    }
    write_report(Path(args.out_dir), "tensor_encoding", results, markdown(results))


if __name__ == "__main__":
    main()
