"""`make bench`: peak memory of each data step at 1x and 10x, for images and for a table.

Images: the bench writes a 10x Fashion-MNIST itself (600,000 + 100,000 images: each original
image ten times, copy k shifted k pixels sideways so no two rows are equal) as uncompressed IDX.
Table: it writes a generated loans table as CSV, 1,000,000 rows (1x) and 10,000,000 rows (10x,
over 1 GB), and reads the 10x file with pyarrow's streaming CSV reader alone in the same run,
for ingest's throughput beside it. Each step runs on 1x and on 10x in a fresh process, which
reports its peak resident memory (VmHWM):

    ingest     IDX files -> sharded TFDS snapshot (images streamed, spills past its budget)
    validate   statistics, schema and checks of every split, one pass per split
    train      one epoch (`cache_max_mb` 256: 1x is cached, 10x streams from the shards)
    evaluate   the test split, a batch at a time
    drift      the training split's statistics (the drift check's reference)

The goals (issue 23): the 10x peak at most 1.25x the 1x peak for every step; ingest at least
0.5x pyarrow's own reading rate.

    .venv/bin/python bench/data_scale.py [--scale 10] [--data-dir /usr/share/datasets/fashion-mnist]
        [--kind images|table|both] [--table-rows 1000000] [--steps ingest --note "why"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_report  # noqa: E402

STEPS = ("ingest", "validate", "train", "evaluate", "drift")
GOAL_RATIO = 1.25
GOAL_THROUGHPUT = 0.5
PYARROW_REPEATS = 3  # reads of the file by pyarrow alone; the median is the reference
CACHE_MAX_MB = 256
TABLE_LABEL = "approved"
TABLE_BATCH_SIZE = 1024
STATES = ("AL", "AK", "AZ", "CA", "CO", "FL", "GA", "IL", "MA", "NY", "OH", "OR", "PA", "TX", "WA")


def write_scaled(source: Path, out: Path, scale: int, limit: int | None = None) -> Path:
    """Writes `scale` copies of each split of an IDX folder (copy k shifted k pixels) as uncompressed IDX."""
    from pipeline.data import idx

    out.mkdir(parents=True, exist_ok=True)
    for files in idx.find_split_files(source):
        images, labels = idx.read_split(files)
        images, labels = images[:limit, ..., 0], labels[:limit]
        prefix = "t10k" if files.split == "test" else files.split
        image_path = out / f"{prefix}-images-idx3-ubyte"
        with open(image_path, "wb") as handle:
            handle.write(idx.IMAGES_MAGIC.to_bytes(4, "big"))
            for dim in (len(images) * scale, *images.shape[1:]):
                handle.write(int(dim).to_bytes(4, "big"))
            for copy in range(scale):
                handle.write(np.roll(images, copy, axis=2).tobytes())
        idx.write_idx(out / f"{prefix}-labels-idx1-ubyte", np.tile(labels, scale), idx.LABELS_MAGIC)
    (out / "class_names.txt").write_text("\n".join(idx.KNOWN_CLASS_NAMES["fashion-mnist"]) + "\n")
    return out


def write_table(path: Path, rows: int, seed: int = 0, block_rows: int = 500_000) -> Path:
    """Writes a generated loans table as CSV (about 104 bytes a row), a block of rows at a time.

    Columns: ten decimal measurements, a whole-number age and income, a state, and `approved`
    (yes / no), which depends on three of them; one value in 50 of `debt_ratio` is missing.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa_csv.CSVWriter(path, _table_schema()) as writer:
        for start in range(0, rows, block_rows):
            size = min(block_rows, rows - start)
            columns = {f"m{i}": np.round(rng.normal(100 * i, 10 + i, size), 3) for i in range(10)}
            debt = np.round(rng.uniform(0, 1, size), 3)
            age = rng.integers(18, 90, size)
            income = rng.integers(20_000, 250_000, size)
            state = np.asarray(STATES)[rng.integers(0, len(STATES), size)]
            score = (columns["m1"] - 100) / 11 - 3 * (debt - 0.5) + 0.02 * (age - 50) + rng.normal(0, 0.5, size)
            batch = {
                **columns,
                "debt_ratio": pa.array(debt, mask=rng.random(size) < 0.02),
                "age": age,
                "income": income,
                "state": state,
                TABLE_LABEL: np.where(score > 0, "yes", "no"),
            }
            writer.write_table(pa.table(batch, schema=_table_schema()))
    return path


def _table_schema():
    import pyarrow as pa

    fields = [(f"m{i}", pa.float64()) for i in range(10)]
    fields += [("debt_ratio", pa.float64()), ("age", pa.int64()), ("income", pa.int64())]
    fields += [("state", pa.string()), (TABLE_LABEL, pa.string())]
    return pa.schema(fields)


