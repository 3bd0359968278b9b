"""The 'tfds:<name>' source, with a real registered TFDS builder that needs no network."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline.core.errors import DataSourceError
from pipeline.data.ingest import ingest


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """A small deterministic image dataset: class k is a bright square at position k."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(names=["left", "middle", "right"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 120), "test": self._generate_examples(1, 30)}

    def _generate_examples(self, seed, count):
        rng = np.random.default_rng(seed)
        for index in range(count):
            label = index % 3
            image = rng.integers(0, 40, (28, 28, 1), dtype=np.uint8)
            image[10:18, 2 + 8 * label : 10 + 8 * label] = 255
            yield index, {"image": image, "label": label}


def test_tfds_source_prepares_when_allowed_then_reads_offline(make_config, tmp_path):
    data_dir = tmp_path / "tfds"
    config = make_config(data_source="tfds:tiny_shapes", tfds_data_dir=str(data_dir))
    with pytest.raises(DataSourceError, match="'tiny_shapes' is not prepared .* allow_download is off"):
        ingest(config)

    prepared = ingest(config.replace(allow_download=True))
    assert prepared.splits == {"test": 30, "train": 120}
    assert prepared.class_names == ["left", "middle", "right"]
    assert prepared.name == "tiny_shapes/1.0.0"

    offline = ingest(config)  # Now prepared in tfds_data_dir: no download needed.
    assert offline.path == prepared.path
    features, labels = offline.split_columns("test")
    assert features["image"].shape == (30, 28, 28, 1) and set(labels.tolist()) == {0, 1, 2}
    assert [(f.key, f.kind) for f in offline.problem.features] == [("image", "image")]


def test_a_tfds_source_streams_in_chunks_to_the_same_snapshot(make_config, tmp_path, monkeypatch):
    from pipeline.data import source_data

    config = make_config(data_source="tfds:tiny_shapes", tfds_data_dir=str(tmp_path / "tfds"), allow_download=True)
    whole = ingest(config)
    monkeypatch.setattr(source_data, "CHUNK_BYTES", 7 * 28 * 28)  # seven images a chunk
    chunked = ingest(config.replace(workdir=str(tmp_path / "chunked")))
    assert chunked.fingerprint == whole.fingerprint and chunked.splits == whole.splits
    assert np.array_equal(chunked.split_columns("train")[1], whole.split_columns("train")[1])


def test_unknown_tfds_name(make_config, tmp_path):
    config = make_config(data_source="tfds:no_such_dataset_xyz", tfds_data_dir=str(tmp_path))
    with pytest.raises(DataSourceError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
        ingest(config)


class TinyLoans(tfds.core.GeneratorBasedBuilder):
    """A small table as a TFDS dataset: numbers, a class-label input, text, a sequence and the label."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "income": tfds.features.Tensor(shape=(), dtype=np.float32),
                    "years": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "state": tfds.features.ClassLabel(names=["CA", "NY"]),
                    "note": tfds.features.Text(),
                    "history": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.int64)),
                    "approved": tfds.features.ClassLabel(names=["no", "yes"]),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 80), "test": self._generate_examples(1, 20)}

    def _generate_examples(self, seed, count):
        rng = np.random.default_rng(seed)
        for index in range(count):
            income = float(rng.uniform(10, 100))
            yield (
                index,
                {
                    "income": income,
                    "years": int(rng.integers(0, 30)),
                    "state": int(rng.integers(0, 2)),
                    "note": f"applicant {index} asked for a loan",
                    "history": [1, 2, 3][: index % 3],
                    "approved": int(income > 50),
                },
            )


def test_any_tfds_features_become_inputs_and_the_label_is_chosen_by_name(make_config, tmp_path):
    config = make_config(
        data_source="tfds:tiny_loans", tfds_data_dir=str(tmp_path / "tfds"), allow_download=True, label="approved"
    )
    with pytest.raises(DataSourceError, match=r"feature 'history' \(Sequence, .*\) is not a scalar, text, class label"):
        ingest(config)
    snapshot = ingest(config.replace(exclude_columns=["history"]))
    problem = snapshot.problem
    assert problem.task == "binary" and problem.class_names == ("no", "yes")
    assert [(f.key, f.kind, f.dtype) for f in problem.features] == [
        ("income", "numeric", "float32"),
        ("years", "numeric", "int64"),
        ("state", "categorical", "string"),  # a class-label input: its names
        ("note", "text", "string"),
    ]
    columns, labels = snapshot.split_columns("test")
    assert set(columns["state"].tolist()) <= {"CA", "NY"} and len(labels) == 20
    assert snapshot.resolve_split("auto", "validation") == "train[90%:]"  # the TFDS split syntax
