import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.errors import ConfigError
from pipeline.data import preprocess
from pipeline.data.ingest import ingest
from pipeline.data.preprocess import make_dataset, pixel_moments, split_size


@pytest.fixture(scope="module")
def snapshot(trained_run):
    return trained_run["snapshot"]


def test_batches_keep_raw_pixels_and_int_labels(snapshot, trained_run):
    config = trained_run["config"].replace(batch_size=32)
    features, labels = next(iter(make_dataset(snapshot, "test", config, training=False)))
    images = features["images"]  # one input per feature, by key
    assert list(features) == ["images"] and images.shape == (32, 28, 28, 1) and images.dtype.name == "float32"
    assert labels.shape == (32,) and labels.dtype.name == "int32"
    assert float(images.numpy().max()) > 1.0  # Not normalised here: the model does it.


def test_pipeline_uses_fixed_parallelism_not_the_autotuner(snapshot, trained_run):
    # On 2 CPU cores the autotuner's threads took cores from the training step (epochs of
    # 18-20 s instead of 10 s); bench/training_speed.py measures the pipeline against batches in memory.
    for training in (True, False):
        dataset = make_dataset(snapshot, "train", trained_run["config"].replace(augment=True), training=training)
        assert dataset.options().autotune.enabled is False


def test_training_shuffle_is_seeded_and_reshuffles_each_epoch(snapshot, trained_run):
    config = trained_run["config"].replace(batch_size=2000)

    def epoch_labels(dataset):
        return next(iter(dataset))[1].numpy()

    first = make_dataset(snapshot, "train", config, training=True)
    second = make_dataset(snapshot, "train", config, training=True)
    epoch_one = epoch_labels(first)
    assert np.array_equal(epoch_one, epoch_labels(second))  # Same seed, same order.
    assert not np.array_equal(epoch_one, epoch_labels(first))  # A new order next epoch.
    other_seed = make_dataset(snapshot, "train", config.replace(seed=7), training=True)
    assert not np.array_equal(epoch_one, epoch_labels(other_seed))


def test_augmentation_keeps_shapes_and_changes_pixels(snapshot, trained_run):
    config = trained_run["config"].replace(batch_size=64, augment=True, shuffle_buffer=1)
    plain = next(iter(make_dataset(snapshot, "train", config.replace(augment=False), training=True)))[0]["images"]
    augmented = next(iter(make_dataset(snapshot, "train", config, training=True)))[0]["images"]
    assert augmented.shape == plain.shape
    assert not np.allclose(augmented.numpy(), plain.numpy())


def test_augmentation_without_shift_only_mirrors(snapshot, trained_run):
    config = trained_run["config"].replace(batch_size=64, augment=True, augment_shift=0.0, shuffle_buffer=1)
    plain = next(iter(make_dataset(snapshot, "train", config.replace(augment=False), training=True)))[0]
    augmented = next(iter(make_dataset(snapshot, "train", config, training=True)))[0]
    plain, augmented = plain["images"].numpy(), augmented["images"].numpy()
    mirrored = np.array([np.array_equal(a, p[:, ::-1]) for a, p in zip(augmented, plain, strict=True)])
    unchanged = np.array([np.array_equal(a, p) for a, p in zip(augmented, plain, strict=True)])
    assert np.all(mirrored | unchanged) and mirrored.any() and unchanged.any()


def test_split_expressions(snapshot, trained_run):
    assert split_size(snapshot, "train[:90%]") == 1800
    assert split_size(snapshot, "test[:100]") == 100
    with pytest.raises(ConfigError, match="split 'valid' is not in snapshot fashion-mnist"):
        snapshot.load_split("valid")


def test_pixel_moments(snapshot, trained_run):
    mean, variance = pixel_moments(make_dataset(snapshot, "test", trained_run["config"], training=False), "images")
    images = snapshot.split_columns("test")[0]["images"]
    assert mean == pytest.approx(images.mean(), rel=1e-6)
    assert variance == pytest.approx(images.astype(np.float64).var(), rel=1e-6)


def _images(dataset) -> set[bytes]:
    return {
        image.astype(np.uint8).tobytes() for features, _ in dataset.as_numpy_iterator() for image in features["images"]
    }


