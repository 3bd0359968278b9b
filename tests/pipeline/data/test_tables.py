"""`csv:` and `parquet:` sources: problem inference, missing values, seeded splits and bad tables."""

import numpy as np
import pytest

from pipeline.core.errors import DataSourceError
from pipeline.data.ingest import ingest
from tests.support import table_rows, write_table


def _published(config):
    root = config.workdir_path / "snapshots"
    return [p for p in root.iterdir() if not p.name.startswith(".")] if root.exists() else []


@pytest.fixture
def penguins_csv(tmp_path):
    return write_table(tmp_path / "data" / "penguins.csv", table_rows("multiclass", 400))


def test_a_csv_table_becomes_a_snapshot_with_an_inferred_problem(make_config, penguins_csv):
    config = make_config(data_source=f"csv:{penguins_csv}", label="species")
    snapshot = ingest(config)
    problem = snapshot.problem
    assert problem.task == "multiclass" and problem.class_names == ("Adelie", "Chinstrap", "Gentoo")
    assert [(f.name, f.key, f.kind, f.dtype) for f in problem.features] == [
        ("bill length (mm)", "bill_length__mm_", "numeric", "float32"),
        ("flipper_mm", "flipper_mm", "numeric", "int64"),
        ("island", "island", "categorical", "string"),
    ]
    assert problem.renamed_columns() == {"bill length (mm)": "bill_length__mm_"}
    # 11 of 400 rows have no label: left out and counted; the rest split 80/10/10 exactly.
    assert snapshot.dropped_rows == {"train": 11, "validation": 0, "test": 0}
    assert snapshot.splits == {"test": 39, "train": 311, "validation": 39}
    assert snapshot.path.name.startswith("penguins-") and config.model_name == "penguins"
    columns, labels = snapshot.split_columns("train")
    assert np.isnan(columns["bill_length__mm_"]).sum() > 0  # missing numbers stay NaN
    assert (columns["island"] == "").sum() > 0  # missing text is ''
    assert set(labels.tolist()) == {0, 1, 2}


def test_the_split_is_seeded_deterministic_and_stable_as_rows_are_added(make_config, tmp_path):
    table = table_rows("binary", 500, seed=1)
    source = write_table(tmp_path / "loans.csv", table)
    config = make_config(data_source=f"csv:{source}", label="approved?")
    first = ingest(config)
    assert ingest(config).path == first.path  # same rows, same seed: the same snapshot
    other_seed = ingest(config.replace(seed=7))
    assert other_seed.fingerprint != first.fingerprint and other_seed.splits == first.splits

    def test_incomes(snapshot):
        return set(snapshot.split_columns("test")[0]["annual_income"].tolist())

    grown = write_table(
        tmp_path / "grown" / "loans.csv", {k: v + table_rows("binary", 50, seed=2)[k] for k, v in table.items()}
    )
    more = ingest(config.replace(data_source=f"csv:{grown}"))
    kept = len(test_incomes(first) & test_incomes(more)) / len(test_incomes(first))
    assert kept > 0.8  # rows are ordered by their content's hash: most test rows stay test rows


