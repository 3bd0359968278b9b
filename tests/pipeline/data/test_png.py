"""The numpy/zlib PNG encoder writes the bytes `tf.io.encode_png` writes (what TFDS's Image feature stores)."""

import io
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline.data.png import IDAT_BYTES, allowed_filters, encode_png


def _contents(height, width, channels, seed):
    """Images that make libpng choose different filters, windows and chunkings."""
    rng = np.random.default_rng(seed)
    shape = (height, width, channels)
    ramp = np.add.outer(np.arange(height), 3 * np.arange(width))[..., None] * (np.arange(channels) + 1)
    return np.stack(
        [
            rng.integers(0, 256, shape, dtype=np.uint8),  # noise: None wins, the data does not shrink
            np.full(shape, rng.integers(0, 256), np.uint8),  # flat
            (ramp % 256).astype(np.uint8),  # Sub, Up and Paeth rows
            rng.integers(0, 256, shape, dtype=np.uint8) // 64 * 64,  # a few levels
            np.clip(rng.normal(128, 12, shape), 0, 255).astype(np.uint8),  # Average rows
        ]
    )


def _chunks(png: bytes) -> list[tuple[bytes, int]]:
    chunks, at = [], 8
    while at < len(png):
        size = int.from_bytes(png[at : at + 4], "big")
        chunks.append((png[at + 4 : at + 8], size))
        at += 12 + size
    return chunks


@pytest.mark.parametrize(
    "height,width",
    [(1, 1), (1, 9), (7, 1), (2, 2), (28, 28), (33, 17), (128, 128), (200, 150)],
)
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_each_image_is_the_png_tensorflow_writes(height, width, channels):
    images = _contents(height, width, channels, seed=height * 1000 + width * 10 + channels)
    files = encode_png(images).to_list()
    assert len(files) == len(images)
    for image, png in zip(images, files, strict=True):
        assert png == tf.io.encode_png(image).numpy()
        decoded = np.asarray(Image.open(io.BytesIO(png)))
        assert np.array_equal(decoded.reshape(image.shape), image)


def test_fashion_mnist_images_are_the_pngs_tfds_stores(fashion_subset):
    images = fashion_subset["train"][0].reshape(-1, 28, 28, 1)[:2000]
    assert encode_png(images).to_list() == [tf.io.encode_png(image).numpy() for image in images]


def test_libpng_choices_that_the_bytes_depend_on():
    """Filters tried by size; a big image's data split into 8 KiB IDAT chunks; a small one's zlib header."""
    assert allowed_filters(1, 5) == (0, 1) and allowed_filters(5, 1) == (0, 2) and allowed_filters(1, 1) == (0,)
    assert allowed_filters(2, 2) == (0, 1, 2, 3, 4)
    noise = np.random.default_rng(0).integers(0, 256, (1, 200, 150, 3), dtype=np.uint8)
    (png,) = encode_png(noise).to_list()
    idat = [size for kind, size in _chunks(png) if kind == b"IDAT"]
    assert len(idat) > 1 and set(idat[:-1]) == {IDAT_BYTES} and [kind for kind, _ in _chunks(png)][0] == b"IHDR"
    (small,) = encode_png(np.zeros((1, 28, 28, 1), np.uint8)).to_list()
    stream = small[41 : 41 + _chunks(small)[1][1]]
    assert stream[0] >> 4 == 2  # a 1 KiB window: 812 bytes of rows, as libpng rewrites the header
    assert zlib.decompress(stream) == bytes(28 * 29)


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((2, 4, 4, 1), np.float32),
        np.zeros((2, 4, 4, 5), np.uint8),
        np.zeros((4, 4, 1), np.uint8),
        np.zeros((2, 0, 4, 1), np.uint8),
    ],
    ids=["float", "five-channels", "one-image-without-batch", "empty"],
)
def test_what_png_cannot_hold_is_refused_by_name(images):
    with pytest.raises(ValueError, match=r"PNG encoding takes uint8 images \[n, height, width, 1..4 channels\]"):
        encode_png(images)
