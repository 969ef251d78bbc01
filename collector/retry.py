"""The one retry policy: capped exponential backoff with full jitter, for every sink and client.

    retry: {initial_backoff: 0.5, max_backoff: 30, max_elapsed: 3600}

The n-th wait (n = 0, 1, 2 ...) is a uniform draw from ``[0, min(max_backoff, initial_backoff * 2**n)]``
("full jitter": many collectors that lost the same engine do not come back in step).  The
exponent is capped before it is computed, so the millionth attempt costs what the tenth does and
nothing ever overflows; :meth:`Backoff.delay` never raises.  ``max_elapsed`` (optional) bounds how
long one run of failures may last: :attr:`Backoff.expired` says when it has, and the caller
decides what giving up means (a sink dead-letters the records, the app stops a crashing sink).
Success calls :meth:`Backoff.reset`.

Usable from the event loop (``await backoff.sleep()``) and from threads
(``backoff.sleep_sync(stop_event)``, which returns early when the event is set).  Time comes from
a monotonic clock (injectable, for tests): a wall-clock step never shortens or stretches a wait.

Why not a library: tenacity and backoff are well kept, but they retry *a call* (a decorator or an
``async for attempt`` block).  Our loops keep state between attempts (the Elasticsearch sink
re-sends only the items that failed and splits refused requests; the GELF sink reconnects, then
writes the whole round again), report each failure with the coming delay, and reset on partial
progress.  What they need is the delay computation and a sleep, which is these few lines.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

# 2**62 * initial_backoff is far past any max_backoff, and still a finite float
_MAX_EXPONENT = 62


class RetryConfig(BaseModel):
    """How long to wait between attempts, and (optionally) when to give up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_backoff: float = Field(
        0.5, gt=0, description="Seconds: the first wait is drawn between 0 and this; each failure doubles the bound."
    )
    max_backoff: float = Field(
        30.0, gt=0, description="Seconds: the bound stops doubling here, so no wait is longer than this."
    )
    max_elapsed: float | None = Field(
        None,
        gt=0,
        description="Seconds one run of failures may last before the caller gives up (what that means is "
        "said where `retry` is used); unset: retry for as long as it takes, keeping the place.",
    )

    @model_validator(mode="after")
    def _order(self) -> RetryConfig:
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff}) must be at least initial_backoff ({self.initial_backoff})"
            )
        return self


def backoff_bound(attempt: int, initial: float, maximum: float) -> float:
    """The upper bound of the wait before retry number ``attempt`` (0-based): never raises."""
    exponent = min(max(attempt, 0), _MAX_EXPONENT)
    return min(maximum, initial * float(1 << exponent))


class Backoff:
    """One run of failures: how long to wait next, how long it has lasted, whether to give up."""

    __slots__ = ("attempts", "clock", "config", "first_failure", "rng")

    def __init__(
        self,
        config: RetryConfig,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng
        self.attempts = 0
        self.first_failure: float | None = None

    def delay(self) -> float:
        """Count one failure and return the wait before the next attempt (full jitter)."""
        if self.first_failure is None:
            self.first_failure = self.clock()
        c = self.config
        bound = backoff_bound(self.attempts, c.initial_backoff, c.max_backoff)
        self.attempts += 1
        return bound * self.rng()

    @property
    def elapsed(self) -> float:
        """Seconds since the first failure of this run (0 when nothing failed)."""
        return 0.0 if self.first_failure is None else max(0.0, self.clock() - self.first_failure)

    @property
    def expired(self) -> bool:
        """True once ``max_elapsed`` is set and this run of failures has lasted that long."""
        limit = self.config.max_elapsed
        return limit is not None and self.first_failure is not None and self.elapsed >= limit

    def reset(self) -> None:
        """It worked: the next failure starts a new run from ``initial_backoff``."""
        self.attempts = 0
        self.first_failure = None

    async def sleep(self, delay: float | None = None) -> float:
        """Wait on the event loop: ``delay``, or the next one (counting a failure). Returns the wait."""
        d = self.delay() if delay is None else delay
        await asyncio.sleep(d)
        return d

    def sleep_sync(self, stop: threading.Event | None = None, delay: float | None = None) -> bool:
        """Wait in a thread: ``delay``, or the next one (counting a failure). True when ``stop`` was set."""
        d = self.delay() if delay is None else delay
        if stop is None:
            time.sleep(d)
            return False
        return stop.wait(d)
