"""MNIST-format IDX files: the one strict reader (and a writer) of the project.

MNIST, Fashion-MNIST, KMNIST and EMNIST ship as pairs of files such as
`train-images-idx3-ubyte.gz` / `train-labels-idx1-ubyte.gz`. Ingest, the demo, the
benchmarks and the tests all read them through this module; ingest turns such a
folder into a prepared TFDS dataset.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import zlib
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataSourceError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_FILE_PATTERN = re.compile(r"^(?P<prefix>.+)-(?P<kind>images-idx3|labels-idx1)-ubyte(?:\.gz)?$")
_SPLIT_ALIASES = {"t10k": "test", "test": "test", "train": "train"}

KNOWN_CLASS_NAMES = {
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "mnist": [str(d) for d in range(10)],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}


@dataclasses.dataclass(frozen=True)
class IdxSplitFiles:
    """The image and label files of one split."""

    split: str
    images: Path
    labels: Path


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Reads one IDX file of unsigned bytes, checking its header against its size.

    Args:
        path: An IDX file, gzip-compressed if its name ends in `.gz`.
        expected_magic: `IMAGES_MAGIC` or `LABELS_MAGIC`.

    Returns:
        A uint8 array shaped as the header declares.

    Raises:
        DataSourceError: naming the file, if it is unreadable, truncated, corrupt, or
            its magic number or declared shape does not match.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataSourceError(f"{path}: file too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataSourceError(f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = expected_magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataSourceError(f"{path}: IDX header truncated ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_size = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected_size:
        raise DataSourceError(
            f"{path}: header declares shape {shape} ({expected_size} bytes) but the file holds {len(data)} bytes"
        )
    return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def _open(path: Path):
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as err:
        raise DataSourceError(f"{path}: cannot read ({err.strerror or err})") from err


def _read_chunk(handle, path: Path, size: int, offset: int | None) -> bytes:
    """Reads up to `size` bytes (all with -1) at uncompressed `offset`, naming the file (and the
    offset, when given) when it fails."""
    where = f"at byte {offset} of its content: " if offset is not None else ""
    try:
        return handle.read(size)
    except EOFError as err:
        raise DataSourceError(f"{path}: gzip file is truncated ({where}{err})") from err
    except (gzip.BadGzipFile, zlib.error) as err:
        raise DataSourceError(f"{path}: corrupt gzip data ({where}{err})") from err
    except OSError as err:
        raise DataSourceError(f"{path}: cannot read ({where}{err.strerror or err})") from err


def _read_bytes(path: Path) -> bytes:
    with _open(path) as handle:
        return _read_chunk(handle, path, -1, None)


def _header(handle, path: Path, expected_magic: int) -> tuple[int, ...]:
    head = _read_chunk(handle, path, 4, 0)
    if len(head) < 4:
        raise DataSourceError(f"{path}: file too short for an IDX header ({len(head)} bytes)")
    magic = int.from_bytes(head, "big")
    if magic != expected_magic:
        raise DataSourceError(f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = expected_magic & 0xFF
    dims = _read_chunk(handle, path, 4 * ndim, 4)
    if len(dims) < 4 * ndim:
        raise DataSourceError(f"{path}: IDX header truncated ({4 + len(dims)} bytes)")
    return tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))


def iter_images(path: str | Path, rows: int):
    """Reads an images IDX file `rows` images at a time, in bounded memory.

    Args:
        path: An images IDX file (gzip-compressed if its name ends in `.gz`).
        rows: Images per chunk.

    Yields:
        uint8 arrays [n, H, W], n <= rows.

    Raises:
        DataSourceError: naming the file: a bad header, corrupt or truncated data (with the
            byte offset), or content longer or shorter than the header declares.
    """
    path = Path(path)
    with _open(path) as handle:
        shape = _header(handle, path, IMAGES_MAGIC)
        header_size = 4 + 4 * len(shape)
        image_size = int(np.prod(shape[1:], dtype=np.int64))
        offset = header_size
        for start in range(0, shape[0], rows):
            count = min(rows, shape[0] - start)
            data = _read_chunk(handle, path, count * image_size, offset)
            offset += len(data)
            if len(data) < count * image_size:
                raise DataSourceError(
                    f"{path}: header declares shape {shape} ({header_size + shape[0] * image_size} bytes) "
                    f"but the file holds {offset} bytes"
                )
            yield np.frombuffer(data, np.uint8).reshape(count, *shape[1:])
        extra = len(_read_chunk(handle, path, 1 << 20, offset))
        if extra:
            raise DataSourceError(
                f"{path}: header declares shape {shape} ({offset} bytes) but the file holds more "
                f"({offset + extra} bytes or more)"
            )


def content_size(path: str | Path) -> int:
    """The uncompressed size of a file, read through once in bounded memory."""
    path = Path(path)
    size = 0
    with _open(path) as handle:
        while chunk := _read_chunk(handle, path, 16 << 20, size):
            size += len(chunk)
    return size


def check_split(files: IdxSplitFiles) -> tuple[int, tuple[int, ...]]:
    """Checks a split's files without holding its images: headers, sizes and counts.

    Returns:
        (number of images, image shape (H, W)).

    Raises:
        DataSourceError: on any format problem or count mismatch, naming the file.
    """
    with _open(files.images) as handle:
        shape = _header(handle, files.images, IMAGES_MAGIC)
    with _open(files.labels) as handle:
        (label_count,) = _header(handle, files.labels, LABELS_MAGIC)
    size = content_size(files.images)
    expected = 4 + 4 * len(shape) + int(np.prod(shape, dtype=np.int64))
    if size != expected:
        raise DataSourceError(
            f"{files.images}: header declares shape {shape} ({expected} bytes) but the file holds {size} bytes"
        )
    if shape[0] != label_count:
        raise DataSourceError(
            f"split {files.split!r}: {files.images.name} has {shape[0]} images but "
            f"{files.labels.name} has {label_count} labels"
        )
    if shape[0] == 0:
        raise DataSourceError(f"split {files.split!r}: {files.images.name} holds no images")
    if min(shape[1:]) == 0:
        raise DataSourceError(f"{files.images}: image shape {shape[1:]} is empty")
    return shape[0], tuple(shape[1:])


def find_split_files(folder: str | Path) -> list[IdxSplitFiles]:
    """Finds the image/label file pairs in a folder.

    Args:
        folder: A folder such as `/usr/share/datasets/fashion-mnist`.

    Returns:
        One entry per split, sorted by split name ('t10k' is named 'test').

    Raises:
        DataSourceError: if the folder is missing, holds no IDX files, or a split
            lacks its images or labels file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataSourceError(f"IDX data folder {folder} does not exist")
    found: dict[str, dict[str, Path]] = {}
    for entry in sorted(folder.iterdir()):
        match = _FILE_PATTERN.match(entry.name)
        if match and entry.is_file():
            prefix = match["prefix"]
            tail = prefix.rsplit("-", 1)[-1]
            split = _SPLIT_ALIASES.get(tail, re.sub(r"[^A-Za-z0-9_]", "_", prefix))
            kind = "images" if match["kind"].startswith("images") else "labels"
            if kind in found.setdefault(split, {}):
                raise DataSourceError(
                    f"{folder}: two {kind} files for split {split!r}: {found[split][kind].name} and {entry.name}"
                )
            found[split][kind] = entry
    if not found:
        raise DataSourceError(
            f"IDX data folder {folder} holds no '*-images-idx3-ubyte[.gz]' / '*-labels-idx1-ubyte[.gz]' files"
        )
    pairs = []
    for split, kinds in sorted(found.items()):
        for kind in ("images", "labels"):
            if kind not in kinds:
                raise DataSourceError(f"{folder}: split {split!r} has no {kind} file")
        pairs.append(IdxSplitFiles(split, kinds["images"], kinds["labels"]))
    return pairs


