"""`images:` sources: a folder of PNG/JPEG files, one subfolder per class.

Two layouts: `DIR/<class>/*` (one split, divided by `split_fractions` at ingest) and
`DIR/<split>/<class>/*` when every top-level folder is a split name (train, validation,
test, ...). Images are resized to one size (`image_size`, default the most common) and must
share one colour mode unless `image_mode` converts them all ('L' or 'RGB'). The images are
streamed: decoded a chunk (about 16 MiB of pixels) at a time, never held all at once.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataSourceError
from pipeline.core.problem import IMAGE_KEY
from pipeline.data import source_data
from pipeline.data.source_data import SourceData, text_column

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_NAMES = ("train", "validation", "test", "val", "valid", "dev", "eval")
LABEL_COLUMN = "label"
_CHANNELS = {"L": 1, "RGB": 3}


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    classes = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            files = sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataSourceError(f"{entry}: class folder holds no PNG or JPEG images")
            classes[entry.name] = files
    return classes


def find_images(folder: Path) -> dict[str, dict[str, list[Path]]]:
    """{split: {class: image files}} of an image folder (split 'data' when the folder has no split level).

    Raises:
        DataSourceError: if the folder is missing, has no class folders, or a class folder is empty.
    """
    if not folder.is_dir():
        raise DataSourceError(f"images:{folder}: no such folder")
    top = [e for e in sorted(folder.iterdir()) if e.is_dir() and not e.name.startswith(".")]
    if not top:
        raise DataSourceError(f"images:{folder}: no class folders (expected {folder}/<class>/*.png)")
    if all(entry.name.lower() in SPLIT_NAMES for entry in top):
        splits = {("validation" if e.name.lower() in ("val", "valid", "dev") else e.name.lower()): e for e in top}
        return {split: _class_folders(path) for split, path in splits.items()}
    return {"data": _class_folders(folder)}


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataSourceError(f"{path}: cannot decode the image ({err})") from None
    return image


def _target_mode_and_size(files: list[Path], mode: str, size: list[int] | None) -> tuple[str, tuple[int, int]]:
    """The colour mode and (height, width) every image is brought to; checks modes agree for 'auto'."""
    from PIL import Image, UnidentifiedImageError

    modes: dict[str, Path] = {}
    sizes: collections.Counter = collections.Counter()
    for path in files:
        try:
            with Image.open(path) as image:  # reads the header only
                modes.setdefault(image.mode, path)
                sizes[(image.height, image.width)] += 1
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataSourceError(f"{path}: cannot decode the image ({err})") from None
    if mode == "auto":
        if len(modes) > 1:
            (first_mode, first), (second_mode, second) = list(modes.items())[:2]
            raise DataSourceError(
                f"images have different colour modes: {first} is {first_mode}, {second} is {second_mode}; "
                "set image_mode to L or RGB to convert them all"
            )
        (mode,) = modes
        if mode not in _CHANNELS:
            raise DataSourceError(
                f"images are in colour mode {mode} (e.g. {modes[mode]}); set image_mode to L or RGB to convert them"
            )
    target = tuple(size) if size else sizes.most_common(1)[0][0]
    return mode, target


def _load(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with _open(path) as image:
        converted = image.convert(mode) if image.mode != mode else image
        if (converted.height, converted.width) != size:
            converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(converted, dtype=np.uint8)
    return array.reshape(size[0], size[1], _CHANNELS[mode])


def read_image_folder(folder: str | Path, image_mode: str, image_size: list[int] | None) -> SourceData:
    """An image folder as an 'images' column (uint8 [N,H,W,C]) and a 'label' column of class names, streamed.

    Only the file list and the labels are held; the images are decoded a chunk at a time
    whenever a split is streamed (`SourceData.stream`). For inference, `splits` holds every
    label and, in place of the images, a read-only view repeating the first image (inference
    needs only their shape).

    Args:
        folder: The folder.
        image_mode: 'L', 'RGB' or 'auto'.
        image_size: [height, width], or None for the most common size.

    Returns:
        One split per split folder, or one split called 'data'.

    Raises:
        DataSourceError: naming the file or folder: missing, empty, a corrupt image, or
            mixed colour modes with image_mode 'auto'. A corrupt image is found when the
            headers are read, or else when its chunk is decoded.
    """
    folder = Path(folder)
    layout = find_images(folder)
    every = [path for classes in layout.values() for files in classes.values() for path in files]
    mode, size = _target_mode_and_size(every, image_mode, image_size)
    first = _load(every[0], mode, size)
    rows = source_data.chunk_rows(first.nbytes)
    files = {
        split: [(path, class_name) for class_name, paths in classes.items() for path in paths]
        for split, classes in layout.items()
    }

    def stream(split: str, first_chunk: int = 0) -> Iterator[dict[str, np.ndarray]]:
        for start in range(first_chunk * rows, len(files[split]), rows):
            part = files[split][start : start + rows]
            yield {
                IMAGE_KEY: np.stack([_load(path, mode, size) for path, _ in part]),
                LABEL_COLUMN: text_column([name for _, name in part], LABEL_COLUMN, str(folder)),
            }

    log.info("found %d images (%s, %dx%d) in %s", len(every), mode, size[0], size[1], folder)
    return SourceData(
        name=folder.name or "images",
        splits={
            split: {
                IMAGE_KEY: np.broadcast_to(first, (len(pairs), *first.shape)),
                LABEL_COLUMN: text_column([name for _, name in pairs], LABEL_COLUMN, str(folder)),
            }
            for split, pairs in files.items()
        },
        columns=[IMAGE_KEY, LABEL_COLUMN],
        label_hint=LABEL_COLUMN,
        location=f"images:{folder}",
        stream=stream,
        reopen={},
    )
