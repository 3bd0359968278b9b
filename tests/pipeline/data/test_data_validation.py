import json

import numpy as np
import pytest

from pipeline.core.errors import DataValidationError
from pipeline.core.problem import image_classification
from pipeline.data.data_validation import split_statistics, validate
from pipeline.data.idx import write_idx_folder
from pipeline.data.ingest import ingest


def _report(config):
    return json.loads((config.workdir_path / "runs" / config.run_id / "validate" / "anomalies.json").read_text())


def test_split_statistics():
    images = np.array([[[[0]], [[255]]], [[[255]], [[255]]]], np.uint8)  # 2 images of 2x1x1
    problem = image_classification((2, 1, 1), ["a", "b", "c"])
    stats = split_statistics(problem, {"images": images}, np.array([1, 1]))
    assert stats["count"] == 2
    assert stats["label_histogram"] == [0, 2, 0]
    assert stats["image_shape"] == [2, 1, 1] and stats["dtype"] == "uint8"
    assert stats["pixel_mean"] == pytest.approx(191.25)
    assert stats["pixel_std"] == pytest.approx(np.std([0, 255, 255, 255]))


def test_first_run_infers_schema_and_later_identical_data_passes(make_config):
    config = make_config()
    snapshot = ingest(config)
    first = validate(config, snapshot)
    schema = json.loads(first.schema_path.read_text())
    assert schema["image_shape"] == [28, 28, 1] and schema["class_names"][1] == "Trouser"
    assert schema["problem"]["features"][0]["key"] == "images" and schema["problem"]["task"] == "multiclass"
    assert schema["splits"] == ["test", "train"]
    statistics = json.loads(first.statistics_path.read_text())
    assert statistics["splits"]["train"]["count"] == 2000
    assert sum(statistics["splits"]["test"]["label_histogram"]) == 500
    assert 60 < statistics["splits"]["train"]["pixel_mean"] < 90  # Fashion-MNIST's is ~72.9.
    assert first.severe is False and _report(config)["severe"] is False

    second = validate(config.replace(run_id="again"), snapshot)
    report = _report(config.replace(run_id="again"))
    assert report["previous_snapshot"] == snapshot.path.name
    assert {c["check"] for c in report["checks"]} >= {
        "image_shape",
        "class_names",
        "label_distribution_shift",
        "pixel_mean_drift",
        "split_size_change",
    }
    assert second.anomalies == 0 and report["anomalies"] == []


def test_label_shift_and_size_change_are_severe(make_config, tmp_path, fashion_subset):
    config = make_config()
    baseline = ingest(config)
    validate(config, baseline)
    reference = (config.workdir_path / "validation" / "fashion-mnist" / "latest_statistics.json").read_text()

    images, labels = fashion_subset["train"]
    keep = labels < 3  # Only three classes left: each ~33% instead of ~10%.
    shifted_dir = write_idx_folder(
        tmp_path / "shifted" / "fashion-mnist",
        {"train": (images[keep], labels[keep]), "t10k": fashion_subset["t10k"]},
    )
    shifted_config = config.replace(data_source=f"idx:{shifted_dir}", run_id="shifted")
    shifted = ingest(shifted_config)
    with pytest.raises(DataValidationError) as caught:
        validate(shifted_config, shifted)
    message = str(caught.value)
    assert "label_distribution_shift [train]: label distribution L-inf distance 0.2" in message
    assert "(threshold 0.1)" in message
    assert "split_size_change [train]" in message and "vs 2000" in message
    report = _report(shifted_config)
    assert report["severe"] is True
    assert {a["check"] for a in report["anomalies"]} >= {"label_distribution_shift", "split_size_change"}
    # A failed snapshot does not become the new reference.
    assert (config.workdir_path / "validation" / "fashion-mnist" / "latest_statistics.json").read_text() == reference


