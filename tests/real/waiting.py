"""The bounded wait the recording test servers share. Imports nothing from watcher."""

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    arrived: threading.Condition,
    done: Callable[[], bool],
    result: Callable[[], T],
    *,
    timeout: float,
    failure: Callable[[], str],
) -> T:
    """Hold `arrived` and wait on it until `done()`; return `result()` under it.

    `done`, `result` and `failure` run with the condition's lock held.

    Raises:
        AssertionError: `done()` stayed false for `timeout` seconds; the message is
            `failure()`, which should list what did arrive.
    """
    deadline = time.monotonic() + timeout
    with arrived:
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(failure())

            arrived.wait(left)

        return result()
