"""Giving memory back to the operating system after large requests.

A large request (a JSON body of millions of numbers, a batch of thousands of images) makes the
server allocate hundreds of megabytes of short-lived objects. Python frees them, but glibc's
allocator keeps the freed pages in its arenas, so the process's resident memory stays at its
high-water mark (measured in bench/reliability.py, scenario large_requests). `malloc_trim(0)`
hands free pages in every arena back; it runs off the request path, shortly after a large
request and at most once a second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

log = logging.getLogger(__name__)


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class HeapTrimmer:
    """Trims the C heap in a background thread after requests of at least `threshold_bytes`.

    Args:
        threshold_bytes: Request size (input and output arrays) that triggers a trim; 0: never.
        delay_s: Wait after such a request, so that it and its neighbours have freed their memory.
        min_interval_s: Shortest time between two trims.
    """

    def __init__(self, threshold_bytes: int, delay_s: float = 0.2, min_interval_s: float = 1.0):
        self.threshold_bytes = threshold_bytes
        self.trims = 0
        self._trim = _malloc_trim() if threshold_bytes > 0 else None
        self._delay_s = delay_s
        self._min_interval_s = min_interval_s
        self._wanted = threading.Event()
        self._closed = threading.Event()
        self._thread = None
        if self._trim is not None:
            self._thread = threading.Thread(target=self._run, name="heap-trim", daemon=True)
            self._thread.start()

    def note(self, request_bytes: int) -> None:
        """Records a finished request's size; a large one schedules a trim."""
        if self._trim is not None and request_bytes >= self.threshold_bytes:
            self._wanted.set()

    def _run(self) -> None:
        last = 0.0
        while True:
            self._wanted.wait()
            if self._closed.is_set():
                return
            wait = max(self._delay_s, last + self._min_interval_s - time.monotonic())
            if self._closed.wait(wait):
                return
            self._wanted.clear()
            self._trim(0)
            self.trims += 1
            last = time.monotonic()

    def close(self) -> None:
        self._closed.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
