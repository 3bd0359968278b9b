"""`make bench`: peak memory of each data step at 1x and 10x Fashion-MNIST.

The bench writes a 10x Fashion-MNIST itself (600,000 + 100,000 images: each original image ten
times, copy k shifted k pixels sideways so no two rows are equal) as uncompressed IDX files, then
runs each step on 1x and on 10x in a fresh process and reads that process's peak resident memory
(VmHWM):

    ingest     IDX files -> sharded TFDS snapshot (images streamed, spills past its budget)
    validate   statistics, schema and checks of every split, one pass per split
    train      one epoch (`cache_max_mb` 256: 1x is cached, 10x streams from the shards)
    evaluate   the test split, a batch at a time
    drift      the training split's statistics (the drift check's reference)

The goal (issue 23): the 10x peak at most 1.25x the 1x peak for every step.

    .venv/bin/python bench/data_scale.py [--scale 10] [--data-dir /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
CACHE_MAX_MB = 256


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


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_step(step: str, data_dir: str, workdir: str) -> dict:
    """Runs one step in this process (the earlier steps' outputs are in `workdir`); returns its figures."""
    from pipeline.core.artifacts import read_json
    from pipeline.core.config import PipelineConfig
    from pipeline.data.snapshot import TEST, TRAIN, Snapshot

    config = PipelineConfig(
        data_source=f"idx:{data_dir}",
        workdir=workdir,
        model_base_path=f"{workdir}/models",
        run_id="scale",
        epochs=1,
        cache_max_mb=CACHE_MAX_MB,
    ).validate()
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


def measure(data_dir: Path, workdir: Path) -> list[dict]:
    """Every step on one data folder, each in a fresh process."""
    results = []
    for step in STEPS:
        output = subprocess.run(
            [sys.executable, __file__, "--step", step, "--data-dir", str(data_dir), "--workdir", str(workdir)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        ).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    return results


def markdown(results: dict) -> str:
    lines = [
        f"# Peak memory per step at 1x and {results['scale']}x the data",
        "",
        f"{results['machine']}, {results.get('date', '')}. 1x: {results['rows']['1x']:,} images (Fashion-MNIST "
        + (f"train + test, the first {results['limit']:,} of each" if results.get("limit") else "train + test")
        + f"); {results['scale']}x: {results['rows']['scaled']:,}. Each step in a fresh process; peak resident "
        f"memory (VmHWM). Training runs one epoch with `cache_max_mb` {CACHE_MAX_MB}. Goal: the "
        f"{results['scale']}x peak at most {GOAL_RATIO}x the 1x peak.",
        "",
        f"| step | 1x peak MB | {results['scale']}x peak MB | ratio | 1x s | {results['scale']}x s | goal met |",
        "|---|---|---|---|---|---|---|",
    ]
    for small, big in zip(results["1x"], results["scaled"], strict=True):
        ratio = big["peak_rss_mb"] / small["peak_rss_mb"]
        lines.append(
            f"| {small['step']} | {small['peak_rss_mb']:,.0f} | {big['peak_rss_mb']:,.0f} | {ratio:.2f} "
            f"| {small['seconds']} | {big['seconds']} | {'yes' if ratio <= GOAL_RATIO else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--limit", type=int, default=None, help="Images per split taken from the source (smoke runs).")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.data_dir, args.workdir)))
        return
    with tempfile.TemporaryDirectory(prefix="data-scale-") as scratch:
        scratch = Path(scratch)
        one = write_scaled(Path(args.data_dir), scratch / "1x", 1, args.limit)
        scaled = write_scaled(Path(args.data_dir), scratch / f"{args.scale}x", args.scale, args.limit)
        small = measure(one, scratch / "work-1x")
        big = measure(scaled, scratch / f"work-{args.scale}x")
    results = {
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "scale": args.scale,
        "limit": args.limit,
        "rows": {"1x": small[0]["rows"], "scaled": big[0]["rows"]},
        "1x": small,
        "scaled": big,
    }
    write_report(Path(args.out_dir), "data_scale", results, markdown(results))


if __name__ == "__main__":
    main()
