"""Transform ``route``: send batches to named outputs by tag pattern.

    route: {type: route, inputs: [meta], routes: {web: "web.**", db: "{postgres,redis}-*"}}
    sinks: {es: {type: elasticsearch, inputs: [route.web]}, ...}

A batch goes to every route whose pattern matches its tag; one matching none goes to
``<name>._unmatched`` (dropped and counted when nothing reads that output).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, field_validator

from collector.acks import release
from collector.component import Context, Transform, TransformConfig
from collector.event import Batch
from collector.tags import TagPatternError, tag_pattern

UNMATCHED = "_unmatched"


class RouteConfig(TransformConfig):
    type: Literal["route"]
    routes: dict[str, str] = Field(
        min_length=1, description="Output name -> Fluentd-style tag pattern; addressed as `<name>.<output>`."
    )

    @field_validator("routes")
    @classmethod
    def _patterns(cls, v: dict[str, str]) -> dict[str, str]:
        for name, pat in v.items():
            if name == UNMATCHED or "." in name:
                raise ValueError(f"route name {name!r} is reserved or contains a dot")
            try:
                tag_pattern(pat)
            except TagPatternError as e:
                raise ValueError(f"route {name!r}: {e}") from None
        return v

    @classmethod
    def output_ports(cls, config: Mapping[str, object]) -> list[str]:
        """One output per route, and ``_unmatched``."""
        routes = config.get("routes")
        return [*routes, UNMATCHED] if isinstance(routes, dict) and routes else []


class RouteTransform(Transform):
    config: RouteConfig

    def __init__(self, name: str, config: RouteConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        self.routes = [(port, tag_pattern(p)) for port, p in config.routes.items()]
        self._unrouted = ctx.telemetry.dropped.labels(name, "unmatched")

    async def process(self, batch: Batch) -> list[tuple[str | None, Batch]]:
        ports = [port for port, match in self.routes if match(batch.tag)]
        if not ports:
            if UNMATCHED in self.connected:
                return [(UNMATCHED, batch)]
            self._unrouted.inc(len(batch))
            release(batch.ack)
            return []
        if len(ports) > 1 and batch.ack is not None:
            batch.ack.retain(len(ports) - 1)
        # each route gets its own Batch object, as each consumer of an Emitter does: whoever reads
        # one may replace its meta, tag or ack (a sink's feed wraps the ack) without touching the others
        return [(p, batch if i == 0 else batch.derive(None, batch.ids)) for i, p in enumerate(ports)]
