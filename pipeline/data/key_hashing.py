"""TFDS's example-order hash of many keys at once: the MD5 of salt + decimal key, computed with numpy.

TFDS orders a split's examples by `tfds.core.hashing.Hasher(salt).hash_key(key)`: the MD5 of the
salt's UTF-8 bytes followed by the key's decimal digits, read as a 128-bit big-endian number.
`hashlib` takes about half a microsecond a key in a Python loop; here every key of a batch goes
through the 64 rounds of MD5 together (RFC 1321), each round one numpy operation on all of them,
which is about twice as fast. A salt and key that do not fit one MD5 block (55 bytes) go through
`hashlib`.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

BATCH_KEYS = 1 << 16  # keys hashed together: about 4 MB of message blocks
_BLOCK_BYTES = 64
_MAX_MESSAGE_BYTES = _BLOCK_BYTES - 9  # the 0x80 marker and the 8-byte bit length follow the message
_SHIFTS = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_SINES = [int(abs(math.sin(step + 1)) * 2**32) & 0xFFFFFFFF for step in range(64)]
_WORDS = [
    step if step < 16 else (5 * step + 1) % 16 if step < 32 else (3 * step + 5) % 16 if step < 48 else 7 * step % 16
    for step in range(64)
]
_INITIAL = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MAX_DIGITS = 19  # of a non-negative int64
_POWERS_OF_TEN = 10 ** np.arange(1, _MAX_DIGITS, dtype=np.int64)


def hash_keys(salt: str, keys: np.ndarray) -> np.ndarray:
    """Each key's TFDS hash (`Hasher(salt).hash_key(key)`) as 16 big-endian bytes (the MD5 digest).

    Args:
        salt: The salt (TFDS uses the split's name); backslashes count as slashes, as in TFDS.
        keys: Non-negative integer keys.

    Returns:
        uint8 [len(keys), 16]: row i is the digest for keys[i].

    Raises:
        ValueError: for a negative key.
    """
    prefix = salt.replace("\\", "/").encode("utf-8")
    keys = np.asarray(keys, np.int64).reshape(-1)
    if len(keys) and keys.min() < 0:
        raise ValueError("keys must be non-negative")
    out = np.empty((len(keys), 16), np.uint8)
    if len(prefix) + _MAX_DIGITS > _MAX_MESSAGE_BYTES:
        salted = hashlib.md5(prefix)
        for row, key in enumerate(keys.tolist()):
            md5 = salted.copy()
            md5.update(b"%d" % key)
            out[row] = np.frombuffer(md5.digest(), np.uint8)
        return out
    for start in range(0, len(keys), BATCH_KEYS):
        batch = keys[start : start + BATCH_KEYS]
        out[start : start + len(batch)] = _md5_of_blocks(_message_blocks(prefix, batch))
    return out


def _message_blocks(prefix: bytes, keys: np.ndarray) -> np.ndarray:
    """Each key's padded MD5 block (prefix, decimal digits, 0x80, zeros, bit length) as [n, 16] words."""
    count = len(keys)
    digit_counts = 1 + np.searchsorted(_POWERS_OF_TEN, keys, side="right")
    width = int(digit_counts.max()) if count else 1
    right_aligned = np.empty((count, width), np.uint8)
    remaining = keys.copy()
    for place in range(width - 1, -1, -1):
        remaining, digit = np.divmod(remaining, 10)
        right_aligned[:, place] = digit
    right_aligned += ord("0")
    place = np.arange(width)
    within = place < digit_counts[:, np.newaxis]
    digits = np.take_along_axis(right_aligned, np.minimum(place + (width - digit_counts)[:, np.newaxis], width - 1), 1)
    blocks = np.zeros((count, _BLOCK_BYTES), np.uint8)
    blocks[:, : len(prefix)] = np.frombuffer(prefix, np.uint8)
    blocks[:, len(prefix) : len(prefix) + width] = np.where(within, digits, 0)
    message_bytes = len(prefix) + digit_counts
    blocks[np.arange(count), message_bytes] = 0x80
    blocks[:, 56:] = (8 * message_bytes).astype("<u8").view(np.uint8).reshape(count, 8)
    return blocks.view("<u4")


def _md5_of_blocks(words: np.ndarray) -> np.ndarray:
    """MD5's compression of one block per row (RFC 1321) from the initial state: the digests, [n, 16] uint8."""
    count = len(words)
    message = np.ascontiguousarray(words.T, np.uint32)  # [16, n]: a word of every block per row
    a, b, c, d = (np.full(count, value, np.uint32) for value in _INITIAL)
    mixed = np.empty(count, np.uint32)
    spare = np.empty(count, np.uint32)
    for step in range(64):
        if step < 16:  # (b & c) | (~b & d)
            np.bitwise_and(b, c, out=mixed)
            np.invert(b, out=spare)
            np.bitwise_and(spare, d, out=spare)
            np.bitwise_or(mixed, spare, out=mixed)
        elif step < 32:  # (d & b) | (~d & c)
            np.bitwise_and(d, b, out=mixed)
            np.invert(d, out=spare)
            np.bitwise_and(spare, c, out=spare)
            np.bitwise_or(mixed, spare, out=mixed)
        elif step < 48:  # b ^ c ^ d
            np.bitwise_xor(b, c, out=mixed)
            np.bitwise_xor(mixed, d, out=mixed)
        else:  # c ^ (b | ~d)
            np.invert(d, out=spare)
            np.bitwise_or(b, spare, out=spare)
            np.bitwise_xor(c, spare, out=mixed)
        mixed += a
        mixed += np.uint32(_SINES[step])
        mixed += message[_WORDS[step]]
        shift = np.uint32(_SHIFTS[step])
        np.left_shift(mixed, shift, out=spare)
        mixed >>= np.uint32(32) - shift
        spare |= mixed  # rotated left
        a, d, c = d, c, b
        b = b + spare
    state = np.stack([a, b, c, d], axis=1) + np.asarray(_INITIAL, np.uint32)
    return state.astype("<u4").view(np.uint8).reshape(count, 16)