def read_split(files: IdxSplitFiles, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads and cross-checks one split.

    Args:
        files: The split's image and label files.
        num_classes: If given, every label must lie in [0, num_classes).

    Returns:
        (images [N, H, W, 1] uint8, labels [N] uint8).

    Raises:
        DataSourceError: on any format problem, count mismatch or label out of range.
    """
    images = read_idx(files.images, IMAGES_MAGIC)
    labels = read_idx(files.labels, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataSourceError(
            f"split {files.split!r}: {files.images.name} has {images.shape[0]} images but "
            f"{files.labels.name} has {labels.shape[0]} labels"
        )
    if images.shape[0] == 0:
        raise DataSourceError(f"split {files.split!r}: {files.images.name} holds no images")
    if min(images.shape[1:]) == 0:
        raise DataSourceError(f"{files.images}: image shape {images.shape[1:]} is empty")
    if num_classes is not None and labels.size and int(labels.max()) >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataSourceError(
            f"{files.labels}: label {int(labels[bad])} at index {bad} is outside the class range 0..{num_classes - 1}"
        )
    return images[..., np.newaxis], labels


def resolve_class_names(folder: Path, labels: list[np.ndarray], configured: list[str] | None) -> list[str]:
    """Chooses class names: configured, `class_names.txt` in the folder, known, or digits.

    Args:
        folder: The IDX folder.
        labels: Label arrays of every split (to size the default names).
        configured: Names from the config, which win when given.

    Returns:
        The class names, index i naming label i.
    """
    if configured:
        return list(configured)
    names_file = folder / "class_names.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if names:
            return names
    if folder.name in KNOWN_CLASS_NAMES:
        return list(KNOWN_CLASS_NAMES[folder.name])
    highest = max(int(array.max()) for array in labels if array.size)
    return [str(i) for i in range(highest + 1)]


def read_folder_split(folder: str | Path, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split of an IDX folder as plain arrays.

    Args:
        folder: An IDX folder such as `/usr/share/datasets/fashion-mnist`.
        split: 'train' or 'test' ('t10k' files are the 'test' split).
        limit: Keep only the first `limit` examples.

    Returns:
        (images [N, H, W] uint8, labels [N] uint8).

    Raises:
        DataSourceError: if the folder has no such split or its files are broken.
    """
    by_split = {files.split: files for files in find_split_files(folder)}
    if split not in by_split:
        raise DataSourceError(f"IDX data folder {folder} has no split {split!r} (found: {', '.join(by_split)})")
    images, labels = read_split(by_split[split])
    return images[:limit, ..., 0].copy(), labels[:limit].copy()


def write_idx(path: str | Path, array: np.ndarray, magic: int) -> Path:
    """Writes a uint8 array as an IDX file (gzip-compressed if the name ends in `.gz`)."""
    path = Path(path)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_idx_folder(folder: str | Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Writes {file prefix: (images [N,H,W], labels [N])} as an MNIST-style IDX folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in splits.items():
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, IMAGES_MAGIC)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, LABELS_MAGIC)
    return folder
