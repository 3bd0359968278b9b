"""TFRecord files without TensorFlow: framing records to write, and reading them back checked.

A TFRecord file is a sequence of frames, each: the record's length (uint64), the length's
masked CRC-32C, the record, and the record's masked CRC-32C (all little-endian). This is what
`tf.io.TFRecordWriter` writes and `tf.data.TFRecordDataset` reads; the snapshot's shards are
such files. Reading checks both checksums, as TensorFlow's reader does, and names the byte
offset TensorFlow names for the first frame that does not check out. A file cut inside a
frame's length is an error here; TensorFlow takes it for the end of the file.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import crc32c
import numpy as np

from pipeline.data.byte_columns import Ragged, join_rows

HEADER_BYTES = 12  # the length and its checksum
FOOTER_BYTES = 4
READ_BLOCK_BYTES = 4 << 20
_LENGTH = struct.Struct("<Q")


class CorruptRecordError(Exception):
    """A frame of a TFRecord file that does not read back.

    Attributes:
        path: The file.
        offset: The byte offset TensorFlow's reader names: the frame's (its length field's), or
            for a record whose checksum does not match, the record's.
        reason: What is wrong with it.
    """

    def __init__(self, path: Path, offset: int, reason: str):
        super().__init__(f"{path}: corrupt record at byte {offset} ({reason})")
        self.path = Path(path)
        self.offset = offset
        self.reason = reason


def masked_crcs(crcs: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC: rotated right by 15 bits plus a constant (little-endian uint32)."""
    crcs = crcs.astype(np.uint32)
    return (((crcs >> np.uint32(15)) | (crcs << np.uint32(17))) + np.uint32(0xA282EAD8)).astype("<u4")


def frames(records: Ragged) -> bytes:
    """The records framed as a TFRecord file frames them (the bytes `tf.io.TFRecordWriter` writes)."""
    count = len(records.lengths)
    if not count:
        return b""
    record_crcs = np.fromiter(map(crc32c.crc32c, records.to_arrow().to_pylist()), np.uint32, count)
    headers = np.empty((count, HEADER_BYTES), np.uint8)
    headers[:, :8] = records.lengths.astype("<u8").view(np.uint8).reshape(count, 8)
    headers[:, 8:] = _length_crcs(records.lengths).view(np.uint8).reshape(count, 4)
    footers = masked_crcs(record_crcs).view(np.uint8).reshape(count, 4)
    return join_rows([Ragged.fixed(headers), records, Ragged.fixed(footers)]).data.tobytes()


def read_records(
    path: Path, skip: int = 0, take: int | None = None, batch_records: int = 4096
) -> Iterator[tuple[Ragged, np.ndarray]]:
    """Reads a TFRecord file's records a batch at a time, checking every frame.

    The file is read in blocks of `READ_BLOCK_BYTES` (or one frame, if larger), so memory
    holds a block and a batch whatever the file's size. Only the walk from one frame to the
    next is a Python loop; the checks and the copies are numpy's, a batch at a time.

    Args:
        path: The file.
        skip: Records to pass over first (their frames are checked too).
        take: Records to read after those; None: to the end of the file.
        batch_records: Records per batch (at most).

    Yields:
        (records, offsets): the records, and each one's frame offset in the file.

    Raises:
        CorruptRecordError: naming the first frame whose length or checksum is wrong, that is
            cut short, or, where `take` is given, the end of a file that holds fewer records.
    """
    path = Path(path)
    wanted = None if take is None else skip + take
    index = 0
    with open(path, "rb") as handle:
        buffer, base, position = b"", 0, 0
        while wanted is None or index < wanted:
            count = batch_records if wanted is None else min(batch_records, wanted - index)
            starts = _walk(buffer, position, count)
            if not starts:
                buffer, base, position = buffer[position:], base + position, 0
                more = handle.read(max(READ_BLOCK_BYTES, _frame_bytes(buffer, path, base) - len(buffer)))
                if not more:
                    if buffer:
                        raise CorruptRecordError(path, base, "the file ends inside a record")
                    if wanted is not None:
                        raise CorruptRecordError(path, base, f"the file ends after {index} of {wanted} records")
                    break
                buffer += more
                continue
            records, ends = _checked(path, buffer, base, starts)
            position = ends[-1]
            first = max(0, skip - index)
            index += len(starts)
            if first < len(starts):
                yield records.rows(first, len(starts)), np.asarray(starts[first:], np.int64) + base


def _walk(buffer: bytes, position: int, count: int) -> list[int]:
    """The offsets of up to `count` whole frames in the buffer from `position` (the length unchecked)."""
    starts = []
    limit = len(buffer)
    unpack = _LENGTH.unpack_from
    while len(starts) < count and position + HEADER_BYTES <= limit:
        end = position + HEADER_BYTES + unpack(buffer, position)[0] + FOOTER_BYTES
        if end > limit:
            break
        starts.append(position)
        position = end
    return starts


def _frame_bytes(buffer: bytes, path: Path, base: int) -> int:
    """How long the frame at the buffer's start is, once its length's checksum is checked (0: no whole length yet)."""
    if len(buffer) < HEADER_BYTES:
        return 0
    if not _length_checks_out(buffer[:HEADER_BYTES]):
        raise CorruptRecordError(path, base, "the record length's checksum does not match")
    return HEADER_BYTES + _LENGTH.unpack_from(buffer)[0] + FOOTER_BYTES


def _length_checks_out(header: bytes) -> bool:
    return _length_crcs(np.asarray([_LENGTH.unpack_from(header)[0]])).tobytes() == header[8:HEADER_BYTES]


def _length_crcs(lengths: np.ndarray) -> np.ndarray:
    """The masked CRC-32C of each record length's 8 bytes (one CRC per distinct length)."""
    unique, which = np.unique(lengths, return_inverse=True)
    crcs = np.fromiter((crc32c.crc32c(int(n).to_bytes(8, "little")) for n in unique.tolist()), np.uint32, len(unique))
    return masked_crcs(crcs)[which.reshape(-1)]


def _checked(path: Path, buffer: bytes, base: int, starts: list[int]) -> tuple[Ragged, list[int]]:
    """The frames' records as a `Ragged`, and where each frame ends, once every checksum matches."""
    data = np.frombuffer(buffer, np.uint8)
    offsets = np.asarray(starts, np.int64)
    headers = data[offsets[:, np.newaxis] + np.arange(HEADER_BYTES)]
    lengths = np.ascontiguousarray(headers[:, :8]).view("<u8").reshape(-1).astype(np.int64)
    wrong = np.flatnonzero(_length_crcs(lengths) != np.ascontiguousarray(headers[:, 8:]).view("<u4").reshape(-1))
    if len(wrong):
        raise CorruptRecordError(path, base + starts[wrong[0]], "the record length's checksum does not match")
    record_starts = offsets + HEADER_BYTES
    ends = record_starts + lengths + FOOTER_BYTES
    footers = np.ascontiguousarray(data[(ends - FOOTER_BYTES)[:, np.newaxis] + np.arange(FOOTER_BYTES)]).view("<u4")
    view = memoryview(buffer)
    computed = np.fromiter(
        (crc32c.crc32c(view[a:b]) for a, b in zip(record_starts.tolist(), (ends - FOOTER_BYTES).tolist(), strict=True)),
        np.uint32,
        len(starts),
    )
    wrong = np.flatnonzero(masked_crcs(computed) != footers.reshape(-1))
    if len(wrong):
        offset = base + starts[wrong[0]] + HEADER_BYTES  # the record's own offset, as TensorFlow names it
        raise CorruptRecordError(path, offset, "the record's checksum does not match")
    return _records(view, record_starts, lengths), ends.tolist()


def _records(view: memoryview, starts: np.ndarray, lengths: np.ndarray) -> Ragged:
    """The records at these offsets of consecutive frames, without the frames' headers and footers."""
    first = int(starts[0]) - HEADER_BYTES
    width = int(lengths[0])
    if (lengths == width).all():  # frames of one size: a table's rows, often
        frames = np.frombuffer(view[first : first + len(starts) * (width + HEADER_BYTES + FOOTER_BYTES)], np.uint8)
        table = frames.reshape(len(starts), -1)[:, HEADER_BYTES : HEADER_BYTES + width]
        return Ragged.fixed(table)
    pieces = [view[a:b] for a, b in zip(starts.tolist(), (starts + lengths).tolist(), strict=True)]
    return Ragged(np.frombuffer(b"".join(pieces), np.uint8), lengths)


def first_corrupt_record(path: Path) -> CorruptRecordError | None:
    """Reads a whole file; returns what is wrong with its first bad frame, or None if all check out."""
    try:
        for _ in read_records(path, batch_records=65536):
            pass
    except CorruptRecordError as err:
        return err
    return None