def test_labels_tasks_and_class_order_are_inferred_and_overridable(make_config, tmp_path):
    loans = write_table(tmp_path / "loans.csv", table_rows("binary", 200))
    binary = ingest(make_config(data_source=f"csv:{loans}", label="approved?")).problem
    assert binary.task == "binary" and binary.class_names == ("no", "yes")  # the second is positive
    assert [f.key for f in binary.features] == ["annual_income", "debt_ratio", "state"]
    flipped = ingest(make_config(data_source=f"csv:{loans}", label="approved?", class_names=["yes", "no"])).problem
    assert flipped.class_names == ("yes", "no")

    houses = write_table(tmp_path / "houses.csv", table_rows("regression", 200))
    regression = ingest(make_config(data_source=f"csv:{houses}", label="price"))
    assert regression.problem.task == "regression" and regression.problem.class_names == ()
    assert sum(regression.dropped_rows.values()) == 5  # rows without a price
    as_classes = ingest(
        make_config(
            data_source=f"csv:{houses}", label="rooms", feature_types={"district": "text"}, exclude_columns=["price"]
        )
    ).problem
    assert as_classes.task == "multiclass" and as_classes.class_names[0] == "1"  # few whole numbers: classes
    assert [(f.key, f.kind) for f in as_classes.features] == [("size_m2", "numeric"), ("district", "text")]

    reviews = write_table(tmp_path / "reviews.csv", table_rows("text", 200))
    text = ingest(
        make_config(data_source=f"csv:{reviews}", feature_types={"stars shown": "categorical"}, label="sentiment")
    )
    assert [(f.key, f.kind, f.dtype) for f in text.problem.features] == [
        ("review", "text", "string"),
        ("stars_shown", "categorical", "int64"),  # whole numbers without gaps keep their type
    ]


def test_a_column_named_label_or_target_is_the_default_label(make_config, tmp_path):
    table = table_rows("binary", 100)
    table["target"] = table.pop("approved?")
    source = write_table(tmp_path / "t.csv", table)
    assert ingest(make_config(data_source=f"csv:{source}")).problem.label == "target"


def test_parquet_globs_with_gaps_in_an_integer_label(make_config, tmp_path):
    rng = np.random.default_rng(0)
    for part in range(2):
        x = rng.normal(0, 1, 300)
        label = [None if i % 50 == 0 else int(v > 0) + int(v > 1) for i, v in enumerate(x)]
        write_table(tmp_path / "parts" / f"part-{part}.parquet", {"x": x.tolist(), "grade": label})
    config = make_config(data_source=f"parquet:{tmp_path}/parts/*.parquet", label="grade")
    snapshot = ingest(config)
    # Whole numbers with gaps read as decimals; few distinct values still make classes.
    assert snapshot.problem.task == "multiclass" and snapshot.problem.class_names == ("0", "1", "2")
    assert sum(snapshot.splits.values()) == 600 - 12 and sum(snapshot.dropped_rows.values()) == 12
    assert config.model_name == "parts"


