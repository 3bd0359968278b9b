"""The vectorized example-order hash equals TFDS's `Hasher.hash_key`, key for key."""

import numpy as np
import pytest
from tensorflow_datasets.core import hashing

from pipeline.data.key_hashing import BATCH_KEYS, hash_keys


def _tfds(salt: str, keys) -> list[int]:
    hasher = hashing.Hasher(salt)
    return [hasher.hash_key(int(key)) for key in keys]


def _as_ints(digests: np.ndarray) -> list[int]:
    return [int.from_bytes(row.tobytes(), "big") for row in digests]


@pytest.mark.parametrize("salt", ["train", "validation", "", "naïve ☃", "a\\b", "s" * 36])
def test_hashes_equal_tfds_hasher_for_keys_of_every_digit_count(salt):
    rng = np.random.default_rng(0)
    keys = np.concatenate(
        [
            np.arange(0, 1200),
            [9, 10, 99, 100, 10**9 - 1, 10**9, 10**18 - 1, 10**18, 2**63 - 1],
            rng.integers(0, 2**63 - 1, 300),
        ]
    )
    assert _as_ints(hash_keys(salt, keys)) == _tfds(salt, keys)


def test_a_salt_too_long_for_one_md5_block_is_hashed_by_hashlib():
    salt = "x" * 40  # with 19 digits, more than the 55 bytes one block holds
    keys = np.asarray([0, 7, 123456, 2**63 - 1])
    assert _as_ints(hash_keys(salt, keys)) == _tfds(salt, keys)


def test_more_keys_than_a_batch_are_hashed_batch_by_batch(monkeypatch):
    import pipeline.data.key_hashing as key_hashing

    monkeypatch.setattr(key_hashing, "BATCH_KEYS", 64)
    keys = np.arange(10_000 - 100, 10_000 + 100)  # batches of 64: the digit count changes inside one
    assert _as_ints(hash_keys("test", keys)) == _tfds("test", keys)
    assert BATCH_KEYS > 64


def test_no_keys_and_negative_keys():
    assert hash_keys("train", np.zeros(0, np.int64)).shape == (0, 16)
    with pytest.raises(ValueError, match="non-negative"):
        hash_keys("train", np.asarray([3, -1]))
