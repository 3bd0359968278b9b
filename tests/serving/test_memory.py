"""Giving freed memory back after large requests (glibc malloc_trim, off the request path)."""

from __future__ import annotations

import pytest

from serving.server.memory import HeapTrimmer, _malloc_trim
from tests.support import wait_for

pytestmark = pytest.mark.skipif(_malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)")


def test_a_large_request_schedules_one_trim_and_small_ones_none():
    trimmer = HeapTrimmer(threshold_bytes=1000, delay_s=0.01, min_interval_s=0.01)
    try:
        trimmer.note(999)
        trimmer.note(10)
        assert not trimmer._wanted.is_set() and trimmer.trims == 0
        trimmer.note(1000)
        wait_for(lambda: trimmer.trims == 1, 10, "a trim")
    finally:
        trimmer.close()


def test_trims_are_spaced_by_the_minimum_interval():
    trimmer = HeapTrimmer(threshold_bytes=1, delay_s=0.0, min_interval_s=60.0)
    try:
        trimmer.note(5)
        wait_for(lambda: trimmer.trims == 1, 10, "the first trim")
        trimmer.note(5)
        trimmer.note(5)
        assert trimmer._wanted.is_set() and trimmer.trims == 1  # the next one waits out the interval
    finally:
        trimmer.close()


def test_a_zero_threshold_never_trims_and_starts_no_thread():
    trimmer = HeapTrimmer(threshold_bytes=0)
    trimmer.note(10**9)
    assert trimmer._thread is None and trimmer.trims == 0
    trimmer.close()
