"""Prometheus metrics in the text exposition format, named like TF Serving's."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

from serving import protocol

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
BATCH_SIZE = ":tensorflow:serving:batching_session:processed_batch_size"
QUEUING_LATENCY = ":tensorflow:serving:batching_session:queuing_latency"
# Not in TF Serving (it has no queue-depth metric): this project's own, under its own prefix.
BATCH_QUEUE_TASKS = ":mlops:serving:batching_queue_tasks"
BATCH_QUEUE_ROWS = ":mlops:serving:batching_queue_rows"
# Per answering version (serving.protocol names them for the client side); label values stay bounded:
# only loaded versions answer.
VERSION_REQUEST_COUNT, VERSION_REQUEST_LATENCY = protocol.VERSION_REQUEST_COUNT, protocol.VERSION_REQUEST_LATENCY
SHADOW_DROPPED = ":mlops:serving:shadow_dropped"
LOAD_COUNT = ":tensorflow:cc:saved_model:load_attempt_count"
MODEL_VERSIONS = ":tensorflow:serving:model_versions_available"

# The model_name label of requests for models the server does not have (bounded label values).
UNKNOWN_MODEL = "<unknown>"

LATENCY_BUCKETS_US = (
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# batching_session.cc: Buckets::Exponential(100, 1.2, 52), microseconds.
QUEUING_BUCKETS_US = tuple(round(100 * 1.2**i, 3) for i in range(52))


def _labels(pairs: tuple[tuple[str, str], ...], extra: str = "") -> str:
    parts = [f'{key}="{_escape(value)}"' for key, value in pairs]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Registry:
    """Thread-safe counters, gauges and histograms keyed by label sets."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = defaultdict(dict)
        self._gauges: dict[str, dict[tuple, float]] = defaultdict(dict)
        self._histograms: dict[str, tuple[tuple[float, ...], dict[tuple, list]]] = {}
        self._collectors: list = []

    def add_collector(self, collect) -> None:
        """Adds a function called at each scrape, returning [(gauge name, value, labels dict)]."""
        self._collectors.append(collect)

    def inc(self, name: str, amount: float = 1.0, **labels: object) -> None:
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            self._counters[name][key] = self._counters[name].get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: object) -> None:
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            self._gauges[name][key] = value

    def observe(self, name: str, buckets: tuple[float, ...], value: float, **labels) -> None:
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            _, series = self._histograms.setdefault(name, (buckets, {}))
            counts = series.setdefault(key, [0] * (len(buckets) + 1) + [0.0])
            counts[bisect.bisect_left(buckets, value)] += 1
            counts[-1] += value

    def render(self) -> str:
        """Returns all metrics in Prometheus text format 0.0.4: TYPE lines and no HELP, as TF Serving writes."""
        lines = []
        collected: dict[str, dict[tuple, float]] = defaultdict(dict)
        for collect in self._collectors:
            for name, value, labels in collect():
                collected[name][tuple(sorted((k, str(v)) for k, v in labels.items()))] = value
        with self._lock:
            gauges = {**self._gauges, **collected}
            for kind, table in (("counter", self._counters), ("gauge", gauges)):
                for name, series in sorted(table.items()):
                    lines.append(f"# TYPE {name} {kind}")
                    for key, value in sorted(series.items()):
                        lines.append(f"{name}{_labels(key)} {value:g}")
            for name, (buckets, series) in sorted(self._histograms.items()):
                lines.append(f"# TYPE {name} histogram")
                for key, counts in sorted(series.items()):
                    cumulative = 0
                    for bound, count in zip(buckets, counts, strict=False):
                        cumulative += count
                        le = f'le="{bound:g}"'
                        lines.append(f"{name}_bucket{_labels(key, le)} {cumulative}")
                    cumulative += counts[len(buckets)]
                    le = 'le="+Inf"'
                    lines.append(f"{name}_bucket{_labels(key, le)} {cumulative}")
                    lines.append(f"{name}_sum{_labels(key)} {counts[-1]:g}")
                    lines.append(f"{name}_count{_labels(key)} {cumulative}")
        return "\n".join(lines) + "\n"
