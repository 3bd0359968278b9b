"""PNG encoding of uint8 images with numpy and zlib: byte for byte what `tf.io.encode_png` writes.

TFDS's `Image` feature encodes each image with TensorFlow's `encode_png` op, one image at a
time (about 80 µs an image on the CI machine), and so imports TensorFlow in every process that
writes images. This module writes the same bytes without TensorFlow (about 55 µs a 28x28 image,
most of it zlib's): the row filters are chosen for a batch of images at once with numpy, and
each image's filtered rows are compressed by zlib; a chunk of images is encoded in slices on
every core (`threads`), as numpy and zlib release the GIL. It makes the choices libpng makes
with TensorFlow's settings (`tests/pipeline/data/test_png.py` compares the bytes with
`tf.io.encode_png`):

- Each row's filter: of None, Sub, Up, Average and Paeth, the one whose filtered bytes, read as
  signed, have the smallest sum of magnitudes, the first on a tie. An image one row high has
  only None and Sub, one column wide only None and Up (libpng's `png_write_start_row`).
- zlib: level 6, memory level 9, strategy Z_FILTERED (the default strategy when None is the
  only filter). For up to 16 KiB of rows, the window is the smallest that holds them and the
  zlib header names the smallest window that covers them, as libpng rewrites it.
- IDAT chunks of at most 8,192 bytes, and no chunk other than IHDR, IDAT and IEND.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from pipeline.data.byte_columns import Ragged
from pipeline.data.threads import cores, thread_map

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray + alpha, RGB, RGBA
NONE, SUB, UP, AVERAGE, PAETH = range(5)
IDAT_BYTES = 8192  # libpng's default zlib buffer: one IDAT chunk each time it fills
SMALL_IMAGE_BYTES = 16384  # libpng shrinks the zlib window for images up to this size
ZLIB_LOOKAHEAD = 262  # zlib's MIN_LOOKAHEAD: a window must hold the data and this much more
FILTER_BATCH_BYTES = 1 << 20  # pixels filtered at once (numpy's temporaries are ~20x this)
PARALLEL_MIN_BYTES = 1 << 20  # pixels encoded in one thread below this (threads cost more than they save)
_IDAT_CRC = zlib.crc32(b"IDAT")


def encode_png(images: np.ndarray) -> Ragged:
    """Encodes images as PNG, the bytes TensorFlow's `encode_png` writes.

    Args:
        images: uint8 [images, height, width, channels], 1 to 4 channels.

    Returns:
        One PNG file's bytes per image, in order.

    Raises:
        ValueError: for another dtype, rank, channel count or an empty image.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in COLOR_TYPES or 0 in images.shape[1:3]:
        raise ValueError(
            f"PNG encoding takes uint8 images [n, height, width, 1..4 channels], not {images.dtype} {images.shape}"
        )
    if images.nbytes < PARALLEL_MIN_BYTES:
        return Ragged.of(_encode(images))
    threads = cores()
    parts = thread_map(lambda part: _encode(part, FILTER_BATCH_BYTES // threads), np.array_split(images, threads))
    return Ragged.of([png for part in parts for png in part])


def _encode(images: np.ndarray, filter_batch_bytes: int = FILTER_BATCH_BYTES) -> list[bytes]:
    """`encode_png` of checked images, in one thread (numpy and zlib let others run meanwhile).

    The threads share `FILTER_BATCH_BYTES`, so numpy's temporaries take what they take in one.
    """
    count, height, width, channels = images.shape
    header = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[channels], 0, 0, 0))
    trailer = _chunk(b"IEND", b"")
    filters = allowed_filters(height, width)
    strategy = zlib.Z_FILTERED if len(filters) > 1 else zlib.Z_DEFAULT_STRATEGY
    data_size = height * (1 + width * channels)
    window_bits = _window_bits(data_size)
    batch = max(1, filter_batch_bytes // (height * width * channels))
    files = []
    for start in range(0, count, batch):
        for rows in filtered_rows(images[start : start + batch], filters):
            compressor = zlib.compressobj(6, zlib.DEFLATED, window_bits, 9, strategy)
            stream = _smallest_window_header(compressor.compress(rows) + compressor.flush(), data_size)
            files.append(header + _idat_chunks(stream) + trailer)
    return files


def allowed_filters(height: int, width: int) -> tuple[int, ...]:
    """The filters libpng tries for an image of this size (those that can differ from None or Sub)."""
    filters = [NONE, SUB, UP, AVERAGE, PAETH]
    if height == 1:
        filters = [f for f in filters if f not in (UP, AVERAGE, PAETH)]
    if width == 1:
        filters = [f for f in filters if f not in (SUB, AVERAGE, PAETH)]
    return tuple(filters)


def filtered_rows(images: np.ndarray, filters: tuple[int, ...]) -> np.ndarray:
    """Each image's rows, each filtered by its best filter among `filters` and led by its filter byte.

    Args:
        images: uint8 [images, height, width, channels].
        filters: The filters to choose from (`allowed_filters`).

    Returns:
        uint8 [images, height * (1 + width * channels)]: the bytes zlib compresses.
    """
    count, height, width, channels = images.shape
    x = images.reshape(count, height, width * channels)
    left, up, up_left = (np.zeros_like(x) for _ in range(3))
    left[:, :, channels:] = x[:, :, :-channels]
    up[:, 1:] = x[:, :-1]
    up_left[:, 1:, channels:] = x[:, :-1, :-channels]
    candidates = np.empty((len(filters), *x.shape), np.uint8)
    for slot, kind in enumerate(filters):
        candidates[slot] = x - _prediction(kind, left, up, up_left)  # modulo 256, as PNG filters are
    magnitudes = np.minimum(candidates, 0 - candidates)  # a byte read as signed: |v| is v or 256 - v
    best = magnitudes.sum(axis=3, dtype=np.uint32).argmin(axis=0)  # argmin: the first filter on a tie
    out = np.empty((count, height, 1 + width * channels), np.uint8)
    out[:, :, 0] = np.asarray(filters, np.uint8)[best]
    out[:, :, 1:] = np.take_along_axis(candidates, best[np.newaxis, :, :, np.newaxis], axis=0)[0]
    return out.reshape(count, -1)


def _prediction(kind: int, left: np.ndarray, up: np.ndarray, up_left: np.ndarray) -> np.ndarray | int:
    if kind == NONE:
        return 0
    if kind == SUB:
        return left
    if kind == UP:
        return up
    if kind == AVERAGE:
        return ((left.astype(np.uint16) + up) >> 1).astype(np.uint8)
    # Paeth: of left, up and up-left, the one nearest to left + up - up_left (in that order on a tie).
    from_up, from_left = up.astype(np.int16) - up_left, left.astype(np.int16) - up_left
    distance_left, distance_up, distance_up_left = np.abs(from_up), np.abs(from_left), np.abs(from_up + from_left)
    return np.where(
        (distance_left <= distance_up) & (distance_left <= distance_up_left),
        left,
        np.where(distance_up <= distance_up_left, up, up_left),
    )


def _window_bits(data_size: int) -> int:
    """libpng's zlib window for `data_size` bytes of filtered rows: halved while they still fit."""
    bits = 15
    if data_size <= SMALL_IMAGE_BYTES:
        while data_size + ZLIB_LOOKAHEAD <= 1 << (bits - 1):
            bits -= 1
    return bits


def _smallest_window_header(stream: bytes, data_size: int) -> bytes:
    """The zlib stream with the header libpng writes: the smallest window that covers the data.

    Only the header changes (the window size it names, and its check bits); the deflate data
    is the same whatever window a decoder sets aside.
    """
    cmf = stream[0]
    if data_size > SMALL_IMAGE_BYTES or cmf & 0x0F != 8 or cmf & 0xF0 > 0x70:
        return stream
    window_log = cmf >> 4  # the window is 2 ** (window_log + 8)
    if data_size > 1 << (window_log + 7):
        return stream
    while window_log > 0 and data_size <= 1 << (window_log + 7):
        window_log -= 1
    cmf = (cmf & 0x0F) | (window_log << 4)
    flags = stream[1] & 0xE0
    flags += 0x1F - ((cmf << 8) + flags) % 0x1F
    return bytes((cmf, flags)) + stream[2:]


def _idat_chunks(stream: bytes) -> bytes:
    pieces = []
    for start in range(0, len(stream), IDAT_BYTES):
        piece = stream[start : start + IDAT_BYTES]
        pieces += [len(piece).to_bytes(4, "big"), b"IDAT", piece, zlib.crc32(piece, _IDAT_CRC).to_bytes(4, "big")]
    return b"".join(pieces)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
