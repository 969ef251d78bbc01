"""The collector's own log, on stderr: text for a person at a terminal, JSON for everything else.

``--log-format text|json`` (default ``$COLLECTOR_LOG_FORMAT``, else JSON when stderr is not a
terminal: under Docker, systemd or a pipe the log is read by programs, such as another
collector). A JSON line is an ECS document, like the records the collector ships:

    {"@timestamp":"2026-11-29T12:00:01.250Z","log":{"level":"warning","logger":"collector.sinks.elasticsearch"},
     "message":"out: cannot reach http://es:9200: ...","process":{"pid":1}}

(nested objects, as in the records), with ``error.type``, ``error.message`` and
``error.stack_trace`` for a bug's traceback, and the fields a line carries besides its text
(``extra={"fields": {...}}``, under ``collector``: the summary of a run).
A line identical to one written in the last minute is held back and counted (ratelog.RepeatFilter).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

import orjson

from collector.ratelog import RepeatFilter

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = record.created
        doc: dict[str, Any] = {
            "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z",
            "log": {"level": record.levelname.lower(), "logger": record.name},
            "message": record.getMessage(),
            "process": {"pid": record.process},
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc["collector"] = fields
        if record.exc_info and record.exc_info[0] is not None:
            doc["error"] = {
                "type": record.exc_info[0].__name__,
                "message": str(record.exc_info[1]),
                "stack_trace": self.formatException(record.exc_info),
            }
        return orjson.dumps(doc, default=str).decode()


def default_format(stream: TextIO | None = None) -> str:
    env = os.environ.get("COLLECTOR_LOG_FORMAT", "").strip().lower()
    if env in FORMATS:
        return env
    s = stream or sys.stderr
    try:
        return "text" if s.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def setup(level: str, fmt: str | None = None, stream: TextIO | None = None) -> logging.Handler:
    """Send the collector's log to ``stream`` (stderr) in ``fmt``; returns the handler."""
    s = stream or sys.stderr
    handler = logging.StreamHandler(s)
    handler.setFormatter(JsonFormatter() if (fmt or default_format(s)) == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