def _broken(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


@pytest.mark.parametrize(
    "source, extra, message",
    [
        ("csv:{tmp}/none.csv", {}, r"csv:.*/none.csv: no such file"),
        ("csv:{tmp}", {}, r"is a folder: name a file or a glob"),
        ("parquet:{tmp}/nothing/*.parquet", {}, r"no file matches the pattern"),
        ("parquet:{corrupt}", {}, r"corrupt.parquet: cannot read as PARQUET"),
        ("csv:{ragged}", {}, r"ragged.csv: cannot read as CSV: CSV parse error"),
        ("csv:{header}", {}, r"header.csv: the table has no rows"),
        ("csv:{good}", {"label": "colour"}, r"label column 'colour' does not exist; the columns are: a, b, y"),
        ("csv:{good}", {}, r"say which column is the label \(--label COLUMN\); the columns are: a, b, y"),
        ("csv:{constant}", {"label": "y"}, r"label column 'y' has a single value \('z' in all 3 rows\)"),
        (
            "csv:{mixed}",
            {"label": "y"},
            r"column 'age' mixes numbers and text \(3 of 4 values are numbers; row 2 is 'n/k'\)",
        ),
        (
            "csv:{good}",
            {"label": "y", "task": "binary"},
            r"label column 'y' has 3 distinct values: a binary task needs exactly 2",
        ),
        (
            "csv:{good}",
            {"label": "y", "task": "regression"},
            r"label column 'y' holds classes \(e.g. 'p'\), not numbers",
        ),
        (
            "csv:{good}",
            {"label": "y", "class_names": ["p", "q"]},
            r"label 'y' has values that class_names does not list: \['r'\]",
        ),
        (
            "csv:{good}",
            {"label": "y", "exclude_columns": ["c"]},
            r"exclude_columns names columns that .* does not have: \['c'\]",
        ),
        ("csv:{good}", {"label": "y", "feature_types": {"a": "image"}}, r"column 'a' holds no images"),
        (
            "csv:{good}",
            {"label": "y", "feature_types": {"b": "numeric"}},
            r"column 'b' is declared numeric but holds 'u'",
        ),
        ("csv:{clash}", {"label": "y"}, r"columns 'a b' and 'a_b' both map to the key 'a_b'"),
        ("csv:{dates}", {"label": "y"}, r"column 'when' holds .*date.* values: .*exclude it"),
    ],
    ids=[
        "missing-file",
        "a-folder",
        "glob-matches-nothing",
        "corrupt-parquet",
        "ragged-csv",
        "empty-table",
        "unknown-label",
        "no-label-given",
        "single-valued-label",
        "mixed-types",
        "binary-with-3-classes",
        "regression-on-classes",
        "class-names-incomplete",
        "unknown-excluded-column",
        "not-an-image",
        "not-numeric",
        "two-columns-one-key",
        "dates",
    ],
)
def test_bad_tables_fail_with_one_line_naming_the_file_or_column(make_config, tmp_path, source, extra, message):
    paths = {
        "tmp": tmp_path,
        "corrupt": _broken(tmp_path, "corrupt.parquet", b"PAR1 not really parquet PAR1"),
        "ragged": _broken(tmp_path, "ragged.csv", "a,b\n1,2\n3,4,5\n"),
        "header": _broken(tmp_path, "header.csv", "a,b,y\n"),
        "good": _broken(tmp_path, "good.csv", "a,b,y\n1,u,p\n2,v,q\n3,w,r\n"),
        "constant": _broken(tmp_path, "constant.csv", "a,y\n1,z\n2,z\n3,z\n"),
        "mixed": _broken(tmp_path, "mixed.csv", "age,y\n12,p\n15,q\nn/k,p\n17,q\n"),
        "clash": _broken(tmp_path, "clash.csv", "a b,a_b,y\n1,2,p\n3,4,q\n"),
        "dates": _broken(tmp_path, "dates.csv", "when,y\n2026-01-01,p\n2026-02-01,q\n"),
    }
    config = make_config(data_source=source.format(**paths), **extra)
    with pytest.raises(DataSourceError, match=message) as caught:
        ingest(config)
    assert "\n" not in str(caught.value)
    assert _published(config) == []


def test_files_of_a_glob_must_share_their_columns(make_config, tmp_path):
    write_table(tmp_path / "parts" / "a.csv", {"x": [1, 2], "y": ["p", "q"]})
    write_table(tmp_path / "parts" / "b.csv", {"x": [1, 2], "z": ["p", "q"]})
    with pytest.raises(DataSourceError, match=r"b.csv: columns \['x', 'z'\] differ from those of .*a.csv"):
        ingest(make_config(data_source=f"csv:{tmp_path}/parts/*.csv", label="y"))


def _widening_csv(path, rows=600):
    """A CSV whose later rows need wider types than its first rows show, and a class seen only at the end."""
    lines = ["amount,late,rooms,district,y"]
    for i in range(rows):
        amount = str(i) if i < rows // 2 else f"{i}.25"  # whole numbers, then decimals
        late = "" if i < rows // 2 else str(i % 7)  # missing, then whole numbers
        label = "r" if i >= rows - 30 else ("p" if i % 3 else "q")
        lines.append(f"{amount},{late},{i % 5 + 1},{['north', 'south'][i % 2]},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_csv_streamed_in_small_blocks_is_the_snapshot_of_the_file_read_whole(make_config, tmp_path, monkeypatch):
    import pyarrow.csv

    from pipeline.data import tables

    path = _widening_csv(tmp_path / "rooms.csv")
    whole = ingest(make_config(data_source=f"csv:{path}", label="y"))  # one block: pyarrow sees every row at once
    monkeypatch.setattr(tables, "CSV_BLOCK_BYTES", 256)  # ~40 rows a block: types change between blocks
    streamed = ingest(make_config(data_source=f"csv:{path}", label="y", workdir=str(tmp_path / "streamed")))
    assert streamed.fingerprint == whole.fingerprint and streamed.problem == whole.problem
    assert streamed.splits == whole.splits and streamed.problem.class_names == ("p", "q", "r")
    assert [(f.name, f.dtype) for f in streamed.problem.features] == [
        ("amount", "float32"),
        ("late", "float32"),
        ("rooms", "int64"),
        ("district", "string"),
    ]
    read_whole = pyarrow.csv.read_csv(path).schema
    assert [str(read_whole.field(name).type) for name in ("amount", "late", "rooms")] == ["double", "int64", "int64"]
    for split in whole.splits:
        a, b = whole.split_columns(split), streamed.split_columns(split)
        assert all(np.array_equal(a[0][k], b[0][k], equal_nan=a[0][k].dtype.kind == "f") for k in a[0])
        assert np.array_equal(a[1], b[1])


def test_a_row_that_breaks_deep_in_a_streamed_csv_is_named_with_its_file_and_place(make_config, tmp_path, monkeypatch):
    from pipeline.data import tables

    monkeypatch.setattr(tables, "CSV_BLOCK_BYTES", 256)
    lines = ["x,y"] + [f"{i},{'p' if i % 2 else 'q'}" for i in range(500)] + ["1,p,surplus"] + ["2,q"] * 50
    path = _broken(tmp_path, "deep.csv", "\n".join(lines) + "\n")
    config = make_config(data_source=f"csv:{path}", label="y")
    with pytest.raises(DataSourceError, match=r"deep.csv: cannot read as CSV: CSV parse error.* after row (\d+)\)"):
        ingest(config)
    assert _published(config) == []


@pytest.mark.parametrize("line_break", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_a_reopened_table_starts_at_any_block_with_or_without_the_first_reads_index(tmp_path, monkeypatch, line_break):
    """Blocks are cut at row ends (LF or CRLF, a row longer than a block included) and indexed when first read."""
    from pipeline.data import tables

    monkeypatch.setattr(tables, "CSV_BLOCK_BYTES", 64)
    rows = [f"{i},{'x' * (150 if i == 7 else i % 5)},{'p' if i % 2 else 'q'}" for i in range(60)]
    path = tmp_path / "rows.csv"
    path.write_bytes(line_break.join(["a,b,y", *rows]).encode() + b"\n")
    first = tables.read_table_source("csv", str(path), [])
    blocks = list(first.stream("data"))
    assert len(blocks) > 5 and np.concatenate([block["a"] for block in blocks]).tolist() == list(range(60))
    assert [value for block in blocks for value in block["b"]][7] == "x" * 150  # longer than a block
    indexed = tables.read_table_source("csv", str(path), [], first.reopen)
    unindexed = tables.read_table_source("csv", str(path), [], {"types": first.reopen["types"]})  # an older plan
    for source in (indexed, unindexed):
        from_third = list(source.stream("data", 3))
        assert len(from_third) == len(blocks) - 3
        assert all(np.array_equal(a["a"], b["a"]) for a, b in zip(from_third, blocks[3:], strict=True))


def test_read_ahead_keeps_the_order_raises_where_asked_and_closes_its_source():
    from pipeline.data.tables import _read_ahead

    closed = []

    def chunks(fail_at=None):
        try:
            for number in range(5):
                if number == fail_at:
                    raise DataSourceError(f"broken chunk {number}")
                yield number
        finally:
            closed.append(fail_at)

    assert list(_read_ahead(chunks())) == [0, 1, 2, 3, 4]
    got = []
    with pytest.raises(DataSourceError, match="broken chunk 3"):
        for number in _read_ahead(chunks(fail_at=3)):
            got.append(number)
    assert got == [0, 1, 2]
    early = _read_ahead(chunks(fail_at=-1))
    assert next(early) == 0
    early.close()  # a part that stops after its chunks: the read under way ends, the source is closed
    assert closed == [None, 3, -1]
