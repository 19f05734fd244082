"""``Backoff``: the one retry policy of mx8 (exponential backoff with jitter).

Every retry or poll loop (agent registration, manifest ingest, sample reads, S3 listing,
conditional S3 store writes, the snapshot-lock wait) takes its delays from a ``Backoff``
instead of writing its own arithmetic. Retry ``n`` (1 = the first retry) waits a delay
drawn from ``[lo * step, hi * step]`` where ``step = min(max_s, base_s * factor ** (n - 1))``
and ``(lo, hi) = jitter``:

* ``FULL_JITTER`` (0, 1) spreads a burst of throttled clients over the whole window;
* ``EQUAL_JITTER`` (0.5, 1) keeps at least half of each step;
* ``NO_JITTER`` (1, 1) is a fixed schedule (no random draw).

``Backoff.run(call, retry_if=...)`` calls an async function until it returns, raises an
error ``retry_if`` refuses, uses up ``attempts`` or would pass ``deadline``; then the last
error propagates unchanged, so callers keep their own typed errors and give-up messages.
``on_retry`` hears about each retry before its sleep (events, counters). The random source
and the sleep are parameters, so tests are deterministic and instant.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["EQUAL_JITTER", "FULL_JITTER", "NO_JITTER", "Backoff", "Retry"]

T = TypeVar("T")

FULL_JITTER = (0.0, 1.0)
EQUAL_JITTER = (0.5, 1.0)
NO_JITTER = (1.0, 1.0)

# Shared by callers that bring no random source of their own.
_RNG = random.Random()


@dataclass(frozen=True, slots=True)
class Retry:
    """One retry about to happen: try ``attempt`` failed with ``error``; next, a sleep."""

    attempt: int
    delay_s: float
    error: BaseException


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Delays between tries; see the module docstring for the formula."""

    #: Step of the first retry, in seconds.
    base_s: float
    #: Cap on one step, in seconds.
    max_s: float = float("inf")
    #: Growth of the step per retry (1.0: constant).
    factor: float = 2.0
    #: ``(lo, hi)``: a delay is drawn uniformly from ``[lo * step, hi * step]``.
    jitter: tuple[float, float] = FULL_JITTER
    #: Tries in all, the first one included; None: no cap (a deadline or the caller stops).
    attempts: int | None = None

    def __post_init__(self) -> None:
        lo, hi = self.jitter
        if self.base_s < 0 or self.max_s < self.base_s:
            raise ValueError(f"backoff {self.base_s}s..{self.max_s}s is not a valid range")
        if self.factor < 1 or not 0 <= lo <= hi:
            raise ValueError(f"backoff factor {self.factor} / jitter {self.jitter} is invalid")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"backoff attempts is {self.attempts}; it must be >= 1")

    def step(self, retry: int) -> float:
        """The step of retry ``retry`` (1-based), before jitter."""
        try:
            return min(self.max_s, self.base_s * self.factor ** (retry - 1))
        except OverflowError:  # a poll that has run for hours: the cap holds
            return self.max_s

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry ``retry``: ``step`` scaled by a draw from ``jitter``."""
        lo, hi = self.jitter
        step = self.step(retry)
        if lo == hi:
            return step * lo
        return (rng or _RNG).uniform(step * lo, step * hi)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The successive waits: ``attempts - 1`` of them, or endless without a cap."""
        retry = 1
        while self.attempts is None or retry < self.attempts:
            yield self.delay(retry, rng)
            retry += 1

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        retry_if: Callable[[Exception], bool],
        on_retry: Callable[[Retry], None] | None = None,
        rng: random.Random | None = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> T:
        """``await call()`` until it returns; retry errors ``retry_if`` accepts.

        Gives up (re-raising the last error) when ``attempts`` are used up or when the next
        step would end past ``deadline`` (a ``clock()`` value).
        """
        attempt = 1
        while True:
            try:
                return await call()
            except Exception as exc:
                if not retry_if(exc) or (self.attempts is not None and attempt >= self.attempts):
                    raise
                if deadline is not None and clock() + self.step(attempt) > deadline:
                    raise
                delay = self.delay(attempt, rng)
                if on_retry is not None:
                    on_retry(Retry(attempt=attempt, delay_s=delay, error=exc))
                await sleep(delay)
            attempt += 1
