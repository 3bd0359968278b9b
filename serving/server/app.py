"""The model server: options named as tensorflow_model_server's flags, start and graceful stop."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path

from serving.server import metrics, protos
from serving.server.batching import BatchOptions
from serving.server.grpc_api import make_grpc_server, make_management_server
from serving.server.manager import ModelManager
from serving.server.memory import HeapTrimmer
from serving.server.request_log import RequestLogger
from serving.server.rest import RestApi, make_rest_server
from serving.server.service import ServingService

log = logging.getLogger("serving.server")

_LOG_FIELDS = ("event", "model", "version", "path", "model_path", "error", "warmup_requests", "port")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, message and the record's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "message": record.getMessage(),
        }
        payload.update({key: getattr(record, key) for key in _LOG_FIELDS if hasattr(record, key)})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def _flag_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """Flags named as tensorflow_model_server names them (`--flag=value` or `--flag value`)."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.server",
        description="A TensorFlow Serving compatible model server (gRPC and REST) for SavedModels.",
        allow_abbrev=False,
    )
    add = parser.add_argument

    def add_switch(flag: str, default: bool, help: str) -> None:
        """A boolean flag as TF Serving takes it: `--flag`, `--flag=true` or `--flag=false`."""
        add(flag, type=_flag_bool, nargs="?", const=True, default=default, help=help)

    add("--port", type=int, default=8500, help="gRPC port (default 8500).")
    add("--rest_api_port", type=int, default=8501, help="REST port (default 8501).")
    add("--host", default="127.0.0.1", help="Address both ports bind to (default 127.0.0.1).")
    add(
        "--model_name",
        default="default",
        help="Name of the single model served (without --model_config_file).",
    )
    add("--model_base_path", default="", help="Folder of numbered versions of the single model.")
    add("--model_config_file", default="", help="Text-format ModelServerConfig with a model_config_list.")
    add(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0,
        help="Re-read --model_config_file this often (0: never).",
    )
    add(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1,
        help="Scan base paths for new versions this often (0: once at start).",
    )
    add_switch("--enable_batching", False, "Batch concurrent requests.")
    add("--batching_parameters_file", default="", help="Text-format BatchingParameters.")
    add("--monitoring_config_file", default="", help="Text-format MonitoringConfig (Prometheus endpoint).")
    add("--rest_api_timeout_in_ms", type=int, default=30000, help="REST request timeout (default 30000).")
    add(
        "--rest_api_max_request_bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="Largest accepted REST body (default 64 MiB; larger answers 413).",
    )
    add(
        "--max_rows_per_request",
        type=int,
        default=4096,
        help="Most rows (0th-dimension size) one predict request may carry, batching on or off "
        "(default 4096; 0: no limit). Bounds the memory one request can take.",
    )
    add(
        "--heap_trim_threshold_bytes",
        type=int,
        default=1 << 20,
        help="After a request of this many bytes (body or tensors) or more, give freed memory back to the "
        "OS (glibc malloc_trim, at most once a second, off the request path; default 1 MiB; 0: never).",
    )
    add("--max_num_load_retries", type=int, default=5, help="Retries of a failed version load (default 5).")
    add(
        "--load_retry_interval_micros",
        type=int,
        default=60_000_000,
        help="Wait between load retries (default 1 minute).",
    )
    add_switch(
        "--enable_model_warmup", True, "Replay assets.extra/tf_serving_warmup_requests before serving a version."
    )
    add_switch(
        "--enable_signature_method_name_check",
        False,
        "Classify/Regress only signatures whose method_name says so (off, as in TF Serving).",
    )
    add_switch(
        "--allow_version_labels_for_unavailable_models", False, "Let labels point at versions that are not loaded."
    )
    add(
        "--num_request_iterations_for_warmup",
        type=int,
        default=1,
        help="Times each warmup record is replayed (default 1).",
    )
    add("--saved_model_tags", default="serve", help="Comma-separated tags of the MetaGraph to load (default serve).")
    add(
        "--tensorflow_intra_op_parallelism",
        type=int,
        default=0,
        help="Threads inside one TensorFlow op (default 0: TensorFlow decides).",
    )
    add(
        "--tensorflow_inter_op_parallelism",
        type=int,
        default=0,
        help="Threads running independent TensorFlow ops (default 0: TensorFlow decides).",
    )
    add_switch(
        "--enable_serialization_as_tensor_content",
        False,
        "Answer gRPC Predict with numeric outputs as tensor_content bytes instead of the typed *_val "
        "fields (off: the typed fields, as TF Serving answers by default).",
    )
    add("--grpc_socket_path", default="", help="Also serve gRPC on this Unix domain socket.")
    add(
        "--grpc_channel_arguments",
        default="",
        help="Comma-separated key=value gRPC server arguments, e.g. grpc.max_concurrent_streams=100.",
    )
    add_switch(
        "--enable_grpc_healthcheck_service", False, "Serve the standard grpc.health.v1.Health service on the gRPC port."
    )
    add_switch(
        "--prefer_tflite_model",
        False,
        "Serve model.tflite instead of the SavedModel (not supported here: refused when true).",
    )
    add("--version", action="store_true", help="Print the server and TensorFlow versions and exit.")
    add(
        "--rest_api_num_threads",
        type=int,
        default=0,
        help="REST requests handled at once (default 0: four per CPU core, as TF Serving sizes it by CPUs).",
    )
    add(
        "--model_management_address",
        default="",
        help="Serve ModelService's HandleReloadConfigRequest only here: PORT (on 127.0.0.1), HOST:PORT or "
        "unix:PATH. The main gRPC port then refuses it with PERMISSION_DENIED (default: on the main port, "
        "as TF Serving does).",
    )
    add(
        "--model_base_path_roots",
        default="",
        help="Comma-separated folders a reloaded config's base_path must lie under (default: the base paths "
        "of the starting config; none when it is empty).",
    )
    add(
        "--request_log_roots",
        default="",
        help="Comma-separated folders a reloaded config's logging_config filename_prefix must lie under "
        "(default: the folders of the starting config's prefixes; with none, a reload cannot turn request "
        "logging on).",
    )
    add(
        "--request_log_queue_size",
        type=int,
        default=1000,
        help="Sampled requests waiting to be written at most; more are dropped and counted, never waited for.",
    )
    add(
        "--request_log_rotate_seconds",
        type=float,
        default=300,
        help="A request log file is closed and published (renamed from .tmp) after this long ...",
    )
    add(
        "--request_log_max_file_bytes",
        type=int,
        default=64 << 20,
        help="... or at this size.",
    )
    add(
        "--shutdown_grace_seconds",
        type=float,
        default=30,
        help="How long SIGTERM waits for in-flight requests.",
    )
    return parser