def test_with_a_shard_file_per_worker_each_worker_reads_only_its_own_files(make_config):
    config = make_config(snapshot_shards=3, batch_size=100)
    snapshot = ingest(config)
    assert snapshot.builder().info.splits["train"].shard_lengths == [667, 666, 667]
    assert preprocess.shard_policy(snapshot, "train", 2) == tf.data.experimental.AutoShardPolicy.FILE
    # Fewer files than workers, or a slice of the split: every worker reads all and keeps its part.
    assert preprocess.shard_policy(snapshot, "train", 4) == tf.data.experimental.AutoShardPolicy.DATA
    assert preprocess.shard_policy(snapshot, "train[:90%]", 2) == tf.data.experimental.AutoShardPolicy.DATA

    first, second = (
        preprocess.make_dataset(snapshot, "train", config, training=False, workers=2, worker_index=index)
        for index in range(2)
    )
    for dataset in (first, second):
        assert dataset.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
    files = [
        _images(snapshot.load_split(f"train[{a}:{b}]").batch(700)) for a, b in ((0, 667), (667, 1333), (1333, 2000))
    ]
    # Worker 0 reads files 0 and 2, worker 1 file 1; both run the same number of steps: the 666 rows
    # of the smallest part, in whole batches (600 rows each), so no replica is ever given an empty batch.
    assert _images(first) < files[0] | files[2] and len(_images(first)) == 600
    assert _images(second) < files[1] and len(_images(second)) == 600
    assert [len(labels) for _, labels in first] == [len(labels) for _, labels in second] == [100] * 6

    # Read by DATA (a slice): every worker reads the whole slice, in whole batches only, since the
    # strategy cuts each batch into a piece per worker; one worker alone keeps the partial batch.
    sliced = [
        [len(labels) for _, labels in preprocess.make_dataset(snapshot, "train[:90%]", config, training=False, **kw)]
        for kw in ({"workers": 2, "worker_index": 1}, {})
    ]
    assert sliced == [[100] * 18, [100] * 18]
    sliced = [
        [len(labels) for _, labels in preprocess.make_dataset(snapshot, "train[:1950]", config, training=True, **kw)]
        for kw in ({"workers": 2, "worker_index": 0}, {})
    ]
    assert sliced == [[100] * 19, [100] * 19 + [50]]


def test_the_cache_decision_counts_what_tf_data_holds_per_cached_tensor(make_config, tmp_path, trained_run):
    """A cached tensor costs ~160 bytes besides its values, a cached record ~225: tables cache their
    records (one tensor a row), images their decoded examples (one tensor per feature and the label)."""
    from tests.support import table_rows, write_table

    source = write_table(tmp_path / "loans.csv", table_rows("binary", 500))
    table = ingest(make_config(data_source=f"csv:{source}", label="approved?"))
    rows = split_size(table, "train")
    serialized = sum(len(r) for r in table.load_records("train").as_numpy_iterator())
    assert preprocess.cache_size(table, "train") == serialized + rows * preprocess.CACHED_RECORD_BYTES
    images = trained_run["snapshot"]
    pixels = int(np.prod(images.image_shape))
    rows = split_size(images, "train")
    assert preprocess.cache_size(images, "train") == rows * (pixels + 8 + 2 * preprocess.CACHED_TENSOR_BYTES)


def _assert_same_batches(ours, theirs):
    assert len(ours) == len(theirs) > 0
    for (features, labels), (their_features, their_labels) in zip(ours, theirs, strict=True):
        assert np.array_equal(labels, their_labels, equal_nan=True)
        assert features.keys() == their_features.keys()
        for key, values in their_features.items():
            assert features[key].dtype == values.dtype, key
            assert np.array_equal(features[key], values, equal_nan=values.dtype.kind == "f"), key


def test_a_table_is_parsed_a_batch_at_a_time_into_what_tfds_decodes_in_its_order(make_config, tmp_path):
    """Records interleaved as TFDS interleaves the files (16 rows of each file in turn), parsed a batch at a time."""
    from tests.support import table_rows, write_table

    source = write_table(tmp_path / "houses.csv", table_rows("regression", 900))
    config = make_config(data_source=f"csv:{source}", label="price", snapshot_shards=3, shuffle_buffer=128)
    table = ingest(config)
    parse = preprocess.example_parser(table.problem)
    for split in ("train", "train[:90%]", "train[10%:]+test"):
        ours = table.load_records(split).batch(100).map(parse)
        _assert_same_batches(
            list(ours.as_numpy_iterator()), list(table.load_split(split).batch(100).as_numpy_iterator())
        )
    context = tf.distribute.InputContext(2, 1, 1)
    ours = table.load_records("train", input_context=context).batch(100).map(parse)
    theirs = table.load_split("train", input_context=context).batch(100)
    _assert_same_batches(list(ours.as_numpy_iterator()), list(theirs.as_numpy_iterator()))
    # Training's batches: the same shuffle (the same seed) of the same rows.
    shuffled = table.load_split("train").shuffle(128, seed=config.seed, reshuffle_each_iteration=True)
    reference = shuffled.batch(config.batch_size).map(preprocess._label_for_loss(table.problem, None))
    trained_on = make_dataset(table, "train", config, training=True)
    _assert_same_batches(list(trained_on.as_numpy_iterator()), list(reference.as_numpy_iterator()))
