"""The model repository: numbered SavedModel versions under `<model_base_path>/<model_name>/`.

The one home for what the repository holds and how it changes: which folders are
versions (ASCII digits only, as TF Serving parses them), the serving signature's names,
where class names, warmup requests and the model card live inside a version, the
publish lock, publishing and pruning, and predicting with a published SavedModel.

TF Serving loads any numeric version folder the moment it appears, so a version is
written into a `.tmp-*` sibling on the same file system and renamed to the next integer
only when complete. Versions are never overwritten.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import TMP_PREFIX, atomic_write_json, file_lock, fsync_dir, fsync_tree, read_json
from pipeline.core.errors import ExportError

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
# Signatures on serialized tf.Example for TF Serving's Classify and Regress APIs (tables, not images).
CLASSIFY_SIGNATURE = "classification"
REGRESS_SIGNATURE = "regression"
EXAMPLES_INPUT = "inputs"
CLASS_NAMES_ASSET = "class_names.txt"
WARMUP_FILE = "tf_serving_warmup_requests"
MODEL_CARD = "model_card.json"
LOCK_FILE = ".publish.lock"
_VERSION_NAME = re.compile(r"[0-9]+")


def is_version_name(name: str) -> bool:
    """Whether a folder name is a version number (ASCII digits only; '²' or '١' are not)."""
    return _VERSION_NAME.fullmatch(name) is not None


def published_versions(model_dir: str | Path) -> list[int]:
    """Returns the numeric version folders under a model folder, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if is_version_name(p.name) and p.is_dir())


def class_names_path(version_dir: str | Path) -> Path:
    """`<version>/assets/class_names.txt`."""
    return Path(version_dir) / "assets" / CLASS_NAMES_ASSET


def warmup_path(version_dir: str | Path) -> Path:
    """`<version>/assets.extra/tf_serving_warmup_requests`, which TF Serving replays on load."""
    return Path(version_dir) / "assets.extra" / WARMUP_FILE


def model_card_path(version_dir: str | Path) -> Path:
    """`<version>/assets.extra/model_card.json`."""
    return Path(version_dir) / "assets.extra" / MODEL_CARD


def read_class_names(version_dir: str | Path) -> list[str]:
    """Reads the class names stored in an exported model's assets."""
    return [line for line in class_names_path(version_dir).read_text().splitlines() if line]


def read_model_card(version_dir: str | Path) -> dict[str, Any] | None:
    """Returns a version's model card, or None if it has none."""
    path = model_card_path(version_dir)
    return read_json(path) if path.exists() else None


def predict_saved_model(
    version_dir: str | Path, inputs: dict[str, np.ndarray], batch_size: int = 1024
) -> dict[str, np.ndarray]:
    """Calls a published SavedModel's serving signature in-process.

    Args:
        version_dir: A version folder.
        inputs: {input name: values}, as a client sends them (images uint8, text as str or bytes).
        batch_size: Rows per signature call.

    Returns:
        Every output of the signature over all rows (e.g. `probabilities`, `class_ids`,
        `class_names` for classification, `predictions` for regression).
    """
    return call_signature(load_signature(version_dir), inputs, batch_size)


def load_signature(version_dir: str | Path):
    """A published SavedModel's serving signature, loaded in-process (call it with `call_signature`)."""
    import tensorflow as tf

    return tf.saved_model.load(str(version_dir)).signatures[SIGNATURE]


def call_signature(serve, inputs: dict[str, np.ndarray], batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Calls a loaded serving signature over all rows, `batch_size` rows per call."""
    import tensorflow as tf

    rows = len(next(iter(inputs.values())))
    batches = [
        serve(**{name: tf.constant(values[start : start + batch_size]) for name, values in inputs.items()})
        for start in range(0, rows, batch_size)
    ]
    return {name: np.concatenate([batch[name].numpy() for batch in batches]) for name in batches[0]}


def answers(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """What a model answered per row: class ids (classification) or predicted values (regression)."""
    return np.asarray(outputs["class_ids"] if "class_ids" in outputs else outputs["predictions"])


def read_warmup_records(version_dir: str | Path) -> list:
    """Returns a version's warmup records as `PredictionLog`s (none if it has no file)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(version_dir)
    if not path.exists():
        return []
    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy()) for record in tf.data.TFRecordDataset(str(path))
    ]