def pyarrow_read_seconds(path: Path, repeats: int = PYARROW_REPEATS) -> float:
    """Seconds for pyarrow's streaming CSV reader alone to read the file (the pipeline's own reader
    settings): the median of `repeats` reads, as one read varies by a third from run to run here."""
    import pyarrow.csv as pa_csv

    from pipeline.data.tables import CSV_BLOCK_BYTES, MISSING_MARKERS

    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        with pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=pa_csv.ConvertOptions(null_values=list(MISSING_MARKERS), strings_can_be_null=True),
        ) as reader:
            for _ in reader:
                pass
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def step_config(data_source: str, workdir: str):
    """The pipeline config of a bench step: one epoch, `cache_max_mb` 256; tables in batches of 1024."""
    from pipeline.core.config import PipelineConfig

    table = {"label": TABLE_LABEL, "batch_size": TABLE_BATCH_SIZE} if data_source.startswith("csv:") else {}
    return PipelineConfig(
        data_source=data_source,
        workdir=workdir,
        model_base_path=f"{workdir}/models",
        run_id="scale",
        epochs=1,
        cache_max_mb=CACHE_MAX_MB,
        **table,
    ).validate()


def run_step(step: str, data_source: str, workdir: str) -> dict:
    """Runs one step in this process (the earlier steps' outputs are in `workdir`); returns its figures."""
    from pipeline.core.artifacts import read_json
    from pipeline.data.snapshot import TEST, TRAIN, Snapshot

    config = step_config(data_source, workdir)
    state_file = Path(workdir) / "bench_state.json"
    state = read_json(state_file) if state_file.exists() else {}
    started = time.perf_counter()
    rows = None
    if step == "ingest":
        from pipeline.data.ingest import ingest

        snapshot = ingest(config)
        state["snapshot"] = str(snapshot.path)
        rows = sum(snapshot.splits.values())
    snapshot = Snapshot.load(state["snapshot"])
    if step == "validate":
        from pipeline.data.data_validation import validate

        validate(config, snapshot)
        rows = sum(snapshot.splits.values())
    elif step == "train":
        from pipeline.training.train import train

        state["model_path"] = str(train(config, snapshot).model_path)
        rows = snapshot.splits[TRAIN]
    elif step == "evaluate":
        from pipeline.training.evaluate import evaluate

        evaluate(config, snapshot, state["model_path"])
        rows = snapshot.splits[TEST]
    elif step == "drift":
        from pipeline.data.data_validation import snapshot_split_statistics

        snapshot_split_statistics(snapshot, snapshot.resolve_split(config.train_split, TRAIN)).summary()
        rows = snapshot.splits[TRAIN]
    seconds = time.perf_counter() - started
    state_file.write_text(json.dumps(state))
    return {"step": step, "rows": rows, "seconds": round(seconds, 1), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def measure(data_source: str, workdir: Path, steps: tuple[str, ...] = STEPS) -> list[dict]:
    """The steps on one data source, each in a fresh process (a step needs those before it in STEPS)."""
    results = []
    for step in steps:
        output = subprocess.run(
            [sys.executable, __file__, "--step", step, "--data-source", data_source, "--workdir", str(workdir)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        ).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    return results


def markdown(results: dict) -> str:
    """The report of one kind of data: the peaks table, and for a table the throughput beside pyarrow's."""
    scale = results["scale"]
    if results.get("kind") == "table":
        what = (
            f"1x: a generated CSV table of {results['rows']['1x']:,} rows ({results['bytes']['1x'] / 1e6:,.0f} MB); "
            f"{scale}x: {results['rows']['scaled']:,} rows ({results['bytes']['scaled'] / 1e6:,.0f} MB). Training: "
            f"batches of {TABLE_BATCH_SIZE}."
        )
    else:
        what = (
            f"1x: {results['rows']['1x']:,} images (Fashion-MNIST "
            + (f"train + test, the first {results['limit']:,} of each" if results.get("limit") else "train + test")
            + f"); {scale}x: {results['rows']['scaled']:,}."
        )
    lines = [
        f"# Peak memory per step at 1x and {scale}x the data" + (" (table)" if results.get("kind") == "table" else ""),
        "",
        f"{results['machine']}, {results.get('date', '')}. {what} Each step in a fresh process; peak resident "
        f"memory (VmHWM). Training runs one epoch with `cache_max_mb` {CACHE_MAX_MB}. Goal: the "
        f"{scale}x peak at most {GOAL_RATIO}x the 1x peak.",
        "",
        f"| step | 1x peak MB | {scale}x peak MB | ratio | 1x s | {scale}x s | goal met |",
        "|---|---|---|---|---|---|---|",
    ]
    for small, big in zip(results["1x"], results["scaled"], strict=True):
        ratio = big["peak_rss_mb"] / small["peak_rss_mb"]
        lines.append(
            f"| {small['step']} | {small['peak_rss_mb']:,.0f} | {big['peak_rss_mb']:,.0f} | {ratio:.2f} "
            f"| {small['seconds']} | {big['seconds']} | {'yes' if ratio <= GOAL_RATIO else 'no'} |"
        )
    if "throughput" in results:
        lines += ["", *throughput_lines(results["throughput"])]
    for note in results.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def merged(earlier: dict, rerun: dict, steps: tuple[str, ...], note: str) -> dict:
    """An earlier report with the figures of `steps` replaced by a rerun's, and a note saying so."""
    results = dict(earlier)
    for scale in ("1x", "scaled"):
        new = {entry["step"]: entry for entry in rerun[scale]}
        results[scale] = [new.get(entry["step"], entry) for entry in earlier[scale]]
    if "throughput" in rerun:
        results["throughput"] = rerun["throughput"]
    steps_text = ", ".join(steps)
    results["notes"] = [*earlier.get("notes", []), f"Rerun on {rerun['date']}: {steps_text}. {note}".strip()]
    return results


def throughput(path: Path, rows: int, ingest_seconds: float, pyarrow_seconds: float) -> dict:
    """Ingest's reading rate beside pyarrow's on the same file."""
    size = path.stat().st_size
    return {
        "rows": rows,
        "megabytes": round(size / 1e6, 1),
        "ingest_rows_per_s": round(rows / ingest_seconds),
        "ingest_mb_per_s": round(size / 1e6 / ingest_seconds, 2),
        "pyarrow_rows_per_s": round(rows / pyarrow_seconds),
        "pyarrow_mb_per_s": round(size / 1e6 / pyarrow_seconds, 2),
        "ratio": round(pyarrow_seconds / ingest_seconds, 4),
    }


def throughput_lines(figures: dict) -> list[str]:
    return [
        f"Ingest throughput on the {figures['rows']:,}-row file ({figures['megabytes']:,} MB), beside pyarrow's "
        f"streaming CSV reader alone on the same file in the same run (the median of {PYARROW_REPEATS} reads). "
        f"Goal: at least {GOAL_THROUGHPUT}x.",
        "",
        "| reader | rows/s | MB/s |",
        "|---|---|---|",
        f"| ingest (read, infer, divide, fingerprint, write shards) | {figures['ingest_rows_per_s']:,} "
        f"| {figures['ingest_mb_per_s']} |",
        f"| pyarrow alone | {figures['pyarrow_rows_per_s']:,} | {figures['pyarrow_mb_per_s']} |",
        f"| ratio | {figures['ratio']}x | goal met: {'yes' if figures['ratio'] >= GOAL_THROUGHPUT else 'no'} |",
    ]


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}"


def images_figures(args, scratch: Path) -> dict:
    one = write_scaled(Path(args.data_dir), scratch / "1x", 1, args.limit)
    scaled = write_scaled(Path(args.data_dir), scratch / f"{args.scale}x", args.scale, args.limit)
    small = measure(f"idx:{one}", scratch / "work-1x", args.steps)
    big = measure(f"idx:{scaled}", scratch / f"work-{args.scale}x", args.steps)
    return {
        "kind": "images",
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "scale": args.scale,
        "limit": args.limit,
        "rows": {"1x": small[0]["rows"], "scaled": big[0]["rows"]},
        "1x": small,
        "scaled": big,
    }


def table_figures(args, scratch: Path) -> dict:
    one = write_table(scratch / "1x" / "loans.csv", args.table_rows)
    scaled = write_table(scratch / f"{args.scale}x" / "loans.csv", args.table_rows * args.scale)
    small = measure(f"csv:{one}", scratch / "work-1x", args.steps)
    big = measure(f"csv:{scaled}", scratch / f"work-{args.scale}x", args.steps)
    pyarrow_seconds = pyarrow_read_seconds(scaled)
    return {
        "kind": "table",
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "scale": args.scale,
        "rows": {"1x": small[0]["rows"], "scaled": big[0]["rows"]},
        "bytes": {"1x": one.stat().st_size, "scaled": scaled.stat().st_size},
        "1x": small,
        "scaled": big,
        "throughput": throughput(scaled, args.table_rows * args.scale, big[0]["seconds"], pyarrow_seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--kind", choices=("images", "table", "both"), default="both")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--limit", type=int, default=None, help="Images per split taken from the source (smoke runs).")
    parser.add_argument("--table-rows", type=int, default=1_000_000, help="Rows of the 1x table.")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--steps",
        type=lambda text: tuple(text.split(",")),
        default=STEPS,
        help="Rerun only these steps (comma-separated, from the first: 'ingest', 'ingest,validate'); "
        "the report keeps the other steps' earlier figures and notes the rerun.",
    )
    parser.add_argument("--note", default="", help="Why the steps were rerun (goes into the report).")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--data-source", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.data_source, args.workdir)))
        return
    for kind, figures, report in (("images", images_figures, "data_scale"), ("table", table_figures, "table_scale")):
        if args.kind in (kind, "both"):
            with tempfile.TemporaryDirectory(prefix=f"data-scale-{kind}-") as scratch:
                results = figures(args, Path(scratch))
            if args.steps != STEPS:
                earlier = json.loads((Path(args.out_dir) / f"{report}.json").read_text())
                results = merged(earlier, results, args.steps, args.note)
            write_report(Path(args.out_dir), report, results, markdown(results))


if __name__ == "__main__":
    main()
