"""Forward times: integers, floats, EventTime (msgpack ext type 0) and msgpack timestamps
(ext type -1), and Fluent Bit's group markers.

A time that cannot be read never stops the decoder: a malformed EventTime decodes to a
:class:`BadTime` and only its entry is refused (:meth:`ForwardTimes.any`).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack

from collector.codecs.forward.errors import ForwardError, kind
from collector.codecs.times import TimeFormatter

EVENT_TIME = 0  # msgpack ext type of Fluentd's EventTime
MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z

_SECNS = struct.Struct(">II")


class Stamp(str):
    """An RFC 3339 timestamp decoded from an EventTime (tells it apart from a client's string)."""

    __slots__ = ()


class BadTime:
    """What a malformed EventTime decodes to: its entry is refused, not the whole message."""

    __slots__ = ("data", "detail")

    def __init__(self, detail: str, data: bytes) -> None:
        self.detail = detail
        self.data = data

    def __str__(self) -> str:
        return f"(bad EventTime: {self.detail}; ext 0 {self.data[:64].hex()})"

    __repr__ = __str__


# Fluent Bit's group markers: EventTime seconds (uint32_t) -1 and -2, nanoseconds 0
# (include/fluent-bit/flb_log_event.h, FLB_LOG_EVENT_GROUP_START/END; src/flb_log_event_encoder.c)
GROUP_START_SECONDS = 0xFFFFFFFF
GROUP_END_SECONDS = 0xFFFFFFFE


class ForwardTimes(TimeFormatter):
    """The forward protocol's times (integers, floats, EventTime, msgpack timestamps) to
    ``2024-05-01T12:00:00.123456789Z``; a time out of range is a ForwardError."""

    __slots__ = ()

    def __call__(self, sec: int, ns: int = 0) -> str:
        if sec != self._sec:
            if not 0 <= sec <= MAX_SECONDS:
                raise ForwardError("bad time", f"{sec} seconds is out of range")
            self._date(sec)
        return f"{self._prefix}.{ns:09d}Z"

    def ext_hook(self, code: int, data: bytes) -> Any:
        """msgpack ``ext_hook``: EventTime becomes a :class:`Stamp` (a malformed one a
        :class:`BadTime`, never an exception: that would cost the whole message); other
        types a plain dict."""
        if code == EVENT_TIME:
            if len(data) != 8:
                return BadTime(f"{len(data)} bytes instead of 8", data)
            sec, ns = _SECNS.unpack(data)
            if ns >= 1_000_000_000:
                return BadTime(f"{ns} nanoseconds", data)
            if sec >= GROUP_END_SECONDS and ns == 0:
                return GROUP_START if sec == GROUP_START_SECONDS else GROUP_END
            return Stamp(self(sec, ns))
        return {"ext_type": code, "hex": data[:1024].hex()}

    def any(self, t: Any) -> str:
        """A record's time, whatever its wire type; ForwardError when it is not a time."""
        tt = type(t)
        if tt is Stamp or tt is _Marker:  # (a group marker outside Fluent Bit's entry shape is a time)
            return t  # type: ignore[no-any-return]
        if tt is int:
            return self(t)
        if tt is msgpack.Timestamp:
            if not 0 <= t.seconds <= MAX_SECONDS:
                raise ForwardError("bad time", f"{t.seconds} seconds is out of range")
            return self(t.seconds, t.nanoseconds)
        if tt is BadTime:
            raise ForwardError("bad EventTime", t.detail)
        if tt is float and math.isfinite(t) and 0 <= t <= MAX_SECONDS:
            # a double holds about microseconds at today's epoch: keep those, not float noise
            sec = int(t)
            us = round((t - sec) * 1e6)
            if us >= 1_000_000:
                sec, us = sec + 1, us - 1_000_000
            return self(sec, us * 1000)
        raise ForwardError("bad time", f"time must be an integer or an EventTime, not {kind(t)}")


class _Marker(Stamp):
    """A Fluent Bit group marker: an EventTime that is no time (the entry carries no record)."""

    __slots__ = ()


GROUP_START = _Marker("2106-02-07T06:28:15.000000000Z")
GROUP_END = _Marker("2106-02-07T06:28:14.000000000Z")


def event_time(sec: int, ns: int = 0) -> msgpack.ExtType:
    """The EventTime ext for ``sec``/``ns`` (for clients and tests)."""
    return msgpack.ExtType(EVENT_TIME, _SECNS.pack(sec, ns))


def event_time_ns(t_ns: int) -> msgpack.ExtType:
    return event_time(*divmod(t_ns, 1_000_000_000))
