"""Stage 3, preprocess: tf.data input pipelines over a snapshot.

Features stay raw (uint8 pixels, numbers with NaN for missing, strings); every transformation
that serving needs too (normalisation, vocabularies, imputation) is a layer of the model, so
training and serving see the same one. The pipeline only caches (a split that fits `cache_max_mb`,
else it streams from the snapshot's shards each epoch), shuffles, batches, parses (a batch of
records at a time where there are no images; TFDS decodes images one example at a time), casts
images to float32, augments them and shapes the labels for the task's loss.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from pipeline.core.config import PipelineConfig
from pipeline.core.problem import BINARY, FLOAT, IMAGE, INT, REGRESSION, STRING, ProblemSpec
from pipeline.data.snapshot import Snapshot
from pipeline.data.threads import cores

log = logging.getLogger(__name__)

# Fixed parallelism and buffers instead of tf.data's autotuning: measured on 2 CPU cores, the
# autotuner's own thread and the threads it adds took cores from the training step (epochs of
# 18-20 s instead of 10 s, bench/training_speed.py). The data is small and cached after the first
# epoch, so nothing is left to tune once it is.
MAP_PARALLELISM = cores()
PREFETCH_BATCHES = 2


def _augmenter(seed: int, shift: float):
    import keras

    steps = [keras.layers.RandomFlip("horizontal", seed=seed)]
    if shift > 0:
        steps.append(keras.layers.RandomTranslation(shift, shift, fill_mode="constant", seed=seed + 1))
    return keras.Sequential(steps, name="augment")


def _cast_images(problem: ProblemSpec):
    images = {f.key for f in problem.image_features}

    def cast(features, label):
        return {k: tf.cast(v, tf.float32) if k in images else v for k, v in features.items()}, label

    return cast


def _label_for_loss(problem: ProblemSpec, one_hot_classes: int | None):
    """Labels as the task's loss takes them: float [B,1] (binary, regression), int32 or one-hot (multiclass)."""

    def shape(features, labels):
        if problem.task == BINARY or problem.task == REGRESSION:
            return features, tf.reshape(tf.cast(labels, tf.float32), [-1, 1])
        labels = tf.cast(labels, tf.int32)
        return features, tf.one_hot(labels, one_hot_classes) if one_hot_classes else labels

    return shape


# What tf.data's cache holds per cached tensor besides its values (buffer, shape, allocation):
# measured at about 156 bytes for a float32 scalar. A table of 14 scalar features takes
# ~20 times its 8-bytes-a-value size, so the cache decision must count it.
CACHED_TENSOR_BYTES = 160
# A cached serialized record (a string tensor) costs about 225 bytes besides its own (measured on
# 200,000 records of 256 bytes: 481 bytes a row).
CACHED_RECORD_BYTES = 240


def make_dataset(
    snapshot: Snapshot,
    split: str,
    config: PipelineConfig,
    *,
    training: bool,
    one_hot_classes: int | None = None,
    workers: int = 1,
    worker_index: int = 0,
) -> tf.data.Dataset:
    """Builds the input pipeline for one split.

    Args:
        snapshot: The data snapshot.
        split: A TFDS split expression (resolved, not 'auto').
        config: Uses `batch_size`, `shuffle_buffer`, `cache`, `cache_max_mb`, `augment`, `augment_shift`
            and `seed`. A split larger than `cache_max_mb` decoded is read from the shards every epoch.
        training: Shuffle (seeded, reshuffled every epoch) and augment images if enabled.
        one_hot_classes: Multiclass: give labels one-hot over this many classes (for a label-smoothed loss).
        workers: Training processes sharing the split (MultiWorkerMirroredStrategy): `shard_policy`.
        worker_index: This process's index among them.

    Returns:
        Batches of ({key: values [B, ...]} with images float32 in 0-255, labels for the task's loss), prefetched.
    """
    problem = snapshot.problem
    # Without images, the records are parsed a batch at a time (24x faster than TFDS's decoding
    # of one example at a time, on a table of 15 columns); images are decoded one by one by TFDS.
    by_records = not problem.image_features
    read = snapshot.load_records if by_records else snapshot.load_split
    by_file = shard_policy(snapshot, split, workers) == tf.data.experimental.AutoShardPolicy.FILE
    if by_file:
        # Each worker reads its own shard files. Every worker must run the same number of steps
        # (a collective step waits for all), so each takes as many rows as the smallest part holds,
        # in whole batches: a last partial batch is cut into per-replica pieces, and a replica given
        # an empty piece fails in BatchNormalization (tensorflow/tensorflow#52986).
        context = tf.distribute.InputContext(workers, worker_index, 1)
        rows = _rows_per_worker(snapshot, split, workers)
        rows -= rows % config.batch_size if rows >= config.batch_size else 0
        log.info("split %r: worker %d of %d reads its own shard files (%d rows)", split, worker_index, workers, rows)
        dataset = read(split, input_context=context).take(rows)
    else:
        dataset = read(split)
    if config.cache and cache_size(snapshot, split) <= config.cache_max_mb << 20:
        # Records (tables), or uint8 pixels cast to float32 per batch below: a quarter of the memory.
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    # Multi-worker, DATA: the strategy cuts every global batch into a piece per worker, so a last
    # partial batch can leave a worker an empty piece (tensorflow/tensorflow#52986, as above):
    # whole batches only, which also gives every worker the same number of steps.
    whole_batches = workers > 1 and not by_file and split_size(snapshot, split) >= config.batch_size
    dataset = dataset.batch(config.batch_size, drop_remainder=whole_batches)
    if by_records:
        dataset = dataset.map(example_parser(problem), num_parallel_calls=MAP_PARALLELISM)
    else:
        dataset = dataset.map(_cast_images(problem), num_parallel_calls=MAP_PARALLELISM)
    images = [f.key for f in problem.features if f.kind == IMAGE]
    if training and config.augment and images:
        augment = _augmenter(config.seed, config.augment_shift)
        dataset = dataset.map(
            lambda features, labels: (
                {k: augment(v, training=True) if k in images else v for k, v in features.items()},
                labels,
            ),
            num_parallel_calls=MAP_PARALLELISM,
        )
    dataset = dataset.map(_label_for_loss(problem, one_hot_classes))
    options = without_autotuning()
    # Multi-worker: sharded by file above, else each worker keeps every n-th batch of the whole split.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if by_file else tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.prefetch(PREFETCH_BATCHES).with_options(options)


