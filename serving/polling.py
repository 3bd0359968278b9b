"""Waiting for a condition with a deadline: the one polling loop of the project (on tenacity)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import tenacity

T = TypeVar("T")


def poll_until(check: Callable[[], T], timeout_s: float, interval_s: float = 0.2) -> T:
    """Calls `check` every `interval_s` seconds until it returns something truthy, and returns that.

    An exception raised by `check` ends the wait at once (it propagates).

    Raises:
        TimeoutError: if `check` returned nothing truthy within `timeout_s` seconds.
    """
    try:
        return tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda result: not result),
            stop=tenacity.stop_after_delay(timeout_s),
            wait=tenacity.wait_fixed(interval_s),
            reraise=True,
        )(check)
    except tenacity.RetryError:
        raise TimeoutError(f"not done within {timeout_s:g}s") from None
