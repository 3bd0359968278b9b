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


def test_unknown_tfds_name(make_config, tmp_path):
    config = make_config(data_source="tfds:no_such_dataset_xyz", tfds_data_dir=str(tmp_path))
    with pytest.raises(DataSourceError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
        ingest(config)
