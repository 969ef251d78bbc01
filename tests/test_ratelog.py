"""One line per reason per interval, with a count (collector/ratelog.py)."""

from __future__ import annotations

import logging
import time

from collector.ratelog import MAX_KEYS, RateLimitedLog

log = logging.getLogger("tests.ratelog")


def test_one_line_per_reason_per_interval_with_the_count(caplog):
    caplog.set_level(logging.WARNING, "tests.ratelog")
    say = RateLimitedLog(log, interval=0.3, prefix="src: ")
    for i in range(1000):
        say.warning("too_large", "frame of %d bytes is too large", i)
        say.warning("bad_json", "bad JSON from %s", f"peer{i}")
    assert [r.getMessage() for r in caplog.records] == [
        "src: frame of 0 bytes is too large",
        "src: bad JSON from peer0",
    ]
    time.sleep(0.35)
    assert say.warning("too_large", "frame of %d bytes is too large", 5000)
    assert caplog.records[-1].getMessage().startswith("src: frame of 5000 bytes is too large (999 more like it")
    say.flush()  # what was only counted is said at the end
    assert "bad_json: 999 more" in caplog.records[-1].getMessage()
    assert len(caplog.records) == 4


def test_said_once_then_every_interval_and_at_once_after_a_reset(caplog):
    # what retry.Throttle did for the sinks, the checkpoint saver and DiskFull (now one helper)
    caplog.set_level(logging.WARNING, "tests.ratelog")
    now = [100.0]
    say = RateLimitedLog(log, interval=30, clock=lambda: now[0])
    assert say.warning("retrying", "down")
    assert not say.warning("retrying", "down") and not say.warning("retrying", "down")
    now[0] += 29.9
    assert not say.warning("retrying", "down")
    now[0] += 0.1
    assert say.warning("retrying", "down")
    assert caplog.records[-1].getMessage() == "down (3 more like it in the last 30s)"
    say.reset("retrying")
    assert say.warning("retrying", "down")
    assert caplog.records[-1].getMessage() == "down"


def test_the_number_of_reasons_kept_is_bounded(caplog):
    caplog.set_level(logging.WARNING, "tests.ratelog")
    say = RateLimitedLog(log)
    for i in range(10 * MAX_KEYS):
        say.warning(f"reason {i}", "r%d", i)
    assert len(say._entries) <= MAX_KEYS + 1  # (the rest share one key)
    assert len(caplog.records) <= MAX_KEYS + 1


def test_a_traceback_goes_with_a_written_line_only(caplog):
    caplog.set_level(logging.ERROR, "tests.ratelog")
    say = RateLimitedLog(log)
    for _ in range(3):
        try:
            raise RuntimeError("a bug")
        except RuntimeError:
            say.error("internal", "unexpected error", exc_info=True)
    assert len(caplog.records) == 1
    assert caplog.records[0].exc_info is not None


def test_identical_lines_of_the_collector_s_own_log_are_held_back_and_counted():
    """ratelog.RepeatFilter on the handler: the same line (logger, level, text) at most once per
    interval; the next one written says how many were held back; other lines are never held."""
    import io

    from collector.ratelog import RepeatFilter

    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RepeatFilter(interval=60, clock=lambda: now[0]))
    own = logging.getLogger("tests.ratelog.own")
    own.addHandler(handler)
    own.propagate = False
    try:
        for _ in range(500):
            own.warning("cannot write to %s", "/data/out")
        own.warning("cannot write to %s", "/data/other")  # another text: written
        own.error("cannot write to %s", "/data/out")  # another level: written
        now[0] = 61.0
        own.warning("cannot write to %s", "/data/out")
        own.warning("cannot write to %s", "/data/out")
    finally:
        own.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "cannot write to /data/out",
        "cannot write to /data/other",
        "cannot write to /data/out",
        "cannot write to /data/out (499 more like it in the last 61s)",
    ]