def _rows_per_worker(snapshot: Snapshot, split: str, workers: int) -> int:
    lengths = snapshot.split_infos()[split].shard_lengths
    return min(sum(lengths[index::workers]) for index in range(workers))


def shard_policy(snapshot: Snapshot, split: str, workers: int) -> tf.data.experimental.AutoShardPolicy:
    """How multi-worker training divides a split: by file when every worker gets a shard file of its own.

    FILE: each worker reads only its own shard files (about 1/n of the data; `make_dataset`
    applies it through TFDS's `input_context`, as tf.data's own file rewrite read the same files
    on every worker of a TFDS dataset). DATA, when the split has fewer shard files than workers
    or is a slice such as 'train[:90%]': every worker reads everything and keeps every n-th batch.
    """
    whole_split = split == snapshot.base_split(split)
    if workers > 1 and whole_split and snapshot.shard_count(split) >= workers:
        return tf.data.experimental.AutoShardPolicy.FILE
    return tf.data.experimental.AutoShardPolicy.DATA


def without_autotuning() -> tf.data.Options:
    """tf.data options with the autotuner off (see `MAP_PARALLELISM`); set them on the last dataset."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def cache_size(snapshot: Snapshot, split: str) -> int:
    """About how many bytes a split takes in tf.data's in-memory cache.

    A split without images caches its serialized records: one string tensor a row,
    `CACHED_RECORD_BYTES` plus the record. With images, the decoded examples: per row one tensor
    per feature and the label, each `CACHED_TENSOR_BYTES` plus its values (an image's pixels, 8
    bytes for a scalar), or the split's serialized size where that is larger (long texts).
    """
    rows = split_size(snapshot, split)
    info = snapshot.split_infos()[snapshot.base_split(split)]
    serialized = info.num_bytes * rows // max(info.num_examples, 1)
    if not snapshot.problem.image_features:
        return serialized + rows * CACHED_RECORD_BYTES
    values = 8 + sum(int(np.prod(f.shape)) if f.kind == IMAGE else 8 for f in snapshot.problem.features)
    per_row = values + CACHED_TENSOR_BYTES * (len(snapshot.problem.features) + 1)
    return max(rows * per_row, serialized)


def example_parser(problem: ProblemSpec):
    """A function from a batch of serialized records without images to ({key: values [B]}, labels [B]).

    The tensors are those TFDS decodes (float32, int64, tf.string; labels int64 class ids or
    float32 values).
    """
    dtypes = {FLOAT: tf.float32, INT: tf.int64, STRING: tf.string}
    spec = {f.key: tf.io.FixedLenFeature([], dtypes[f.dtype]) for f in problem.features}
    spec[problem.label_key] = tf.io.FixedLenFeature([], tf.int64 if problem.is_classification else tf.float32)

    def parse(records):
        parsed = tf.io.parse_example(records, spec)
        return {f.key: parsed[f.key] for f in problem.features}, parsed[problem.label_key]

    return parse


def split_size(snapshot: Snapshot, split: str) -> int:
    """Returns the number of examples a split expression selects."""
    return int(snapshot.split_infos()[split].num_examples)


def pixel_moments(dataset: tf.data.Dataset, key: str) -> tuple[float, float]:
    """Returns the mean and variance of all pixels of image feature `key` in a dataset of (features, labels) batches."""
    total = tf.constant(0.0, tf.float64)
    total_sq = tf.constant(0.0, tf.float64)
    count = tf.constant(0.0, tf.float64)
    for features, _ in dataset:
        pixels = tf.cast(features[key], tf.float64)
        total += tf.reduce_sum(pixels)
        total_sq += tf.reduce_sum(tf.square(pixels))
        count += tf.cast(tf.size(pixels), tf.float64)
    mean = total / tf.maximum(count, 1.0)
    variance = total_sq / tf.maximum(count, 1.0) - tf.square(mean)
    return float(mean), float(tf.maximum(variance, 1e-6))