def test_pixel_drift_is_severe_and_update_schema_accepts_it(make_config, tmp_path, fashion_subset):
    config = make_config()
    validate(config, ingest(config))
    inverted = {prefix: (255 - images, labels) for prefix, (images, labels) in fashion_subset.items()}
    drifted_dir = write_idx_folder(tmp_path / "inverted" / "fashion-mnist", inverted)
    drifted_config = config.replace(data_source=f"idx:{drifted_dir}", run_id="drifted")
    drifted = ingest(drifted_config)
    with pytest.raises(DataValidationError, match=r"pixel_mean_drift \[test\]: pixel mean 1[0-9]{2}\.\d+ vs"):
        validate(drifted_config, drifted)
    accepted = validate(drifted_config.replace(update_schema=True), drifted)
    assert accepted.severe is False and accepted.anomalies >= 2
    assert all(a["severity"] == "warning" for a in _report(drifted_config)["anomalies"])


def test_schema_mismatch_is_severe(make_config):
    config = make_config()
    validate(config, ingest(config))
    renamed = config.replace(class_names=[f"class{i}" for i in range(10)], run_id="renamed")
    with pytest.raises(DataValidationError, match=r"class_names: class names \['class0'"):
        validate(renamed, ingest(renamed))


def _loans(tmp_path, name, change=None, rows=2000):
    from tests.support import table_rows, write_table

    table = table_rows("binary", rows, seed=3)
    if change:
        change(table)
    return write_table(tmp_path / name / "loans.csv", table)


def _flagged(config):
    return {(a["check"], a["feature"]) for a in _report(config)["anomalies"] if a["feature"]}


def test_per_feature_checks_flag_exactly_the_planted_drift(make_config, tmp_path):
    def plant(table):
        table["annual income"] = [v * 3 for v in table["annual income"]]  # one numeric shifted
        table["state"] = ["ZZ" if i % 3 == 0 else v for i, v in enumerate(table["state"])]  # a new category

    config = make_config(data_source=f"csv:{_loans(tmp_path, 'v1')}", label="approved?", run_id="first")
    first = validate(config, ingest(config))
    schema = json.loads(first.schema_path.read_text())
    assert schema["features"]["state"] == {"vocabulary": ["CA", "NY", "TX", "WA"], "missing_rate": 0.0}
    assert set(schema["features"]["debt_ratio"]) == {"min", "max", "missing_rate"}

    unchanged = config.replace(data_source=f"csv:{_loans(tmp_path, 'v2')}", run_id="unchanged")
    assert validate(unchanged, ingest(unchanged)).anomalies == 0  # the same table again: nothing flagged
    report = _report(unchanged)
    assert {c["check"] for c in report["checks"]} >= {
        "missing_values",
        "out_of_range",
        "unseen_categories",
        "feature_drift",
    }
    assert set(report["features"]) == {"annual_income", "debt_ratio", "state"}

    drifted = config.replace(data_source=f"csv:{_loans(tmp_path, 'v3', plant)}", run_id="drifted")
    with pytest.raises(DataValidationError) as caught:
        validate(drifted, ingest(drifted))
    assert {feature for _, feature in _flagged(drifted)} == {"annual_income", "state"}  # exactly those
    assert {("feature_drift", "annual_income"), ("feature_drift", "state"), ("unseen_categories", "state")} <= _flagged(
        drifted
    )
    message = str(caught.value)
    assert "feature_drift [train]: annual_income: jensen shannon" in message
    assert "unseen_categories [train]: state: " in message and "not in the schema's vocabulary (e.g. ['ZZ'])" in message
    by_feature = _report(drifted)["features"]
    assert by_feature["debt_ratio"]["anomalies"] == [] and by_feature["state"]["checks"] >= 6


