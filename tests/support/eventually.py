"""Poll for a condition instead of sleeping: the one polling helper of the tests.

``assert_eventually`` runs in a test's event loop (``check`` may be sync or async);
``assert_eventually_blocking`` is the same poll for plain threads and sync tests. Both
return the first truthy value ``check`` gives and fail after ``timeout_s`` with the last.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["assert_eventually", "assert_eventually_blocking"]

#: Long enough for a daemon to start on a loaded two-core machine; passing checks return early.
DEFAULT_TIMEOUT_S = 20.0


class _Poll:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s

    def give_up(self, value: Any) -> None:
        """Raise once the deadline passed (``value`` is the last falsy result)."""
        if time.monotonic() > self._deadline:
            raise AssertionError(f"condition not met within {self.timeout_s}s (last: {value!r})")


async def assert_eventually(
    check: Callable[[], Any], *, timeout_s: float = DEFAULT_TIMEOUT_S, interval_s: float = 0.02
) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value; return that value."""
    poll = _Poll(timeout_s)
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        poll.give_up(value)
        await asyncio.sleep(interval_s)


def assert_eventually_blocking(
    check: Callable[[], Any], *, timeout_s: float = DEFAULT_TIMEOUT_S, interval_s: float = 0.02
) -> Any:
    """``assert_eventually`` for a thread without an event loop (``check`` is sync)."""
    poll = _Poll(timeout_s)
    while True:
        value = check()
        if value:
            return value
        poll.give_up(value)
        time.sleep(interval_s)