@dataclasses.dataclass
class ServerOptions:
    """Parsed and checked options."""

    args: argparse.Namespace
    model_config: object
    batch_options: BatchOptions | None
    monitoring_path: str | None
    base_path_roots: tuple[Path, ...] = ()
    request_log_roots: tuple[Path, ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerOptions:
        """Reads the config files the flags name.

        Raises:
            ValueError: naming the flag or file that is wrong.
        """
        if args.prefer_tflite_model:
            raise ValueError("--prefer_tflite_model: TFLite models are not supported by this server; serve SavedModels")
        if args.num_request_iterations_for_warmup < 1:
            raise ValueError("--num_request_iterations_for_warmup must be at least 1")
        if args.model_config_file:
            model_config = protos.parse_text(
                _read(args.model_config_file, "--model_config_file"),
                protos.ModelServerConfig,
                args.model_config_file,
            )
        elif args.model_base_path:
            model_config = protos.ModelServerConfig()
            entry = model_config.model_config_list.config.add()
            entry.name, entry.base_path, entry.model_platform = (
                args.model_name,
                args.model_base_path,
                "tensorflow",
            )
        else:
            raise ValueError("either --model_config_file or --model_base_path must be given")
        batch_options = None
        if args.enable_batching:
            params = protos.BatchingParameters()
            params.thread_pool_name.value = "model_server_batch_threads"  # server.cc, when no file is given
            if args.batching_parameters_file:
                params = protos.parse_text(
                    _read(args.batching_parameters_file, "--batching_parameters_file"),
                    protos.BatchingParameters,
                    args.batching_parameters_file,
                )
            batch_options = BatchOptions.from_proto(params)
        monitoring_path = None
        if args.monitoring_config_file:
            monitoring = protos.parse_text(
                _read(args.monitoring_config_file, "--monitoring_config_file"),
                protos.MonitoringConfig,
                args.monitoring_config_file,
            )
            if monitoring.prometheus_config.enable:
                monitoring_path = monitoring.prometheus_config.path or "/monitoring/prometheus/metrics"
        if args.model_management_address:
            management_address(args.model_management_address)  # refuse a malformed value before any port opens
        if args.model_base_path_roots:
            roots = [root.strip() for root in args.model_base_path_roots.split(",") if root.strip()]
        else:
            roots = [model.base_path for model in model_config.model_config_list.config]
        base_path_roots = tuple(Path(root).resolve() for root in roots)
        if args.request_log_roots:
            log_roots = [root.strip() for root in args.request_log_roots.split(",") if root.strip()]
        else:
            log_roots = [
                str(Path(model.logging_config.log_collector_config.filename_prefix).parent)
                for model in model_config.model_config_list.config
                if model.HasField("logging_config")
            ]
        if args.request_log_queue_size < 1:
            raise ValueError("--request_log_queue_size must be at least 1")
        request_log_roots = tuple(Path(root).resolve() for root in log_roots)
        return cls(args, model_config, batch_options, monitoring_path, base_path_roots, request_log_roots)


def _set_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Applies --tensorflow_{intra,inter}_op_parallelism (0 leaves TensorFlow's choice); before any model loads."""
    import tensorflow as tf

    if intra_op > 0:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op > 0:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def management_address(value: str) -> str:
    """The gRPC address of `--model_management_address`: PORT means 127.0.0.1:PORT.

    Raises:
        ValueError: naming the flag, for an empty or malformed value.
    """
    value = value.strip()
    if value.isdigit():
        return f"127.0.0.1:{value}"
    if value.startswith("unix:") and len(value) > 5:
        return value
    host, _, port = value.rpartition(":")
    if host and port.isdigit():
        return value
    raise ValueError(f"--model_management_address: expected PORT, HOST:PORT or unix:PATH, got {value!r}")


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """Parses --grpc_channel_arguments ('key=value,key=value'; integer values become ints).

    Raises:
        ValueError: naming the argument that is not key=value.
    """
    options: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value")
        options.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return options


def _read(path: str, flag: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise ValueError(f"{flag}: cannot read {path}: {err.strerror}") from err


class ModelServer:
    """The running server: manager, REST and gRPC front ends, pollers."""

    def __init__(self, options: ServerOptions):
        args = options.args
        self.options = options
        self.registry = metrics.Registry()
        _set_tensorflow_threads(args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism)
        self.manager = ModelManager(
            self.registry,
            batch_options=options.batch_options,
            max_num_load_retries=args.max_num_load_retries,
            load_retry_interval_s=args.load_retry_interval_micros / 1e6,
            allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
            enable_warmup=args.enable_model_warmup,
            method_name_check=args.enable_signature_method_name_check,
            saved_model_tags=tuple(tag.strip() for tag in args.saved_model_tags.split(",") if tag.strip()),
            warmup_iterations=args.num_request_iterations_for_warmup,
            max_rows_per_request=args.max_rows_per_request,
        )
        timeout_s = args.rest_api_timeout_in_ms / 1000 if args.rest_api_timeout_in_ms > 0 else None
        self.request_logger = RequestLogger(
            self.registry,
            self.manager.logging_config,
            queue_size=args.request_log_queue_size,
            max_file_bytes=args.request_log_max_file_bytes,
            max_file_seconds=args.request_log_rotate_seconds,
        )
        self.service = ServingService(
            self.manager,
            self.registry,
            timeout_s,
            options.base_path_roots,
            request_logger=self.request_logger,
            request_log_roots=options.request_log_roots,
            heap_trimmer=HeapTrimmer(args.heap_trim_threshold_bytes),
        )
        self._stop = threading.Event()
        self._config_text = None

    def start(self) -> None:
        """Loads the initial config (blocking), then opens the gRPC and REST ports."""
        args = self.options.args
        self.manager.reload_config(self.options.model_config)
        if args.model_config_file:
            self._config_text = Path(args.model_config_file).read_text()
        self.grpc_server, self.grpc_port = make_grpc_server(
            self.service,
            args.host,
            args.port,
            socket_path=args.grpc_socket_path,
            channel_arguments=parse_channel_arguments(args.grpc_channel_arguments),
            health_check=args.enable_grpc_healthcheck_service,
            serve_reload=not args.model_management_address,
            tensor_content=args.enable_serialization_as_tensor_content,
        )
        self.grpc_server.start()
        self.management_server = None
        if args.model_management_address:
            address = management_address(args.model_management_address)
            self.management_server = make_management_server(self.service, address)
            self.management_server.start()
            log.info(
                "Model management (HandleReloadConfigRequest) at %s only",
                address,
                extra={"event": "management_listening", "address": address},
            )
        elif not self.options.base_path_roots:
            log.warning(
                "model management accepts any base_path on the main gRPC port: set --model_base_path_roots "
                "and --model_management_address, or keep the port private",
                extra={"event": "management_open"},
            )
        log.info(
            "Running gRPC ModelServer at %s:%d",
            args.host,
            self.grpc_port,
            extra={"event": "grpc_listening", "port": self.grpc_port},
        )
        self.rest_server = make_rest_server(
            RestApi(self.service, self.options.monitoring_path),
            args.host,
            args.rest_api_port,
            args.rest_api_max_request_bytes,
            self.service.request_timeout_s,
            self.registry.render,
            threads=args.rest_api_num_threads or 4 * (os.cpu_count() or 1),
            # In-flight REST requests get the grace less one second, kept for unloading, so that
            # SIGTERM ends within --shutdown_grace_seconds even with stalled clients connected.
            grace_s=max(args.shutdown_grace_seconds - 1.0, 0.0),
        )
        self.rest_port = self.rest_server.port
        self.rest_server.start()
        log.info(
            "Exporting HTTP/REST API at %s:%d",
            args.host,
            self.rest_port,
            extra={"event": "rest_listening", "port": self.rest_port},
        )
        self.manager.start_polling(args.file_system_poll_wait_seconds)
        if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
            threading.Thread(target=self._poll_config, name="config-poller", daemon=True).start()

    def _poll_config(self) -> None:
        args = self.options.args
        while not self._stop.wait(args.model_config_file_poll_wait_seconds):
            try:
                text = Path(args.model_config_file).read_text()
            except OSError as err:
                log.error("cannot read %s: %s", args.model_config_file, err, extra={"event": "reload_failed"})
                continue
            if text == self._config_text:
                continue
            self._config_text = text  # a bad file is reported once, not on every poll
            try:
                config = protos.parse_text(text, protos.ModelServerConfig, args.model_config_file)
                self.manager.reload_config(config)
                log.info("reloaded %s", args.model_config_file, extra={"event": "reload"})
            except Exception as err:  # noqa: BLE001  (a bad file must not stop serving)
                log.error(
                    "config reload from %s failed: %s",
                    args.model_config_file,
                    err,
                    extra={"event": "reload_failed", "error": str(err)},
                )

    def stop(self, grace_s: float | None = None) -> None:
        """Stops accepting requests, finishes in-flight ones, unloads everything."""
        grace_s = self.options.args.shutdown_grace_seconds if grace_s is None else grace_s
        log.info("shutting down", extra={"event": "shutdown"})
        self._stop.set()
        stopped = self.grpc_server.stop(grace_s)
        if self.management_server is not None:
            self.management_server.stop(grace_s)
        self.rest_server.stop()  # in-flight REST requests finish within the grace, idle connections close
        stopped.wait(grace_s)
        self.service.close()
        self.request_logger.close()  # what was sampled before the ports closed is written and published
        self.service.heap_trimmer.close()
        self.manager.close()
        log.info("stopped", extra={"event": "stopped"})
