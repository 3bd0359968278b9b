"""Runs the parts of ingest that release the GIL (zlib's compression, PIL's decoding) on every core.

Ingest's Python code runs on one core; what zlib and PIL do inside their C code runs without
the GIL, so a few threads overlap it. One pool per process, made on first use (and again in a
forked child, whose copy of the pool has no threads).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the process it was made in, the pool)


def cores() -> int:
    """The cores this process may run on (its CPU affinity), at most 8: ingest's threads, and
    the parallel map of the training input pipeline (`preprocess.MAP_PARALLELISM`)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    return max(1, min(count, 8))


def thread_map(function: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """`[function(item) for item in items]`, in as many threads as cores, each a run of the items.

    An item's error is raised here (the first in the items' order).
    """
    runs = min(len(items), cores())
    if runs < 2:
        return [function(item) for item in items]
    bounds = [len(items) * run // runs for run in range(runs + 1)]
    done = _threads().map(lambda run: [function(item) for item in items[bounds[run] : bounds[run + 1]]], range(runs))
    return [result for results in done for result in results]


def _threads() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(cores(), thread_name_prefix="ingest"))
        return _pool[1]
