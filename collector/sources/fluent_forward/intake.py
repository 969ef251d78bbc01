"""Batches out of decoded records, and the chunk acknowledgements that wait for them.

A :class:`Unit` holds the records decoded from a stretch of one connection's input, grouped by
``(tag, container id, container name, sender host)`` as the client sent them; each group shares one cached
:class:`~collector.event.Fields` (``host``, ``tags``, ``container``), so Docker metadata is
looked up and encoded once per container, and the ``docker_metadata`` transform takes its fast
path (``batch.meta.get("container.id")``).  :meth:`Intake.batches` turns a unit into one batch
per group.

A chunk (``option.chunk``) is acknowledged when every record it carried is finalized: each unit
holding some of its records holds a reference to its :class:`ChunkAck`, released when all the
unit's batches are finalized (delivered, stored by a disk buffer, dead-lettered or filtered).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from collector.acks import Ack
from collector.codecs.forward import text
from collector.event import Batch, Fields
from collector.ratelog import RateLimitedLog

if TYPE_CHECKING:
    import asyncio

    from collector.component import Context

log = logging.getLogger("collector.sources.fluent_forward")

GroupKey = tuple[str, str | None, str | None, str]  # tag, container id, container name, sender host


class ChunkAck:
    """The pending ``{"ack": chunk}`` of one message: sent when the last holder lets go."""

    __slots__ = ("chunk", "n", "send")

    def __init__(self, chunk: str, send: Callable[[str], None]) -> None:
        self.chunk = chunk
        self.send = send
        self.n = 1  # the message itself, until it is fully decoded

    def retain(self) -> None:
        self.n += 1

    def release(self) -> None:
        self.n -= 1
        if self.n == 0:
            self.send(self.chunk)


class Group:
    __slots__ = ("events", "ids", "key", "meta", "nbytes")

    def __init__(self, key: GroupKey, meta: Fields) -> None:
        self.key = key
        self.meta = meta
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.nbytes = 0


class Unit:
    """Records decoded from a stretch of input, and the chunk acks that wait on them."""

    __slots__ = ("count", "groups", "nbytes", "waiters")

    def __init__(self) -> None:
        self.groups: dict[GroupKey, Group] = {}
        self.waiters: list[ChunkAck] = []
        self.count = 0
        self.nbytes = 0  # what batch.max_bytes bounds (the groups' nbytes summed)

    def hold(self, w: ChunkAck) -> None:
        w.retain()
        self.waiters.append(w)

    def finished(self) -> None:
        """Every batch of the unit is finalized: release the chunks."""
        for w in self.waiters:
            w.release()
        self.waiters = []


class Intake:
    """What the connections of one source share: config, the Fields cache, counters."""

    def __init__(self, name: str, config: Any, ctx: Context) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.static_tags = list(config.tags)
        self._fields: dict[GroupKey, Fields] = {}
        self.received = ctx.telemetry.received.labels(name)
        self.say = RateLimitedLog(log, prefix=f"{name}: ")  # one line per reason per minute

    def fields(self, key: GroupKey) -> Fields:
        """The shared fields of ``(tag, container_id, container_name, host)`` as the client sent
        them; ``host`` is the sender's (records.py), this collector is ``observer.hostname``."""
        f = self._fields.get(key)
        if f is None:
            cacheable = sum(len(k) for k in key if k) <= 4096  # a hostile client cannot fill memory
            tag, cid, cname, host = key
            tags = [tag] if tag else []
            tags.extend(t for t in self.static_tags if t not in tags)
            data: dict[str, Any] = {"host": {"name": text(host)}, "observer": {"hostname": self.ctx.hostname}}
            if tags:
                data["tags"] = tags
            if cid is not None:
                c = data["container"] = {"id": text(cid)}
                if cname and cname != "/":
                    c["name"] = text(cname).lstrip("/")
            f = Fields(data)
            if cacheable:
                if len(self._fields) >= 10_000:
                    self._fields.clear()
                self._fields[key] = f
        return f

    def error(self, reason: str, n: float = 1) -> None:
        self.ctx.telemetry.errors.labels(self.name, reason).inc(n)

    def warn(self, reason: str, msg: str, *args: Any) -> None:
        """A warning about the input, logged once per ``reason`` (a short stable word) per minute."""
        self.say.warning(reason, msg, *args)

    def batches(self, unit: Unit, loop: asyncio.AbstractEventLoop) -> list[Batch]:
        """One batch per group; their acks release the unit's chunks once all are finalized."""
        groups = [g for g in unit.groups.values() if g.events]
        if not groups:
            unit.finished()
            return []
        ack_for: Callable[[], Ack | None] = lambda: None  # noqa: E731
        name = self.name
        if unit.waiters:
            left = [len(groups)]
            thread = threading.get_ident()

            def count() -> None:
                try:
                    left[0] -= 1
                    if left[0] == 0:
                        unit.finished()
                except Exception:  # never into the sink that finalized the batch
                    log.exception("%s: could not send acks", name)

            def done() -> None:  # not calling itself: a closure cycle kept the unit's records until a full GC
                if threading.get_ident() != thread:  # a sink finalizing from its own thread
                    loop.call_soon_threadsafe(count)
                else:
                    count()

            ack_for = lambda: Ack(done)  # noqa: E731
        out = []
        for g in groups:
            tag = g.key[0]
            out.append(Batch(g.events, g.meta, ids=g.ids, ack=ack_for(), tag=tag, source=name, nbytes=g.nbytes))
        self.received.inc(unit.count)
        return out
