"""Transform ``parse``: turn a structured ``message`` into fields.

    parse: {type: parse, inputs: [meta], format: json}          # {"level":"error","msg":...}
    parse: {type: parse, inputs: [meta], format: regex,
            pattern: '^(?P<time>\\S+ \\S+) (?P<log__level>[A-Z]+) '}

``json``: a message that is a JSON object is decoded into ``target`` (default ``json``); its
level (``level``, ``severity``, ``lvl``, ``loglevel``, ``log.level``) becomes ``log.level`` and
``log.syslog.severity`` in the one vocabulary of collector/levels.py (``WARN`` -> ``warning``,
pino's 30 -> ``info``; a level it does not know is kept, lowercase, in ``log.level``), and with
``message_key`` that key replaces ``message``.  ``regex``: named groups become fields, ``__`` in
a group name standing for a dot (``log__level`` -> ``log.level``, mapped the same way).
A message that does not parse is left as it is (counted: ``collector_errors_total
{reason="parse_failed"}``): parsing is best effort, it never loses a record.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from collector import levels
from collector.component import Context, Transform, TransformConfig
from collector.event import Batch, get_path, with_path

LEVEL_KEYS = ("level", "severity", "lvl", "loglevel", "log.level")


class ParseConfig(TransformConfig):
    type: Literal["parse"]
    format: Literal["json", "regex"] = Field("json", description="How to read the message.")
    field: str = Field("message", description="The field to parse.")
    target: str = Field("json", description="(json) where the decoded object goes.")
    message_key: str | None = Field(None, description="(json) a key whose value replaces `message`.")
    pattern: str | None = Field(None, description="(regex) a pattern with named groups.")

    @model_validator(mode="after")
    def _check(self) -> ParseConfig:
        if self.format == "regex":
            if not self.pattern:
                raise ValueError("format: regex needs a `pattern`")
            try:
                rx = re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"bad pattern: {e}") from None
            if not rx.groupindex:
                raise ValueError("the pattern has no named groups (?P<name>...)")
        return self


class ParseTransform(Transform):
    config: ParseConfig

    def __init__(self, name: str, config: ParseConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        self.rx = re.compile(config.pattern) if config.pattern else None
        self._failed = ctx.telemetry.errors.labels(name, "parse_failed")

    def _json(self, ev: dict[str, Any], text: str) -> dict[str, Any] | None:
        if not text.startswith("{"):
            return None
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        c = self.config
        for k in LEVEL_KEYS:
            v = obj.get(k)
            if (isinstance(v, str) and v) or type(v) is int:
                ev = with_level(ev, v)
                break
        if c.message_key and isinstance(obj.get(c.message_key), str):
            ev = with_path(ev, "message", obj[c.message_key])
        return with_path(ev, c.target, obj)

    def _regex(self, ev: dict[str, Any], text: str) -> dict[str, Any] | None:
        assert self.rx is not None
        m = self.rx.search(text)
        if m is None:
            return None
        for k, v in m.groupdict().items():
            if v is not None:
                ev = with_level(ev, v) if k == "log__level" else with_path(ev, k.replace("__", "."), v)
        return ev

    async def process(self, batch: Batch) -> list[tuple[str | None, Batch]]:
        field = self.config.field
        fn = self._json if self.config.format == "json" else self._regex
        failed = 0
        events = []
        for ev in batch.events:
            text = get_path(ev, field)
            new = fn(ev, text) if isinstance(text, str) else ev
            if new is None:
                failed += 1
            events.append(ev if new is None else new)
        if failed:
            self._failed.inc(failed)
        return [(None, batch.derive(events, batch.ids))]


def with_level(ev: dict[str, Any], value: str | int) -> dict[str, Any]:
    """``ev`` with ``log.level`` (and ``log.syslog.severity`` when the level is a known one)."""
    c = levels.code(value)
    if c is None:
        return with_path(ev, "log.level", str(value).lower())
    f = levels.fields(c)
    return with_path(with_path(ev, "log.level", f["level"]), "log.syslog", f["syslog"])