def test_missing_values_beyond_the_schema_and_per_feature_thresholds(make_config, tmp_path):
    def gaps(table):
        table["debt ratio"] = [None if i % 2 else v for i, v in enumerate(table["debt ratio"])]

    config = make_config(data_source=f"csv:{_loans(tmp_path, 'v1')}", label="approved?", run_id="first")
    validate(config, ingest(config))
    holey = config.replace(data_source=f"csv:{_loans(tmp_path, 'holes', gaps)}", run_id="holes")
    with pytest.raises(DataValidationError, match=r"missing_values \[train\]: debt_ratio: 5\d\.\d+% missing vs schema"):
        validate(holey, ingest(holey))
    # The missing values also move debt_ratio's histogram: a lenient threshold for it alone lets that through.
    lenient = holey.replace(
        run_id="lenient", feature_drift_thresholds={"debt ratio": 1.0}, max_missing_rate_increase=0.6
    )
    assert validate(lenient, ingest(lenient)).severe is False
    with pytest.raises(
        Exception, match=r"feature_drift_thresholds names features the data does not have: \['colour'\]"
    ):
        validate(holey.replace(feature_drift_thresholds={"colour": 0.2}), ingest(holey))


def test_checks_of_small_splits_are_warnings(make_config, tmp_path):
    def plant(table):
        table["annual income"] = [v * 3 for v in table["annual income"]]

    config = make_config(data_source=f"csv:{_loans(tmp_path, 'v1', rows=300)}", label="approved?", run_id="first")
    validate(config, ingest(config))
    small = config.replace(data_source=f"csv:{_loans(tmp_path, 'v2', plant, rows=300)}", run_id="small")
    with pytest.raises(DataValidationError) as caught:  # the 240-row train split is judged...
        validate(small, ingest(small))
    assert "feature_drift [train]: annual_income" in str(caught.value)
    validation = [a for a in _report(small)["anomalies"] if a["split"] == "validation" and a["feature"]]
    assert validation and all(a["severity"] == "warning" for a in validation)  # ...its 30-row splits are not
    drift = next(a for a in validation if a["check"] == "feature_drift")
    assert drift["message"].endswith("[a warning: 30 rows < min_rows_to_judge 100]")


def _without_times(document):
    return {k: v for k, v in document.items() if k not in ("computed_at", "checked_at", "inferred_at")}


@pytest.mark.parametrize("task", ["multiclass", "text"])
def test_parts_measured_apart_and_merged_give_the_single_process_result(tmp_path, task):
    """What mapped tasks do (one part file per shard, then a reduce) equals validating in one process."""
    from pipeline.core.config import PipelineConfig
    from pipeline.data.data_validation import validation_parts, write_part
    from tests.support import TABLE_LABELS, table_rows, write_table

    source = write_table(tmp_path / "table.csv", table_rows(task, rows=900))

    def config(run_id):
        return PipelineConfig(
            data_source=f"csv:{source}",
            label=TABLE_LABELS[task],
            workdir=str(tmp_path / "work"),
            run_id=run_id,
            snapshot_shards=3,
        ).validate()

    first = config("first")
    snapshot = ingest(first)
    key = snapshot.problem.features[0].key
    whole = [features[key] for features, _ in snapshot.iter_batches("train", batch_size=64)]
    by_file = [f[key] for i in range(3) for f, _ in snapshot.iter_batches("train", batch_size=64, shard=(i, 3))]
    np.testing.assert_array_equal(np.concatenate(whole), np.concatenate(by_file))  # the files in turn, in order
    parts = validation_parts(snapshot)
    assert [(p.split, p.shard) for p in parts] == [(s, i) for s in ("test", "train", "validation") for i in range(3)]
    validate(first, snapshot)  # stores the schema and the reference: the next runs check against both

    single, mapped = config("single"), config("mapped")
    one = validate(single, snapshot)
    files = [write_part(mapped, snapshot, part) for part in reversed(parts)]  # in any order
    assert write_part(mapped, snapshot, parts[0]) in files  # a retried part reuses its file
    merged = validate(mapped, snapshot, part_files=files)

    for name in ("statistics_path", "report_path"):
        a, b = (json.loads(getattr(result, name).read_text()) for result in (one, merged))
        assert _without_times(a) == _without_times(b)
    report = json.loads(one.report_path.read_text())
    assert {c["check"] for c in report["checks"]} >= {"missing_values", "feature_drift"}

    with pytest.raises(DataValidationError, match="is missing: validate again"):
        validate(config("incomplete"), snapshot, part_files=files[1:])


