"""One vocabulary for log levels, whatever the source: the syslog severities.

Every source (json-file through the ``parse`` transform, forward, GELF) writes a level it
recognises as

    log.level                   emergency, alert, critical, error, warning, notice, info, debug
    log.syslog.severity.code    0 ... 7
    log.syslog.severity.name    the same name as log.level

so one query (``log.syslog.severity.code <= 3``) and one dashboard serve them all, and the GELF
sink sends the same code back as GELF's ``level``.  What clients send is mapped to it:

* syslog codes 0-7, as numbers or digits (GELF's ``level``);
* names and their usual spellings, any case: ``emerg``/``panic``, ``crit``/``fatal``,
  ``err``/``severe``, ``warn``, ``informational``/``information``, ``trace``/``verbose``;
* the numbers of pino and bunyan (Node): 10 trace, 20 debug, 30 info, 40 warn, 50 error,
  60 fatal;
* OpenTelemetry's ``severity_number`` (1-24), through :func:`from_otel`.

A level that is none of these is not guessed: callers keep it as it was written.
"""

from __future__ import annotations

from typing import Any

NAMES = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")

CODES: dict[str, int] = {
    **{n: i for i, n in enumerate(NAMES)},
    "emerg": 0,
    "panic": 0,
    "crit": 2,
    "fatal": 2,
    "err": 3,
    "severe": 3,
    "warn": 4,
    "informational": 6,
    "information": 6,
    "trace": 7,
    "verbose": 7,
}

# pino and bunyan (Node.js) write numeric levels
_NODE = {10: 7, 20: 7, 30: 6, 40: 4, 50: 3, 60: 2}


def code(value: Any) -> int | None:
    """The syslog severity code of a level as clients send it; None when it is not one."""
    t = type(value)
    if t is int:
        if 0 <= value <= 7:
            return value  # type: ignore[no-any-return]
        return _NODE.get(value)
    if t is float:
        return code(int(value)) if value.is_integer() else None
    if t is str:
        v = value.strip().lower()
        if v.isdigit() and len(v) <= 3:
            return code(int(v))
        return CODES.get(v)
    return None


def from_otel(severity_number: Any) -> int | None:
    """OpenTelemetry's SeverityNumber (1-4 TRACE ... 21-24 FATAL) as a syslog code."""
    if type(severity_number) is not int or not 1 <= severity_number <= 24:
        return None
    return (7, 7, 6, 4, 3, 2)[(severity_number - 1) // 4]


def fields(c: int) -> dict[str, Any]:
    """The ``log`` object of a record at severity ``c``."""
    name = NAMES[c]
    return {"level": name, "syslog": {"severity": {"code": c, "name": name}}}
