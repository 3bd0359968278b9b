"""Drift benchmark: the serving-time drift check on a million logged rows, beside the training statistics pass.

A table model (the generated loans table of the tests: two numbers and a category) is trained
briefly, exported and labelled stable. A million rows of requests are written as the serving
server writes its request logs (`PredictionLog` TFRecord files, 1,000 rows per logged call,
the model's real answers for a sample of rows, repeated); a third of them drifted (incomes
tripled, a new state). Then, each in a fresh process so the peak memory is its own:

- `check_drift`: reads the logs, computes every feature's and the predictions' distance from
  the training split's statistics, writes the report and the plot;
- the training statistics pass: `split_statistics` over a million in-memory rows of the
  same table (what the validate stage computes per split).

Reported: wall seconds, rows/s and peak RSS of each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_report  # noqa: E402

ROWS_PER_CALL = 1000


def prepare(folder: Path, rows: int) -> dict:
    """Trains and publishes the stable table model; writes `rows` logged request rows."""
    from pipeline.core.config import PipelineConfig
    from pipeline.core.model_repo import predict_saved_model
    from pipeline.data.ingest import ingest
    from pipeline.release.promotion import ServingState, apply_state
    from pipeline.training.evaluate import evaluate
    from pipeline.training.export import export
    from pipeline.training.train import train

    source = loans_table(folder / "data" / "loans.csv", 5000)
    config = PipelineConfig(
        data_source=f"csv:{source}",
        label="approved?",
        workdir=str(folder / "work"),
        model_base_path=str(folder / "models"),
        serving_config_file=str(folder / "serving" / "models.config"),
        serving_grpc_target=None,
        request_log_dir=str(folder / "request_logs"),
        model_name="loans",
        epochs=2,
        run_id="bench",
        min_accuracy=None,
        drift_min_requests=100,
    ).validate()
    snapshot = ingest(config)
    trained = train(config, snapshot)
    evaluated = evaluate(config, snapshot, trained.model_path)
    version = export(config, snapshot, trained.model_path, evaluated.evaluation_path).version
    apply_state(config, ServingState(stable=version, canary=version))
    sample = snapshot.request_rows("train", ROWS_PER_CALL)
    drifted = {key: values.copy() for key, values in sample.items()}
    drifted["annual_income"] = drifted["annual_income"] * 3
    drifted["state"][::3] = "ZZ"
    calls = [(sample, predict_saved_model(config.model_dir / str(version), sample))]
    calls.append((drifted, predict_saved_model(config.model_dir / str(version), drifted)))
    write_logs(Path(config.request_log_dir), config.model_name, version, calls, rows)
    return config.to_dict()


def loans_table(path: Path, rows: int) -> Path:
    """A loans table: approval from income, debt ratio and state (some debt ratios missing), as CSV."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(1)
    income = rng.lognormal(10.5, 0.5, rows)
    debt = rng.uniform(0, 1, rows)
    state = rng.choice(["CA", "NY", "TX", "WA"], rows)
    score = np.log(income) - 10.5 - 2.5 * (debt - 0.5) + 0.6 * (state == "WA") + rng.normal(0, 0.3, rows)
    debt_with_gaps = pa.array(np.round(debt, 3), mask=np.arange(rows) % 19 == 3)
    table = pa.table(
        {
            "annual income": np.round(income, 2),
            "debt ratio": debt_with_gaps,
            "state": state,
            "approved?": np.where(score > 0, "yes", "no"),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pa_csv.write_csv(table, path)
    return path


def write_logs(folder: Path, model: str, version: int, calls: list, rows: int) -> None:
    """Writes `rows` rows of logged Predict calls as the serving server does (one file per 100 calls)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving import tensors

    folder.mkdir(parents=True, exist_ok=True)
    protos = []
    for inputs, outputs in calls:
        entry = prediction_log_pb2.PredictionLog()
        entry.log_metadata.model_spec.name = model
        entry.log_metadata.model_spec.version.value = version
        entry.log_metadata.timestamp_secs = int(time.time())
        request, response = entry.predict_log.request, entry.predict_log.response
        request.model_spec.name = model
        for key, array in inputs.items():
            request.inputs[key].CopyFrom(tensors.to_tensor_proto(_request_array(array)))
        for key, array in outputs.items():
            response.outputs[key].CopyFrom(tensors.to_tensor_proto(array))
        protos.append(entry.SerializeToString())
    count = rows // ROWS_PER_CALL
    for start in range(0, count, 100):
        with tf.io.TFRecordWriter(str(folder / f"{model}.{start:08d}-bench-0.tfrecord")) as writer:
            for call in range(start, min(start + 100, count)):
                writer.write(protos[0] if call % 3 else protos[1])  # a third of the calls drifted


def _request_array(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        encoded = np.empty(len(values), dtype=object)
        encoded[:] = [v.encode() for v in values]
        return encoded
    return values


def measure(what: str, config: dict, rows: int) -> dict:
    """Runs one measured part in this process (called in a fresh process by `main`)."""
    import tensorflow as tf  # noqa: F401  (imported before the clock and the memory baseline start)

    from pipeline.core.config import PipelineConfig
    from pipeline.data.data_validation import split_statistics
    from pipeline.data.snapshot import Snapshot
    from pipeline.release.drift import check_drift
    from pipeline.release.promotion import stable_model_card

    config = PipelineConfig(**config).validate()
    sampler = RssSampler()
    started = time.perf_counter()
    if what == "drift_check":
        result = check_drift(config)
        extra = {"drifted": result.drifted, "requests": result.requests, "summary": result.summary[:300]}
    else:
        card = stable_model_card(config)
        snapshot = Snapshot.load(config.workdir_path / "snapshots" / card["data"]["snapshot"])
        columns, labels = snapshot.split_columns("train")  # read, as the validate stage reads a split
        repeat = -(-rows // len(labels))  # the training rows, repeated to as many rows as the logs hold
        columns = {key: np.concatenate([values] * repeat)[:rows] for key, values in columns.items()}
        labels = np.concatenate([labels] * repeat)[:rows]
        statistics = split_statistics(snapshot.problem, columns, labels)
        extra = {"rows": statistics["count"]}
    seconds = time.perf_counter() - started
    before_mb, peak_mb = sampler.stop()
    return {
        "seconds": round(seconds, 2),
        "rows_per_second": round(rows / seconds),
        "peak_rss_mb": round(peak_mb),
        "rss_before_mb": round(before_mb),  # the process with TensorFlow and the pipeline imported
        **extra,
    }


class RssSampler:
    """The process's resident memory before a step and its peak during it (sampled every 5 ms)."""

    def __init__(self):
        import threading

        import psutil

        self._process = psutil.Process()
        self.before = self.peak = self._process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> tuple[float, float]:
        """(RSS before, peak RSS) in MB."""
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        return self.before / 2**20, self.peak / 2**20


def markdown(results: dict) -> str:
    lines = [
        "| step | rows | seconds | rows/s | peak RSS MB | of it before the step (TensorFlow imported) |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("drift_check", "training_statistics"):
        part = results[name]
        lines.append(
            f"| {name.replace('_', ' ')} | {results['rows']:,} | {part['seconds']} | {part['rows_per_second']:,} | "
            f"{part['peak_rss_mb']:,} | {part['rss_before_mb']:,} |"
        )
    lines.append("")
    lines.append(f"Drift check: {results['drift_check']['summary']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: run one part in this process
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, json.loads(Path(args.config).read_text()), args.rows)))
        return
    folder = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(prepare(folder, args.rows)))
    results = {"rows": args.rows, "date": time.strftime("%Y-%m-%d")}
    for what in ("drift_check", "training_statistics"):
        command = [sys.executable, __file__, f"--measure={what}", f"--config={config_path}", f"--rows={args.rows}"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        results[what] = json.loads(done.stdout.strip().splitlines()[-1])
        print(what, results[what], flush=True)
    write_report(args.out_dir, "drift", results, markdown(results))


if __name__ == "__main__":
    main()
