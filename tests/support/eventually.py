"""``assert_eventually``: poll for a condition instead of sleeping (shared by all tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["assert_eventually"]


async def assert_eventually(
    check: Callable[[], Any], *, timeout_s: float = 10.0, interval_s: float = 0.02
) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)
