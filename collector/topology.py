"""The graph a config describes, built: components, their inboxes and buffers, output ports and
the edges between them (app.py and runtime.py run it). Also what a reload changes in it.

    sources --emit--> [channel] transform --emit--> [buffer] sink

A reload (``plan_reload``) restarts only the components whose own settings changed when the
graph stays the same (same names, inputs, buffers, output ports, pipeline settings); anything
else replaces the whole pipeline. A disk buffer no sink of the config reads is said at start
and at reload (``orphan_buffers``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from prometheus_client import Counter

from collector import registry
from collector.acks import InFlight, release
from collector.buffers import Buffer, BufferConfig
from collector.buffers.disk import DiskBuffer, inspect
from collector.buffers.memory import Channel, MemoryBuffer
from collector.component import Component, Context, Emitter, Sink, Source, Transform
from collector.config import PipelineConfig
from collector.event import Batch
from collector.tags import tag_pattern
from collector.tap import Tap, TapHub

log = logging.getLogger("collector.app")

TRANSFORM_CHANNEL_EVENTS = 2_048
TRANSFORM_CHANNEL_BYTES = 16 << 20

KINDS = (("source", registry.SOURCES), ("transform", registry.TRANSFORMS), ("sink", registry.SINKS))


class Inlet:
    """An edge into a transform or sink: counts what arrives (collector_events_in_total) and, for
    a sink with ``match``, lets only matching tags through (the others are finalized and counted)."""

    def __init__(
        self, inner: Channel, counted: Counter, pattern: str | None = None, dropped: Counter | None = None
    ) -> None:
        self.inner = inner
        self.counted = counted
        self.match = tag_pattern(pattern) if pattern else None
        self.dropped = dropped
        self.taps: list[Tap] = []  # `collector tap` on the sink this edge feeds (tap.py)

    async def send(self, batch: Batch) -> bool:
        if self.match is None or self.match(batch.tag):
            if self.taps:
                for tap in self.taps:
                    tap.offer(batch)
            self.counted.inc(len(batch))
            return await self.inner.send(batch)
        self.dropped.inc(len(batch))
        release(batch.ack)
        return False

    def has_room(self) -> bool:
        return self.inner.has_room()

    async def wait_room(self) -> None:
        await self.inner.wait_room()

    def close(self) -> None:
        self.inner.close()


class InFlightTotal:
    """Records emitted by every source and not finalized yet (each source counts its own, so a
    reload can wait for one source's records alone)."""

    def __init__(self, parts: dict[str, InFlight]) -> None:
        self.parts = parts

    @property
    def records(self) -> int:
        return sum(p.records for p in self.parts.values())


@dataclass
class Topology:
    config: PipelineConfig
    ctx: Context
    sources: dict[str, Source] = field(default_factory=dict)
    transforms: dict[str, Transform] = field(default_factory=dict)
    sinks: dict[str, Sink] = field(default_factory=dict)
    inboxes: dict[str, Channel] = field(default_factory=dict)  # transform/sink name -> its inbox
    emitters: dict[str, Emitter] = field(default_factory=dict)  # output ("t" or "t.port") -> Emitter
    buffers: dict[str, Buffer] = field(default_factory=dict)  # sink name -> its buffer (memory or disk)
    source_inflight: dict[str, InFlight] = field(default_factory=dict)  # per source: emitted, not finalized
    inflight: InFlightTotal = field(init=False)  # records emitted by sources, not finalized yet
    taps: TapHub = field(default_factory=TapHub)  # GET /tap: where `collector tap` attaches

    def __post_init__(self) -> None:
        self.inflight = InFlightTotal(self.source_inflight)

    @classmethod
    def build(cls, config: PipelineConfig, ctx: Context) -> Self:
        p = cls(config, ctx)
        for n in config.sources:
            p.sources[n] = p.new_component("source", n)  # type: ignore[assignment]
        for n in config.transforms:
            p.transforms[n] = p.new_component("transform", n)  # type: ignore[assignment]
            p.inboxes[n] = Channel(n, TRANSFORM_CHANNEL_EVENTS, TRANSFORM_CHANNEL_BYTES, producers=0)
        for n, c in config.sinks.items():
            p.sinks[n] = p.new_component("sink", n)  # type: ignore[assignment]
            p.buffers[n] = p._make_buffer(n, c.buffer)
            p.inboxes[n] = p.buffers[n].inbox
        # outputs
        out = ctx.telemetry.events_out
        for n in config.sources:
            p.source_inflight[n] = InFlight()
            p.emitters[n] = Emitter(n, inflight=p.source_inflight[n], counter=out.labels(n))
        for n, t in p.transforms.items():
            p.emitters[n] = Emitter(n, counter=out.labels(n))
            for port in t.output_ports():
                p.emitters[f"{n}.{port}"] = Emitter(f"{n}.{port}", counter=out.labels(n))
        # edges
        for n, c in {**config.transforms, **config.sinks}.items():
            inbox = p.inboxes[n]
            for i in c.inputs:
                # a sink's `match` (the filter transform has a `match` of its own, counted as filtered)
                match = getattr(c, "match", None) if n in config.sinks else None
                dropped = ctx.telemetry.dropped.labels(n, "unmatched") if match else None
                target = Inlet(inbox, ctx.telemetry.events_in.labels(n), match, dropped)
                if n in config.sinks:
                    p.taps.add(n, "sink", target)
                p.emitters[i].channels.append(target)
                inbox.add_producer()
                upstream, dot, port = i.partition(".")
                if dot:
                    p.transforms[upstream].connected.add(port)
        for out_name, emitter in p.emitters.items():
            n = out_name.split(".", 1)[0]
            kind = "source" if n in config.sources else "transform"
            p.taps.add(n, kind, emitter)
            if "." in out_name:
                p.taps.add(out_name, kind, emitter)
        ctx.telemetry.streams["/tap"] = p.taps.serve
        for n in config.sources:
            if not p.emitters[n].channels:
                log.warning("source %r feeds nothing: its records are read and discarded", n)
        p._instrument()
        return p

    def _instrument(self) -> None:
        """What the API reports about the components: their kind and type, buffer limits, and
        readiness (GET /ready: sources listening, sinks that reached their destination)."""
        t = self.ctx.telemetry
        for kind, table in (("source", self.config.sources), ("transform", self.config.transforms)):
            for n, c in table.items():
                t.component_info.labels(n, kind, c.type).set(1)
                t.events_out.labels(n)
        for n, c in self.config.sinks.items():
            t.component_info.labels(n, "sink", c.type).set(1)
            if c.buffer.type == "memory":
                t.buffer_max_events.labels(n).set(c.buffer.max_events)
            t.buffer_max_bytes.labels(n).set(c.buffer.limit_bytes)
            t.last_delivery.labels(n)
            t.request_duration.labels(n)
            t.requests_in_flight.labels(n)
        for n in [*self.config.transforms, *self.config.sinks]:
            t.events_in.labels(n)
        for n, src in self.sources.items():
            t.register_ready(f"source[{n}]", src.ready)
        for n in self.sinks:
            t.register_ready(f"sink[{n}]", lambda n=n: self.sinks[n].ready())  # a restarted sink is a new one

    def new_component(self, kind: str, name: str, config: PipelineConfig | None = None) -> Component:
        """A new instance of a component as ``config`` (default: the running one) describes it."""
        table = getattr(config or self.config, f"{kind}s")
        c = table[name]
        made: Component = registry.implementation(dict(KINDS)[kind], c.type)(name, c, self.ctx)
        return made

    def _new_sink(self, name: str) -> Sink:
        sink = self.new_component("sink", name)
        assert isinstance(sink, Sink)
        return sink

    def _make_buffer(self, name: str, bcfg: BufferConfig) -> Buffer:
        if bcfg.type == "disk":
            return DiskBuffer(name, self.ctx.data_dir / "buffers" / name, bcfg, self.ctx.telemetry)
        return MemoryBuffer(name, bcfg, self.ctx.telemetry)


def config_changes(old: PipelineConfig, new: PipelineConfig) -> str:
    """What a reload changes, said in a few words (``sink out changed, transform meta added``)."""
    said = []
    for kind, a, b in (
        ("source", old.sources, new.sources),
        ("transform", old.transforms, new.transforms),
        ("sink", old.sinks, new.sinks),
    ):
        for name in sorted(set(a) | set(b)):
            if name not in b:
                said.append(f"{kind} {name} removed")
            elif name not in a:
                said.append(f"{kind} {name} added")
            elif a[name] != b[name]:
                said.append(f"{kind} {name} changed")
    rest = old.model_dump(exclude={"sources", "transforms", "sinks"}) != new.model_dump(
        exclude={"sources", "transforms", "sinks"}
    )
    return ", ".join(said + (["pipeline settings changed"] if rest else [])) or "no change"


def reload_problems(old: PipelineConfig, new: PipelineConfig) -> list[str]:
    """What a reload cannot change in a running process (a restart can)."""
    problems = []
    if Path(new.data_dir).expanduser() != Path(old.data_dir).expanduser():
        problems.append(f"data_dir changed ({old.data_dir} -> {new.data_dir}): that needs a restart")
    if (new.api and new.api.listen) != (old.api and old.api.listen):
        problems.append("api.listen changed: that needs a restart (the API stays up across a reload)")
    return problems


@dataclass
class ReloadPlan:
    """How a reload is done: in place (``changed``: kind -> names of the components restarted,
    the rest keeps running) or, when ``whole`` says why, by replacing the whole pipeline."""

    changed: dict[str, list[str]] = field(default_factory=dict)
    whole: str | None = None

    def describe(self) -> str:
        if self.whole is not None:
            return f"the whole pipeline ({self.whole})"
        restarted = ", ".join(f"{kind} {n!r}" for kind, names in self.changed.items() for n in names)
        return f"in place: restarting {restarted}; everything else keeps running"


def plan_reload(old: PipelineConfig, new: PipelineConfig) -> ReloadPlan:
    """In place when only components' own settings changed: the same components, each with the
    same inputs (and a sink with the same buffer and ``match``, a transform with the same output
    ports), and the same pipeline settings. Otherwise the whole pipeline, and why."""
    rest = ("sources", "transforms", "sinks")
    if old.model_dump(exclude=set(rest)) != new.model_dump(exclude=set(rest)):
        return ReloadPlan(whole="pipeline settings changed")
    plan = ReloadPlan()
    for (kind, _), attr in zip(KINDS, rest, strict=True):
        a, b = getattr(old, attr), getattr(new, attr)
        if set(a) != set(b):
            return ReloadPlan(whole=f"{kind}s added or removed")
        for n in a:
            if a[n] == b[n]:
                continue
            x, y = a[n], b[n]
            if kind != "source" and x.inputs != y.inputs:
                return ReloadPlan(whole=f"the inputs of {kind} {n!r} changed")
            if kind == "sink" and (x.buffer != y.buffer or x.match != y.match):
                return ReloadPlan(whole=f"the buffer or match of sink {n!r} changed")
            if kind == "transform" and sorted(type(x).output_ports(x.model_dump())) != sorted(
                type(y).output_ports(y.model_dump())
            ):
                return ReloadPlan(whole=f"the outputs of transform {n!r} changed")
            plan.changed.setdefault(kind, []).append(n)
    return plan


def orphan_buffers(config: PipelineConfig, data_dir: Path) -> list[tuple[Path, int, int]]:
    """Disk buffer directories under ``data_dir`` holding records that no sink of ``config`` reads
    (a sink renamed or removed, or its buffer now in memory): (directory, bytes, records)."""
    read = {n for n, c in config.sinks.items() if c.buffer.type == "disk"}
    found = []
    root = data_dir / "buffers"
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.is_dir() and d.name not in read:
            nbytes, records, _ = inspect(d)
            if records:
                found.append((d, nbytes, records))
    return found
