"""`images:` sources: a folder of PNG/JPEG files, one subfolder per class.

Two layouts: `DIR/<class>/*` (one split, divided by `split_fractions` at ingest) and
`DIR/<split>/<class>/*` when every top-level folder is a split name (train, validation,
test, ...). Images are resized to one size (`image_size`, default the most common) and must
share one colour mode unless `image_mode` converts them all ('L' or 'RGB'). The images are
streamed: decoded a chunk (about 16 MiB of pixels) at a time, never held all at once; large
images on every core (`threads`: PIL decodes without the GIL).
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataSourceError, SourceChangedError
from pipeline.core.problem import IMAGE_KEY
from pipeline.data import source_data
from pipeline.data.source_data import SourceData, text_column
from pipeline.data.threads import thread_map

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_NAMES = ("train", "validation", "test", "val", "valid", "dev", "eval")
LABEL_COLUMN = "label"
_CHANNELS = {"L": 1, "RGB": 3}
DECODE_PROBE = 8  # images of a chunk decoded one by one and timed first (`_decoded`)
PARALLEL_DECODE_S = 150e-6  # decoding in threads when an image takes longer


def _class_folders(folder: Path, root: Path) -> dict[str, list[list]]:
    """{class: its images' entries (`_image_entries`), in path order} of the class folders in `folder`."""
    classes = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            found = sorted(_image_entries(str(entry)), key=lambda item: item[0].split(os.sep))
            if not found:
                raise DataSourceError(f"{entry}: class folder holds no PNG or JPEG images")
            prefix, under = entry.relative_to(root).as_posix(), len(str(entry))  # found paths start with str(entry)
            classes[entry.name] = [
                [prefix + path[under:].replace(os.sep, "/"), entry.name, size, mtime] for path, size, mtime in found
            ]
    return classes


def _image_entries(directory: str) -> Iterator[tuple[str, int, int]]:
    """(path, size, modification time in ns) of every PNG/JPEG file under `directory`.

    One `scandir` per folder and one `stat` per image: a folder of a million images is listed
    in seconds. Links to folders are not followed (as `Path.rglob`); links to files are.
    """
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _image_entries(entry.path)
            elif entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                stat = entry.stat()
                yield entry.path, stat.st_size, stat.st_mtime_ns


def find_images(folder: Path) -> dict[str, dict[str, list[list]]]:
    """{split: {class: image entries}} of an image folder (split 'data' when the folder has no split level).

    An entry is [path under the folder (with '/'), class, size, modification time (ns)]: what
    a later read checks the file against (`_unchanged`).

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
        return {split: _class_folders(path, folder) for split, path in splits.items()}
    return {"data": _class_folders(folder, folder)}


def _open(path: str | Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataSourceError(f"{path}: cannot decode the image ({err})") from None
    return image


def _target_mode_and_size(files: list[str], mode: str, size: list[int] | None) -> tuple[str, tuple[int, int]]:
    """The colour mode and (height, width) every image is brought to; checks modes agree for 'auto'."""
    from PIL import Image, UnidentifiedImageError

    modes: dict[str, str] = {}
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


def _load(path: str, mode: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with _open(path) as image:
        converted = image.convert(mode) if image.mode != mode else image
        if (converted.height, converted.width) != size:
            converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(converted, dtype=np.uint8)
    return array.reshape(size[0], size[1], _CHANNELS[mode])


def read_image_folder(
    folder: str | Path, image_mode: str, image_size: list[int] | None, reopen: dict | None = None
) -> SourceData:
    """An image folder as an 'images' column (uint8 [N,H,W,C]) and a 'label' column of class names, streamed.

    Only the file list and the labels are held; the images are decoded a chunk at a time
    whenever a split is streamed (`SourceData.stream`). For inference, `splits` holds every
    label and, in place of the images, a read-only view repeating one blank image (inference
    needs only their shape). Each file's size and modification time are taken when the folder
    is listed and checked before the file is decoded, on this read and on every reopened one:
    a snapshot never mixes two versions of an image.

    Args:
        folder: The folder.
        image_mode: 'L', 'RGB' or 'auto'.
        image_size: [height, width], or None for the most common size.
        reopen: `SourceData.reopen` of an earlier read: its file list, mode and size are
            taken as they are (the folder is neither listed nor its headers read again, which
            for a large folder is most of a small part's work).

    Returns:
        One split per split folder, or one split called 'data'.

    Raises:
        DataSourceError: naming the file or folder: missing, empty, a corrupt image, or
            mixed colour modes with image_mode 'auto'. A corrupt image is found when the
            headers are read, or else when its chunk is decoded. `SourceChangedError` for a
            file changed or removed since it was listed.
    """
    folder = Path(folder)
    if reopen and "files" in reopen:
        mode, size, files = reopen["mode"], tuple(reopen["size"]), reopen["files"]
    else:
        files = {
            split: [e for entries in classes.values() for e in entries]
            for split, classes in find_images(folder).items()
        }
        every = [os.path.join(folder, entry[0]) for entries in files.values() for entry in entries]
        mode, size = _target_mode_and_size(every, image_mode, image_size)
        log.info("found %d images (%s, %dx%d) in %s", len(every), mode, size[0], size[1], folder)
    rows = source_data.chunk_rows(size[0] * size[1] * _CHANNELS[mode])

    def stream(split: str, first_chunk: int = 0) -> Iterator[dict[str, np.ndarray]]:
        for start in range(first_chunk * rows, len(files[split]), rows):
            part = files[split][start : start + rows]
            yield {
                IMAGE_KEY: np.stack(_decoded(folder, part, mode, size)),
                LABEL_COLUMN: text_column([entry[1] for entry in part], LABEL_COLUMN, str(folder)),
            }

    blank = np.zeros((*size, _CHANNELS[mode]), np.uint8)  # inference reads only the shape
    return SourceData(
        name=folder.name or "images",
        splits={
            split: {
                IMAGE_KEY: np.broadcast_to(blank, (len(entries), *blank.shape)),
                LABEL_COLUMN: text_column([entry[1] for entry in entries], LABEL_COLUMN, str(folder)),
            }
            for split, entries in files.items()
        },
        columns=[IMAGE_KEY, LABEL_COLUMN],
        label_hint=LABEL_COLUMN,
        location=f"images:{folder}",
        stream=stream,
        reopen={"mode": mode, "size": list(size), "files": files},
    )


def _decoded(folder: Path, entries: list[list], mode: str, size: tuple[int, int]) -> list[np.ndarray]:
    """The entries' images, brought to the mode and size; in threads when one takes long to decode.

    PIL decodes without the GIL, but opening a file and reading its header hold it: threads
    only pay off for images that take over `PARALLEL_DECODE_S` each (about 96x96 pixels on the
    CI machine; a 28x28 PNG takes 50 µs and threads make it twice as slow). The first few
    images of each chunk are timed to tell.
    """

    def load(entry: list) -> np.ndarray:
        return _load(_unchanged(folder, entry), mode, size)

    started = time.perf_counter()
    timed = [load(entry) for entry in entries[:DECODE_PROBE]]
    each = (time.perf_counter() - started) / max(1, len(timed))
    rest = entries[DECODE_PROBE:]
    return timed + (thread_map(load, rest) if each >= PARALLEL_DECODE_S else [load(entry) for entry in rest])


def _unchanged(folder: Path, entry: list) -> str:
    """The entry's file (`find_images`), checked to be the one listed.

    Raises:
        SourceChangedError: if it was removed, or its size or modification time changed.
    """
    path = os.path.join(folder, entry[0])
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise SourceChangedError(f"{path}: removed since the folder was listed") from None
    if (stat.st_size, stat.st_mtime_ns) != (entry[2], entry[3]):
        raise SourceChangedError(f"{path}: changed since the folder was listed (its size or modification time)")
    return path
