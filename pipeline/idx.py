"""MNIST-format IDX files: a strict reader and a TFDS dataset builder over a folder of them.

MNIST, Fashion-MNIST, KMNIST and EMNIST ship as pairs of files such as
`train-images-idx3-ubyte.gz` / `train-labels-idx1-ubyte.gz`. `IdxFolderDataset`
turns such a folder into a prepared TFDS dataset, so the rest of the pipeline reads
IDX and `tfds:` sources through one format.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import zlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from pipeline.errors import DataSourceError

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
    ],  # fmt: skip
    "mnist": [str(d) for d in range(10)],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}


@dataclasses.dataclass(frozen=True)
class IdxSplitFiles:
    """The image and label files of one split."""

    split: str
    images: Path
    labels: Path


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except EOFError as err:
        raise DataSourceError(f"{path}: gzip file is truncated ({err})") from err
    except (gzip.BadGzipFile, zlib.error) as err:
        raise DataSourceError(f"{path}: corrupt gzip data ({err})") from err
    except OSError as err:
        raise DataSourceError(f"{path}: cannot read ({err.strerror or err})") from err


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


class IdxFolderDataset(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for a folder of MNIST-format IDX files (no download step)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Images and labels read from IDX files."}

    def __init__(
        self,
        *,
        source_dir: str | Path,
        class_names: list[str],
        image_shape: tuple[int, int, int],
        description: str = "",
        **kwargs,
    ):
        self._source_dir = Path(source_dir)
        self._class_names = list(class_names)
        self._image_shape = tuple(image_shape)
        self._description = description or f"IDX images and labels from {source_dir}"
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._description,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=self._image_shape, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=self._class_names),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=f"file://{self._source_dir}",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files: nothing to download.
        return {files.split: self._generate_examples(files) for files in find_split_files(self._source_dir)}

    def _generate_examples(self, files: IdxSplitFiles):
        images, labels = read_split(files, num_classes=len(self._class_names))
        for index in range(images.shape[0]):
            yield index, {"image": images[index], "label": int(labels[index])}
