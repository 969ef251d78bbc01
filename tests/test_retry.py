"""The one retry policy (collector/retry.py): capped exponent, full jitter, never raises."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from pydantic import ValidationError

from collector.retry import Backoff, RetryConfig, backoff_bound


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_million_attempts_never_raise_and_stay_within_the_bounds():
    b = Backoff(RetryConfig(initial_backoff=0.001, max_backoff=0.003))
    worst = 0.0
    for _ in range(1_000_000):
        d = b.delay()
        worst = max(worst, d)
        assert 0.0 <= d <= 0.003
    assert b.attempts == 1_000_000
    assert worst > 0.0029  # the cap is reached, not stuck low
    # and far beyond: the exponent is capped before it is computed
    for attempt in (1_024, 1_025, 10**6, 10**100):
        assert backoff_bound(attempt, 0.5, 30.0) == 30.0
    assert backoff_bound(10**100, 1e300, 1e308) == 1e308


def test_the_bound_doubles_from_initial_to_max_and_the_draw_is_full_jitter():
    ceiling = Backoff(RetryConfig(initial_backoff=0.5, max_backoff=30), rng=lambda: 1.0)
    assert [ceiling.delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    floor = Backoff(RetryConfig(initial_backoff=0.5, max_backoff=30), rng=lambda: 0.0)
    assert {floor.delay() for _ in range(5)} == {0.0}
    # the real draw covers the whole range [0, bound]
    b = Backoff(RetryConfig(initial_backoff=1, max_backoff=1))
    draws = [b.delay() for _ in range(5_000)]
    assert min(draws) < 0.05 and max(draws) > 0.95
    assert 0.4 < sum(draws) / len(draws) < 0.6


def test_max_elapsed_counts_from_the_first_failure_and_reset_starts_over():
    clock = FakeClock()
    b = Backoff(RetryConfig(initial_backoff=1, max_backoff=4, max_elapsed=60), clock=clock, rng=lambda: 1.0)
    assert not b.expired and b.elapsed == 0
    clock.now += 1_000  # time before the first failure does not count
    b.delay()
    clock.now += 59.9
    b.delay()
    assert not b.expired
    clock.now += 0.1
    assert b.expired and b.elapsed == pytest.approx(60)
    b.reset()
    assert not b.expired and b.attempts == 0 and b.delay() == 1.0
    # without max_elapsed it never expires
    forever = Backoff(RetryConfig(), clock=clock)
    forever.delay()
    clock.now += 10**9
    assert not forever.expired


def test_sleep_on_the_loop_and_in_a_thread():
    b = Backoff(RetryConfig(initial_backoff=0.001, max_backoff=0.002))

    async def many() -> float:
        return sum([await b.sleep() for _ in range(2_000)])

    t0 = time.monotonic()
    slept = asyncio.run(many())
    assert b.attempts == 2_000 and slept <= 4.0
    assert time.monotonic() - t0 >= slept * 0.5

    stop = threading.Event()
    slow = Backoff(RetryConfig(initial_backoff=60, max_backoff=60), rng=lambda: 1.0)
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    assert slow.sleep_sync(stop) is True  # woken by the event, not after 60 s
    assert time.monotonic() - t0 < 30
    assert Backoff(RetryConfig(initial_backoff=0.001, max_backoff=0.001)).sleep_sync() is False


def test_config_shape():
    assert RetryConfig().model_dump() == {"initial_backoff": 0.5, "max_backoff": 30.0, "max_elapsed": None}
    with pytest.raises(ValidationError, match="max_backoff"):
        RetryConfig(initial_backoff=5, max_backoff=1)
    with pytest.raises(ValidationError, match="extra"):
        RetryConfig(backoff_max=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        RetryConfig(max_elapsed=0)
    assert all(f.description for f in RetryConfig.model_fields.values())