@contextmanager
def publish_lock(model_dir: str | Path) -> Iterator[None]:
    """Holds the model folder's lock, so concurrent exporters and pruners never collide."""
    with file_lock(Path(model_dir) / LOCK_FILE):
        yield


def ensure_writable(model_dir: str | Path) -> None:
    """Checks that versions can be created under `model_dir`.

    Raises:
        ExportError: naming the path and the reason, if it cannot be written.
    """
    model_dir = Path(model_dir)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        probe = model_dir / f"{TMP_PREFIX}probe-{uuid.uuid4().hex}"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise ExportError(
            f"model base path {model_dir.parent} is not writable ({err.strerror or err} at {err.filename or model_dir})"
        ) from err


def check_complete(folder: Path) -> None:
    """Checks that a SavedModel folder has its graph and, if it has variables, their index and data.

    Raises:
        ExportError: naming what is missing.
    """
    graph = folder / "saved_model.pb"
    if not graph.is_file() or graph.stat().st_size == 0:
        raise ExportError(f"{folder} is not a complete SavedModel: saved_model.pb is missing or empty")
    variables = folder / "variables"
    if variables.exists():
        index = variables / "variables.index"
        shards = list(variables.glob("variables.data-*"))
        if not index.is_file() or not shards:
            raise ExportError(f"{folder} is not a complete SavedModel: variables index or data missing")


def verify_saved_model(folder: Path, inputs: dict[str, np.ndarray]) -> None:
    """Loads a SavedModel and runs its serving signature on `inputs`, as a server's load would.

    Raises:
        ExportError: if it does not load or answer with one row per input row.
    """
    check_complete(folder)
    rows = len(next(iter(inputs.values())))
    try:
        outputs = predict_saved_model(folder, inputs)
    except Exception as err:  # noqa: BLE001  (any failure means: do not publish)
        raise ExportError(f"{folder} does not load and answer: {type(err).__name__}: {err}") from err
    answered = len(answers(outputs))
    if answered != rows:
        raise ExportError(f"{folder} answered {answered} rows for {rows} inputs")


def publish_version(staging: Path, model_dir: Path, card: dict[str, Any]) -> tuple[int, Path]:
    """Renames a complete staging folder to the next free integer version.

    The model card (with the version number) is written into the staging folder
    under the lock, just before the rename, after checking the folder is still complete.

    Returns:
        (version number, version folder).

    Raises:
        ExportError: if the version folder appeared concurrently.
    """
    with publish_lock(model_dir):
        check_complete(staging)
        versions = published_versions(model_dir)
        version = (versions[-1] + 1) if versions else 1
        final = model_dir / str(version)
        atomic_write_json(model_card_path(staging), {**card, "version": version})
        fsync_tree(staging)
        try:
            os.rename(staging, final)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ExportError(f"version folder {final} appeared concurrently; not overwriting it") from err
            raise
        fsync_dir(model_dir)
    log.info("published %s", final)
    return version, final


def prune_versions(model_dir: Path, keep: int, protected: Iterable[int] = ()) -> list[int]:
    """Deletes all but the newest `keep` versions, never those in `protected`.

    Each old version is first renamed to a `.tmp-*` name, so a server polling the
    folder sees it disappear at once rather than half-deleted.

    Returns:
        The removed version numbers.
    """
    protected = set(protected)
    with publish_lock(model_dir):
        versions = published_versions(model_dir)
        doomed = [v for v in versions[:-keep] if v not in protected] if len(versions) > keep else []
        for version in doomed:
            trash = model_dir / f"{TMP_PREFIX}deleted-{version}-{uuid.uuid4().hex[:6]}"
            os.rename(model_dir / str(version), trash)
            shutil.rmtree(trash, ignore_errors=True)
            log.info("removed old version %s/%d", model_dir, version)
    return doomed
