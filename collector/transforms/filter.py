"""Transform ``filter``: keep or drop records by tag pattern or by field value.

Dropping is control flow, not an error: dropped records are finalized (their source moves on)
and counted in ``collector_events_dropped_total{reason="filtered"}``.

    filter: {type: filter, inputs: [meta], match: "app.**", exclude: "app.debug.*",
             drop: {message: "GET /healthz"}, keep: {stream: "^stderr$"}}

``match``/``exclude`` test the batch's tag (cheap: no record is looked at). ``keep`` and
``drop`` map dotted field names to regular expressions (searched in the field's text).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from collector.acks import release
from collector.component import Context, Transform, TransformConfig
from collector.event import Batch, get_path
from collector.tags import TagPatternError, tag_pattern


def _compile(rules: dict[str, str]) -> list[tuple[str, re.Pattern[str]]]:
    return [(k, re.compile(v)) for k, v in rules.items()]


class FilterConfig(TransformConfig):
    type: Literal["filter"]
    match: str | None = Field(None, description="Keep only batches whose tag matches this pattern.")
    exclude: str | None = Field(None, description="Drop batches whose tag matches this pattern.")
    keep: dict[str, str] = Field(
        default_factory=dict, description="Keep only records where every field matches its regex."
    )
    drop: dict[str, str] = Field(default_factory=dict, description="Drop records where any field matches its regex.")

    @field_validator("match", "exclude")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                tag_pattern(v)
            except TagPatternError as e:
                raise ValueError(str(e)) from None
        return v

    @field_validator("keep", "drop")
    @classmethod
    def _regexes(cls, v: dict[str, str]) -> dict[str, str]:
        for field, rx in v.items():
            try:
                re.compile(rx)
            except re.error as e:
                raise ValueError(f"bad regular expression for {field!r}: {e}") from None
        return v


def _text(doc: Mapping[str, Any], dotted: str) -> str | None:
    v = get_path(doc, dotted)
    return v if v is None or isinstance(v, str) else str(v)


class FilterTransform(Transform):
    config: FilterConfig

    def __init__(self, name: str, config: FilterConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        self.match = tag_pattern(config.match) if config.match else None
        self.exclude = tag_pattern(config.exclude) if config.exclude else None
        self.keep = _compile(config.keep)
        self.drop = _compile(config.drop)
        self._dropped = ctx.telemetry.dropped.labels(name, "filtered")

    def _wanted(self, ev: dict[str, Any], meta: dict[str, Any]) -> bool:
        def value(dotted: str) -> str | None:
            v = _text(ev, dotted)
            return _text(meta, dotted) if v is None else v

        for dotted, rx in self.keep:
            v = value(dotted)
            if v is None or rx.search(v) is None:
                return False
        for dotted, rx in self.drop:
            v = value(dotted)
            if v is not None and rx.search(v) is not None:
                return False
        return True

    async def process(self, batch: Batch) -> list[tuple[str | None, Batch]]:
        tag = batch.tag
        if (self.match is not None and not self.match(tag)) or (self.exclude is not None and self.exclude(tag)):
            self._dropped.inc(len(batch))
            release(batch.ack)
            return []
        if not self.keep and not self.drop:
            return [(None, batch)]
        meta = batch.meta.data
        keep = [i for i, ev in enumerate(batch.events) if self._wanted(ev, meta)]
        if len(keep) == len(batch.events):
            return [(None, batch)]
        self._dropped.inc(len(batch.events) - len(keep))
        if not keep:
            release(batch.ack)
            return []
        ids = [batch.ids[i] for i in keep] if batch.ids is not None else None
        return [(None, batch.derive([batch.events[i] for i in keep], ids))]
