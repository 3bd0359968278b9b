"""The ingest thread pool: results in the items' order, errors raised by item, a new pool after fork."""

import multiprocessing
import threading

import pytest

from pipeline.data import threads


def test_results_come_in_the_items_order_each_item_run_once(monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 3)
    monkeypatch.setattr(threads, "_pool", None)  # made anew with three threads
    runs_started = threading.Barrier(3, timeout=30)  # the first item of each run: they wait for each other
    seen = []

    def square(item):
        if item in (0, 3, 6):  # 10 items in 3 runs: 0-2, 3-5, 6-9
            runs_started.wait()
        seen.append(item)
        return item * item

    assert threads.thread_map(square, list(range(10))) == [n * n for n in range(10)]
    assert sorted(seen) == list(range(10))
    assert threads.thread_map(square, []) == [] and threads.thread_map(abs, [-4]) == [4]


def test_the_first_failing_item_in_order_is_raised(monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 2)

    def check(item):
        if item in (3, 7):
            raise ValueError(f"item {item} is bad")
        return item

    with pytest.raises(ValueError, match="item 3 is bad"):
        threads.thread_map(check, list(range(10)))


def _map_in_child(queue):
    queue.put(threads.thread_map(abs, [-1, -2, -3, -4]))


def test_a_forked_child_makes_its_own_pool(monkeypatch):
    """A child forked after the parent used its pool (a Celery worker's task process) gets no threads
    with its copy of the pool: it must make a new one, not wait on the copy forever."""
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setattr(threads, "_pool", None)
    both_running = threading.Barrier(2, timeout=30)  # the pool has made all its threads

    def wait_for_the_other(item):
        both_running.wait()
        return abs(item)

    assert threads.thread_map(wait_for_the_other, [-1, -2]) == [1, 2]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_map_in_child, args=(queue,), daemon=True)
    child.start()
    try:
        assert queue.get(timeout=60) == [1, 2, 3, 4]
        child.join(60)
        assert child.exitcode == 0
    finally:
        child.kill()
