"""Benchmark: training speed and model quality, and the input pipeline against its compute limit.

1. Accuracy against wall time, per preset (`pipeline/presets/*.yaml`): the real ingest and
   train stages on the full data, each epoch's wall time and validation accuracy, then the
   test accuracy of the final model (the test split is touched once, by the evaluate stage).
   The figure is the train stage's own `seconds`, as the run manifest records it.
2. Input pipeline: training steps per second of the same compiled model, same batch size,
   fed by the project's real tf.data pipeline (decoded, cached, shuffled, batched, prefetched)
   and by batches already in memory, alternated in one process; medians over repeats with
   their spread, and their ratio.

Writes JSON, a Markdown table and PNG plots to bench/results/, with the machine it ran on.

    .venv/bin/python bench/training_speed.py [--presets default,quality] [--repeats 5] [--steps 150]
        [--data-source idx:/usr/share/datasets/fashion-mnist] [--epochs N (all presets; smoke runs)]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_report  # noqa: E402
from pipeline.core.config import DEFAULT_DATA_SOURCE, load_config  # noqa: E402

TARGETS = {"default": (0.93, 300.0), "quality": (0.94, 600.0)}  # test accuracy within train seconds


def machine() -> dict:
    """CPU model, cores and GPUs of this machine."""
    import tensorflow as tf

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    gpus = [
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": gpus, "tensorflow": tf.__version__}


def _config(preset: str, workdir: Path, data_source: str, overrides: dict):
    return load_config(
        None,
        {
            "data_source": data_source,
            "workdir": str(workdir / "work"),
            "model_base_path": str(workdir / "models"),
            "run_id": f"bench-{preset}",
            **overrides,
        },
        preset=preset,
    )


def run_preset(preset: str, workdir: Path, data_source: str, overrides: dict) -> dict:
    """Trains and evaluates one preset with the real stages; returns its curve and final figures."""
    from pipeline.data.ingest import ingest
    from pipeline.training.evaluate import evaluate
    from pipeline.training.train import train

    config = _config(preset, workdir, data_source, overrides)
    snapshot = ingest(config)
    trained = train(config, snapshot)
    history = json.loads(trained.history_path.read_text())
    evaluation = evaluate(config, snapshot, trained.model_path)
    elapsed = 0.0
    curve = []
    for epoch, seconds in enumerate(history["epoch_seconds"]):
        elapsed += seconds
        curve.append(
            {"epoch": epoch + 1, "seconds": round(elapsed, 1), "val_accuracy": round(history["val_accuracy"][epoch], 4)}
        )
    target_accuracy, target_seconds = TARGETS.get(preset, (None, None))
    return {
        "preset": preset,
        "config": {
            k: getattr(config, k)
            for k in (
                "model",
                "epochs",
                "batch_size",
                "learning_rate",
                "dropout",
                "augment",
                "augment_shift",
                "test_time_flip",
            )
        },
        "train_seconds": trained.seconds,
        "epochs_run": trained.epochs_run,
        "median_epoch_seconds": round(statistics.median(history["epoch_seconds"]), 2),
        "test_accuracy": round(evaluation.headline["accuracy"], 4),
        "target": {"test_accuracy": target_accuracy, "train_seconds": target_seconds},
        "curve": curve,
    }


def _steps_per_second(model, dataset, steps: int) -> float:
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.perf_counter() - started)


def input_pipeline(workdir: Path, data_source: str, overrides: dict, steps: int, repeats: int) -> dict:
    """Steps/s of one model fed by the real pipeline and by in-memory batches, alternated."""
    import numpy as np
    import tensorflow as tf

    from pipeline.data.ingest import ingest
    from pipeline.data.preprocess import PREFETCH_BATCHES, without_autotuning
    from pipeline.training.hardware import plan_hardware
    from pipeline.training.train import build_compiled_model, prepare_data

    config = _config("default", workdir, data_source, overrides)
    hardware = plan_hardware(config)
    snapshot = ingest(config)
    data = prepare_data(config, snapshot)
    with hardware.strategy.scope():
        _, model, _ = build_compiled_model(config, snapshot, data, hardware)
    real = data.train.repeat()
    for _ in data.train:  # One pass fills the pipeline's cache, as the first epoch of a run does.
        pass
    batches = list(data.train.take(steps))
    images = np.stack([b[0]["images"].numpy() for b in batches if len(b[1]) == config.batch_size])
    labels = np.stack([b[1].numpy() for b in batches if len(b[1]) == config.batch_size])
    # Whole batches, no work per example, and the autotuner off as in the real pipeline (on 2 cores
    # its threads cost the training step about half its speed, whatever the data source).
    in_memory = tf.data.Dataset.from_tensor_slices(({"images": images}, labels)).repeat()
    in_memory = in_memory.prefetch(PREFETCH_BATCHES).with_options(without_autotuning())
    _steps_per_second(model, real, min(steps, 20))  # Traces the train step once, off the clock.
    figures: dict[str, list[float]] = {"tf_data": [], "in_memory": []}
    for repeat in range(repeats):
        order = ("tf_data", "in_memory") if repeat % 2 == 0 else ("in_memory", "tf_data")
        for name in order:
            figures[name].append(_steps_per_second(model, real if name == "tf_data" else in_memory, steps))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    ratios = [a / b for a, b in zip(figures["tf_data"], figures["in_memory"], strict=True)]
    return {
        "batch_size": config.batch_size,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "steps_per_s": {
            name: {"median": round(medians[name], 2), "min": round(min(v), 2), "max": round(max(v), 2)}
            for name, v in figures.items()
        },
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
    }


def markdown(results: dict) -> str:
    """The report as Markdown tables."""
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, GPUs: {', '.join(m['gpus']) or 'none'}; "
        f"TensorFlow {m['tensorflow']}; {results['date']}.",
        "",
        "| preset | model | epochs run | median s/epoch | train stage s | test accuracy | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["presets"]:
        target = run["target"]
        goal = (
            f"{target['test_accuracy']:.0%} in {target['train_seconds'] / 60:.0f} min"
            if target["test_accuracy"]
            else "-"
        )
        met = ""
        if target["test_accuracy"]:
            ok = run["test_accuracy"] >= target["test_accuracy"] and run["train_seconds"] <= target["train_seconds"]
            met = " (met)" if ok else " (NOT met)"
        lines.append(
            f"| {run['preset']} | {run['config']['model']} | {run['epochs_run']} | {run['median_epoch_seconds']} "
            f"| {run['train_seconds']} | {run['test_accuracy']:.4f} | {goal}{met} |"
        )
    pipe = results["input_pipeline"]
    lines += [
        "",
        f"Input pipeline, batch {pipe['batch_size']}, {pipe['steps_per_repeat']} steps x {pipe['repeats']} repeats "
        "(median, min-max):",
        "",
        "| fed by | steps/s |",
        "|---|---|",
    ]
    for name, label in (("tf_data", "real tf.data pipeline"), ("in_memory", "batches in memory")):
        s = pipe["steps_per_s"][name]
        lines.append(f"| {label} | {s['median']} ({s['min']}-{s['max']}) |")
    lines += ["", f"Ratio real/in-memory: {pipe['ratio_median']} (per repeat {pipe['ratio_min']}-{pipe['ratio_max']})."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Validation accuracy against wall time per preset, and steps/s per input."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for run in results["presets"]:
        xs = [point["seconds"] / 60 for point in run["curve"]]
        line = curves.plot(xs, [p["val_accuracy"] for p in run["curve"]], marker="o", label=f"{run['preset']} (val)")
        color = line[0].get_color()
        curves.scatter([run["train_seconds"] / 60], [run["test_accuracy"]], marker="*", s=160, color=color)
    for accuracy, seconds in TARGETS.values():
        curves.axhline(accuracy, color="grey", linestyle=":", linewidth=1)
        curves.axvline(seconds / 60, color="grey", linestyle=":", linewidth=1)
    curves.set_xlabel("training wall time (min)")
    curves.set_ylabel("accuracy (star: test, final model)")
    curves.set_title("accuracy against training time")
    curves.grid(alpha=0.3)
    curves.legend()
    pipe = results["input_pipeline"]["steps_per_s"]
    names = ["tf_data", "in_memory"]
    bars.bar(
        ["real pipeline", "in memory"],
        [pipe[n]["median"] for n in names],
        yerr=[[pipe[n]["median"] - pipe[n]["min"] for n in names], [pipe[n]["max"] - pipe[n]["median"] for n in names]],
        capsize=6,
    )
    bars.set_ylabel("training steps/s")
    bars.set_title(f"input pipeline (ratio {results['input_pipeline']['ratio_median']})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--presets", default="default,quality")
    parser.add_argument("--data-source", default=DEFAULT_DATA_SOURCE)
    parser.add_argument("--epochs", type=int, help="override every preset's epochs (smoke runs)")
    parser.add_argument("--steps", type=int, default=150, help="training steps per input-pipeline measurement")
    parser.add_argument("--repeats", type=int, default=5, help="input-pipeline measurements per input")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    overrides = {"epochs": args.epochs} if args.epochs else {}
    scratch = Path(tempfile.mkdtemp(prefix="training-speed-"))
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "presets": []}
    print("machine:", results["machine"], flush=True)
    results["input_pipeline"] = input_pipeline(
        scratch / "pipeline", args.data_source, overrides, args.steps, args.repeats
    )
    print("input pipeline:", results["input_pipeline"], flush=True)
    for preset in args.presets.split(","):
        results["presets"].append(run_preset(preset, scratch / preset, args.data_source, overrides))
        print(f"{preset}:", {k: v for k, v in results["presets"][-1].items() if k != "curve"}, flush=True)
    write_report(args.out_dir, "training_speed", results, markdown(results), plot)


if __name__ == "__main__":
    main()