def test_a_worker_killed_while_measuring_parts_is_retried_and_the_result_equals_a_clean_run(tmp_path):
    import signal
    import subprocess
    import sys

    from pipeline.core.config import PipelineConfig
    from pipeline.data.data_validation import validation_parts, write_part
    from tests.support import REPO_ROOT, TABLE_LABELS, table_rows, write_table

    source = write_table(tmp_path / "table.csv", table_rows("binary", rows=3000))

    def config(run_id):
        options = {"label": TABLE_LABELS["binary"], "workdir": str(tmp_path / "work"), "snapshot_shards": 4}
        return PipelineConfig(data_source=f"csv:{source}", run_id=run_id, **options).validate()

    snapshot = ingest(config("first"))
    validate(config("first"), snapshot)
    parts = validation_parts(snapshot)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from pipeline.core.config import PipelineConfig\n"
            "from pipeline.data.data_validation import validation_parts, write_part\n"
            "from pipeline.data.snapshot import Snapshot\n"
            f"config = PipelineConfig(**{config('killed').to_dict()!r})\n"
            f"snapshot = Snapshot.load({str(snapshot.path)!r})\n"
            "for part in validation_parts(snapshot):\n"
            "    print(write_part(config, snapshot, part), flush=True)\n",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    first = worker.stdout.readline().strip()  # one part written, the next one under way
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert first.endswith(f"{parts[0].name}.json")

    retried = [write_part(config("killed"), snapshot, part) for part in parts]  # Airflow's retry
    merged = validate(config("killed"), snapshot, part_files=retried)
    clean = validate(config("clean"), snapshot)
    a, b = (json.loads(result.statistics_path.read_text()) for result in (merged, clean))
    assert _without_times(a) == _without_times(b)


def test_a_corrupt_shard_file_is_named_with_its_byte_offset_by_every_reader(tmp_path):
    import shutil

    from pipeline.core.config import PipelineConfig
    from pipeline.core.errors import DataSourceError
    from pipeline.data.data_validation import ValidationPart, measure_part
    from pipeline.data.snapshot import Snapshot
    from tests.support import table_rows, write_table

    source = write_table(tmp_path / "table.csv", table_rows("binary", rows=900))
    config = PipelineConfig(
        data_source=f"csv:{source}", label="approved?", workdir=str(tmp_path / "work"), snapshot_shards=2
    ).validate()
    published = ingest(config)

    def corrupt_copy(name, split):
        copy = Snapshot.load(shutil.copytree(published.path, tmp_path / name))
        shard = sorted((copy.path / copy.tfds_dir).glob(f"*-{split}.tfrecord-00001-of-00002"))[0]
        content = bytearray(shard.read_bytes())
        content[len(content) // 2] ^= 0xFF
        shard.write_bytes(bytes(content))
        return copy, shard

    broken, shard = corrupt_copy("broken", "train")
    message = rf"shard file .*{shard.name} is corrupt at byte \d+ \(.+\); ingest the data again"
    with pytest.raises(DataSourceError, match=message):
        list(broken.iter_batches("train"))
    with pytest.raises(DataSourceError, match=message):
        measure_part(config, broken, ValidationPart("train", 1, 2))
    from pipeline.training.train import train

    with pytest.raises(DataSourceError, match=message):
        train(config.replace(epochs=1, run_id="on-broken"), broken)
    validation_broken, validation_shard = corrupt_copy("validation-broken", "validation")  # read by fit only
    with pytest.raises(DataSourceError, match=rf"shard file .*{validation_shard.name} is corrupt at byte"):
        train(config.replace(epochs=1, run_id="on-broken-validation"), validation_broken)
    assert sum(len(labels) for _, labels in published.iter_batches("train")) == published.splits["train"]
