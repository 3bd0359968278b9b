"""Which model versions are loaded: config, version policies, labels, polling, hot swap.

Mirrors TF Serving's ServerCore with the file-system source and the
availability-preserving policy: a new version is loaded and warmed up before an old
one is unloaded, a version that fails to load is reported in the status and never
takes down what is already serving, and a config reload replaces the whole config.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import random
import re
import threading
import time
from pathlib import Path

import grpc

from serving.protocol import STABLE_LABEL, TRAFFIC_SPLIT_PREFIX, ServingError, invalid, traffic_split_percent
from serving.server import metrics
from serving.server.batching import BatchOptions
from serving.server.request_log import check_logging_config
from serving.server.servable import Servable

log = logging.getLogger("serving.server")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
_LABEL = re.compile(r"^[a-zA-Z0-9_]+$")


@dataclasses.dataclass
class VersionState:
    """What the server knows of one version of a model."""

    version: int
    path: Path
    state: str = START
    error: ServingError | None = None
    servable: Servable | None = None
    attempts: int = 0  # failed load attempts of the folder as it is now
    retry_at: float = 0.0  # monotonic time of the next attempt after a failure
    fingerprint: tuple = ()  # the folder's files (name, size, mtime) at the last attempt


@dataclasses.dataclass
class ManagedModel:
    """A model from the config and its versions."""

    config: object  # tensorflow.serving.ModelConfig
    versions: dict[int, VersionState] = dataclasses.field(default_factory=dict)
    labels: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name


def _check_traffic_labels(model) -> None:
    """Refuses a malformed traffic split: one `traffic_split_<0..100>` label at most, and a `stable` beside it."""
    splits = [label for label in model.version_labels if label.startswith(TRAFFIC_SPLIT_PREFIX)]
    for label in splits:
        percent = traffic_split_percent(label)
        if percent is None or percent > 100:
            raise invalid(f"Label {label!r} of model {model.name}: a traffic split is traffic_split_<0..100>")
    if len(splits) > 1:
        raise invalid(f"Model {model.name} has more than one traffic split label: {sorted(splits)}")
    if splits and STABLE_LABEL not in model.version_labels:
        raise invalid(f"Model {model.name}: label {splits[0]!r} needs a {STABLE_LABEL!r} label for the other requests")


def _routed_version(labels: dict[str, int]) -> int | None:
    """The version an unaddressed request goes to under a traffic split, or None (no split: the latest)."""
    for label, version in labels.items():
        percent = traffic_split_percent(label)
        if percent is not None:
            return version if random.random() * 100 < percent else labels[STABLE_LABEL]
    return None


def scan_versions(base_path: Path) -> dict[int, Path]:
    """Returns {version: folder} for folder names of ASCII digits; duplicates like 1/001 keep one."""
    found: dict[int, Path] = {}
    if not base_path.is_dir():
        return found
    for entry in sorted(base_path.iterdir()):
        if entry.name.isascii() and entry.name.isdigit() and entry.is_dir():  # '²'.isdigit() is True too
            version = int(entry.name)
            if version in found:
                log.warning(
                    "duplicate version folders %s and %s: ignoring the second",
                    found[version],
                    entry,
                    extra={"event": "duplicate_version", "model_path": str(base_path)},
                )
                continue
            found[version] = entry
    return found


def aspired_versions(policy, found: dict[int, Path]) -> set[int]:
    """Applies a ModelVersionPolicy (latest{n} by default) to the versions on disk."""
    choice = policy.WhichOneof("policy_choice") if policy is not None else None
    if choice == "all":
        return set(found)
    if choice == "specific":
        return set(policy.specific.versions) & set(found)
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return set(sorted(found)[-count:])


def folder_fingerprint(path: Path) -> tuple:
    """(relative name, size, mtime) of every file under `path`: changes when the folder does."""
    entries = []
    for file in sorted(path.rglob("*")):
        try:
            info = file.stat()
        except OSError:
            continue
        entries.append((str(file.relative_to(path)), info.st_size, info.st_mtime_ns))
    return tuple(entries)


def freeze_heap() -> None:
    """Moves every object alive now out of the garbage collector's reach.

    A loaded model leaves millions of Python objects (TensorFlow's graph and function
    wrappers); without this, each full collection that request parsing triggers walks them
    all and stalls every request thread for ~200 ms (seen as the REST p99 in bench/).
    """
    gc.freeze()


def _retire(box: list[Servable]) -> None:
    """Closes an unloaded version, then lets the collector reclaim what it leaves in cycles.

    The servable comes in a list this function empties, so the thread's own arguments do not
    keep it alive during the collection.
    """
    servable = box.pop()
    servable.close()
    del servable
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelManager:
    """Loads, serves and unloads model versions.

    Args:
        registry: Metrics registry.
        batch_options: Server-side batching options, or None.
        max_num_load_retries: Extra attempts after a failed load (TF Serving default 5).
        load_retry_interval_s: Seconds between attempts.
        allow_labels_for_unavailable: Let labels point at versions that are not loaded.
        enable_warmup: Replay assets.extra warmup requests before serving a version.
        method_name_check: Classify/Regress only on signatures of that method_name.
        saved_model_tags: Tags of the MetaGraph each version loads.
        warmup_iterations: Times each warmup record is replayed.
        max_rows_per_request: Most rows one predict request may carry (0: no limit).
    """

    def __init__(
        self,
        registry: metrics.Registry,
        batch_options: BatchOptions | None = None,
        max_num_load_retries: int = 5,
        load_retry_interval_s: float = 60.0,
        allow_labels_for_unavailable: bool = False,
        enable_warmup: bool = True,
        method_name_check: bool = False,
        saved_model_tags: tuple[str, ...] = ("serve",),
        warmup_iterations: int = 1,
        max_rows_per_request: int = 0,
    ):
        self._registry = registry
        registry.add_collector(self.queue_depths)
        self._batch_options = batch_options
        self._retries = max_num_load_retries
        self._retry_interval = load_retry_interval_s
        self._allow_unavailable_labels = allow_labels_for_unavailable
        self._enable_warmup = enable_warmup
        self._method_name_check = method_name_check
        self._tags = saved_model_tags
        self._warmup_iterations = warmup_iterations
        self._max_rows = max_rows_per_request
        self._models: dict[str, ManagedModel] = {}
        self._lock = threading.RLock()  # guards _models and version tables
        # Version states of models removed from the config: TF Serving's state monitor keeps
        # reporting them (END) in GetModelStatus.
        self._removed: dict[str, dict[int, VersionState]] = {}
        self._sync_lock = threading.Lock()  # one config change or poll at a time
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.config = None

    # --- config ---------------------------------------------------------------------

    @staticmethod
    def check_config(config) -> None:
        """Validates a ModelServerConfig; raises ServingError INVALID_ARGUMENT/UNIMPLEMENTED."""
        kind = config.WhichOneof("config")
        if kind != "model_config_list":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Only model_config_list is supported, got {kind}")
        names = set()
        for model in config.model_config_list.config:
            if not model.name or "/" in model.name or ".." in model.name:
                raise invalid(f"Invalid model name: {model.name!r}")
            if model.name in names:
                raise invalid(f"Illegal to list model {model.name} multiple times in config list")
            names.add(model.name)
            if not model.base_path:
                raise invalid(f"Model {model.name} has no base_path")
            if model.model_platform not in ("", "tensorflow"):
                raise invalid(f"Model {model.name}: unsupported model_platform {model.model_platform!r}")
            for label in model.version_labels:
                if not _LABEL.match(label):
                    raise invalid(f"Label {label!r} of model {model.name} must match [a-zA-Z0-9_]+")
            _check_traffic_labels(model)
            if model.HasField("logging_config"):
                check_logging_config(model.name, model.logging_config)

    def reload_config(self, config) -> None:
        """Replaces the whole config: checks labels, adds, updates and removes models, then moves labels.

        As TF Serving's ServerCore does, the labels are checked first, against the versions
        available when the config is applied: a label may point only at an available
        version. With `allow_labels_for_unavailable`, a new label (or one keeping its
        version) may point at a version that is not loaded yet; moving an existing label
        still needs the target available. So a server started with a config whose labels
        name versions refuses it, unless that flag is set. Models not in the new config are
        unloaded; versions the new config aspires to are loaded before this returns.

        Raises:
            ServingError: INVALID_ARGUMENT for a bad config, FAILED_PRECONDITION for a
                label on a version that is not available (nothing is changed then).
        """
        self.check_config(config)
        with self._sync_lock:
            wanted = {m.name: m for m in config.model_config_list.config}
            with self._lock:
                for name, model_config in wanted.items():
                    self._check_labels(name, dict(model_config.version_labels))
                for name in list(self._models):
                    if name not in wanted:
                        removed = self._models.pop(name)
                        self._unload_all(removed)
                        self._removed[name] = {**self._removed.get(name, {}), **removed.versions}
                for name, model_config in wanted.items():
                    managed = self._models.get(name)
                    if managed is None:
                        self._models[name] = ManagedModel(config=model_config)
                        log.info("added model %s", name, extra={"event": "model_added", "model": name})
                    else:
                        managed.config = model_config
            # Load first, move the labels, unload last: a label never points at a version that
            # has gone (a request for `stable` during a rollback gets the old or the new target).
            aspired = {managed.name: self._sync(managed, unload=False) for managed in list(self._models.values())}
            with self._lock:
                for name, model_config in wanted.items():
                    managed = self._models[name]
                    labels = dict(model_config.version_labels)
                    if labels != managed.labels:
                        log.info("labels of %s: %s", name, labels, extra={"event": "labels", "model": name})
                    managed.labels = labels
            for managed in list(self._models.values()):
                self._unload_unaspired(managed, aspired[managed.name])
            self.config = config

    def _check_labels(self, name: str, labels: dict[str, int]) -> None:
        """Refuses labels on versions not available now (TF Serving's UpdateModelVersionLabelMap)."""
        managed = self._models.get(name)
        for label, version in labels.items():
            state = managed.versions.get(version) if managed else None
            if state is not None and state.state == AVAILABLE:
                continue
            current = managed.labels.get(label) if managed else None
            if self._allow_unavailable_labels and current in (None, version):
                continue
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Request to assign label to version {version} of model {name}, which is not "
                "currently available for inference",
            )

    # --- polling and loading --------------------------------------------------------------

    def poll_once(self) -> None:
        """Rescans every model's base path and loads/unloads versions to match."""
        with self._sync_lock:
            for managed in list(self._models.values()):
                self._sync(managed)

    def start_polling(self, interval_s: float) -> None:
        """Polls the file system every `interval_s` seconds in a thread (0: never)."""
        if interval_s <= 0:
            return

        def loop():
            while not self._stop.wait(interval_s):
                try:
                    self.poll_once()
                except Exception:  # noqa: BLE001  (a poll failure must not kill the poller)
                    log.exception("file system poll failed", extra={"event": "poll_error"})

        self._poller = threading.Thread(target=loop, name="fs-poller", daemon=True)
        self._poller.start()

    def _sync(self, managed: ManagedModel, unload: bool = True) -> set[int]:
        """Loads the versions the policy aspires to (and, with `unload`, drops the others).

        Returns:
            The aspired version numbers.
        """
        found = scan_versions(Path(managed.config.base_path))
        aspired = aspired_versions(
            managed.config.model_version_policy if managed.config.HasField("model_version_policy") else None,
            found,
        )
        for version in sorted(aspired, reverse=True):  # the newest first: a broken old one never delays it
            state = managed.versions.get(version)
            if state is None or (state.state == END and state.error is None):
                self._load(managed, version, found[version])
            elif state.state == END and state.error is not None:
                fingerprint = folder_fingerprint(found[version])
                if fingerprint != state.fingerprint:  # the folder changed (e.g. completed): try afresh
                    self._load(managed, version, found[version])
                elif state.attempts <= self._retries and time.monotonic() >= state.retry_at:
                    self._load(managed, version, found[version], state.attempts)
        if unload:
            self._unload_unaspired(managed, set(aspired))
        return set(aspired)

    def _unload_unaspired(self, managed: ManagedModel, aspired: set[int]) -> None:
        with self._lock:
            serving = [v for v in aspired if v in managed.versions and managed.versions[v].state == AVAILABLE]
            doomed = [s for v, s in managed.versions.items() if v not in aspired and s.state == AVAILABLE]
            # Availability preserving: drop old versions only once a wanted one serves,
            # or when nothing is wanted any more (an emptied base path).
            if serving or not aspired:
                for state in doomed:
                    self._unload(managed, state)
            self._registry.set(
                metrics.MODEL_VERSIONS,
                sum(1 for s in managed.versions.values() if s.state == AVAILABLE),
                model_name=managed.name,
            )

    def _load(self, managed: ManagedModel, version: int, path: Path, failed_attempts: int = 0) -> None:
        """Makes one load attempt; a failure is retried by later polls, never by waiting here.

        So a broken version costs one attempt per `load_retry_interval` (up to
        `max_num_load_retries` more), holds no lock meanwhile, and is tried afresh as soon as
        its folder changes; a version gone from disk is simply not aspired any more.
        """
        state = VersionState(version=version, path=path, state=LOADING, fingerprint=folder_fingerprint(path))
        with self._lock:
            managed.versions[version] = state
        fields = {"model": managed.name, "version": version, "path": str(path)}
        log.info(
            "loading %s version %d from %s",
            managed.name,
            version,
            path,
            extra={"event": "load_start", **fields},
        )
        started = time.monotonic()
        try:
            servable = Servable(
                managed.name,
                version,
                path,
                self._batch_options,
                self._on_batch(managed.name),
                method_name_check=self._method_name_check,
                on_dequeue=self._on_dequeue,
                tags=self._tags,
                max_rows=self._max_rows,
            )
            warmed = servable.warmup(self._warmup_iterations) if self._enable_warmup else 0
        except ServingError as err:  # the loader's own code and message, as TF Serving reports them
            error = err
        except Exception as err:  # noqa: BLE001  (any load failure is reported, not raised)
            error = ServingError(grpc.StatusCode.UNKNOWN, f"Failed to load {path}: {type(err).__name__}: {err}")
        else:
            freeze_heap()
            with self._lock:
                state.servable, state.state, state.error = servable, AVAILABLE, None
            self._registry.inc(metrics.LOAD_COUNT, model_path=str(path), status="success")
            log.info(
                "%s version %d available (%d warmup requests, %.2fs)",
                managed.name,
                version,
                warmed,
                time.monotonic() - started,
                extra={"event": "load_done", "warmup_requests": warmed, **fields},
            )
            return
        self._registry.inc(metrics.LOAD_COUNT, model_path=str(path), status="failure")
        attempts = failed_attempts + 1
        with self._lock:
            state.state, state.error = END, error
            state.attempts, state.retry_at = attempts, time.monotonic() + self._retry_interval
        if attempts <= self._retries:
            log.warning(
                "load attempt %d of %s failed (retry in %gs): %s",
                attempts,
                path,
                self._retry_interval,
                error.message,
                extra={"event": "load_retry", **fields},
            )
            return
        log.error(
            "failed to load %s version %d: %s",
            managed.name,
            version,
            error.message,
            extra={"event": "load_failed", "error": error.message, **fields},
        )

    def _on_batch(self, model_name: str):
        def record(size: int) -> None:
            self._registry.observe(metrics.BATCH_SIZE, metrics.BATCH_BUCKETS, size, model_name=model_name)

        return record

    def _on_dequeue(self, micros: float) -> None:
        pool = self._batch_options.thread_pool_name if self._batch_options else ""
        self._registry.observe(metrics.QUEUING_LATENCY, metrics.QUEUING_BUCKETS_US, micros, thread_pool_name=pool)

    def queue_depths(self) -> list[tuple[str, float, dict[str, object]]]:
        """Gauges of the requests waiting in each available version's batching queues (for a scrape)."""
        if self._batch_options is None:
            return []
        with self._lock:
            servables = [
                state.servable
                for managed in self._models.values()
                for state in managed.versions.values()
                if state.servable is not None
            ]
        gauges = []
        for servable in servables:
            tasks, rows = servable.queue_depth()
            labels = {"model_name": servable.name, "version": servable.version}
            gauges += [(metrics.BATCH_QUEUE_TASKS, tasks, labels), (metrics.BATCH_QUEUE_ROWS, rows, labels)]
        return gauges

    def _unload(self, managed: ManagedModel, state: VersionState) -> None:
        state.state = UNLOADING
        servable, state.servable = state.servable, None
        if servable is not None:
            # In-flight requests hold their own reference and finish on it.
            threading.Thread(target=_retire, args=([servable],), daemon=True).start()
        state.state = END
        log.info(
            "unloaded %s version %d",
            managed.name,
            state.version,
            extra={"event": "unload", "model": managed.name, "version": state.version},
        )

    def _unload_all(self, managed: ManagedModel) -> None:
        for state in managed.versions.values():
            if state.state == AVAILABLE:
                self._unload(managed, state)

    # --- lookups --------------------------------------------------------------------

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """Returns the servable a request addresses (latest available when unspecified).

        A request naming neither a version nor a label follows the model's traffic split
        (`traffic_split_<P>` label) when it has one, and goes to the latest version otherwise.

        Raises:
            ServingError: NOT_FOUND for an unknown model or version, INVALID_ARGUMENT for an
                unknown label or a request naming both a version and a label.
        """
        if version is not None and label:
            raise invalid(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
        with self._lock:
            managed = self._models.get(name)
            if label:  # TF Serving resolves the label first, even for an unknown model.
                labels = managed.labels if managed else {}
                if label not in labels:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = labels[label]
            if managed is None:
                what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {what}")
            if version is not None:
                state = managed.versions.get(version)
                if state is None or state.state != AVAILABLE:
                    raise ServingError(
                        grpc.StatusCode.NOT_FOUND,
                        f"Servable not found for request: Specific({name}, {version})",
                    )
                return state.servable
            routed = _routed_version(managed.labels)
            if routed is not None and managed.versions.get(routed) and managed.versions[routed].state == AVAILABLE:
                return managed.versions[routed].servable
            available = [v for v, s in managed.versions.items() if s.state == AVAILABLE]
            if not available:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
            return managed.versions[max(available)].servable

    def shadow_servable(self, name: str, label: str) -> Servable | None:
        """The loaded version under `label` of model `name` (the shadow), or None."""
        with self._lock:
            managed = self._models.get(name)
            version = managed.labels.get(label) if managed else None
            state = managed.versions.get(version) if version is not None else None
            return state.servable if state is not None and state.state == AVAILABLE else None

    def logging_config(self, name: str):
        """The model's `logging_config` (request logging), or None when it has none."""
        with self._lock:
            managed = self._models.get(name)
        if managed is None or not managed.config.HasField("logging_config"):
            return None
        return managed.config.logging_config

    def is_configured(self, name: str) -> bool:
        """True if `name` is a model of the current config (or was, and still reports END)."""
        with self._lock:
            return name in self._models or name in self._removed

    def status(self, name: str, version: int | None = None) -> list[VersionState]:
        """Returns version states, newest first, as GetModelStatus reports them.

        Like TF Serving's GetModelStatus, this knows no labels (a request's label is ignored)
        and keeps answering for models removed from the config, their versions in END.

        Raises:
            ServingError: NOT_FOUND, worded as TF Serving words it.
        """
        with self._lock:
            managed = self._models.get(name)
            versions = {**self._removed.get(name, {}), **(managed.versions if managed else {})}
            if version is not None:
                if version not in versions:
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
                return [dataclasses.replace(versions[version])]
            if not versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
            return [dataclasses.replace(s) for _, s in sorted(versions.items(), reverse=True)]

    def close(self) -> None:
        """Stops polling and closes every loaded version's batch threads."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        with self._lock:
            for managed in self._models.values():
                for state in managed.versions.values():
                    if state.servable is not None:
                        state.servable.close()
