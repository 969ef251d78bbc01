"""Batches out of decoded records, and the chunk acknowledgements that wait for them.

A :class:`Unit` holds the records decoded from a stretch of one connection's input, grouped by
``(tag, container id, container name, sender host)`` as the client sent them; each group shares one cached
:class:`~collector.event.Fields` (``host``, ``tags``, ``container``), so Docker metadata is
looked up and encoded once per container, and the ``docker_metadata`` transform takes its fast
path (``batch.meta.get("container.id")``).  :meth:`Intake.batches` turns a unit into one batch
per group.

A chunk (``option.chunk``) is acknowledged when every record it carried is finalized: its
:class:`~collector.acks.Ack` (:func:`chunk_ack`) is held by the message until it is decoded and
by each unit holding some of its records; a unit's batches share one group Ack that releases
the unit's chunks, with their outcome, when all of them are finalized (delivered, stored by a
disk buffer, dead-lettered or filtered).  Records dead-lettered downstream are kept, so their
chunk is still acknowledged (a resend would only be rejected again): counted in
``collector_acks_total{status="rejected"}`` and logged; so are records a full buffer dropped
(``status="failed"``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from collector.acks import Ack, Status
from collector.codecs.forward import text
from collector.event import Batch, Fields
from collector.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from collector.component import Context

log = logging.getLogger("collector.sources.fluent_forward")

GroupKey = tuple[str, str | None, str | None, str]  # tag, container id, container name, sender host


def chunk_ack(chunk: str, send: Callable[[str, Ack], object]) -> Ack:
    """The pending ``{"ack": chunk}`` of one message: ``send(chunk, ack)`` when the last holder
    lets go; its first holder is the message itself, until it is fully decoded."""
    return Ack(partial(send, chunk))


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
        self.waiters: list[Ack] = []  # the chunk acks of the messages whose records are here
        self.count = 0
        self.nbytes = 0  # what batch.max_bytes bounds (the groups' nbytes summed)

    def hold(self, w: Ack) -> None:
        w.retain()
        self.waiters.append(w)

    def finished(self, outcome: Ack | None = None) -> None:
        """Every batch of the unit is finalized (``outcome``: how): release the chunks."""
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if outcome is None:
                w.done()
            else:
                outcome.pass_on(w)


class Intake:
    """What the connections of one source share: config, the Fields cache, counters."""

    def __init__(self, name: str, config: Any, ctx: Context) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.static_tags = list(config.tags)
        self._fields: dict[GroupKey, Fields] = {}
        self.received = ctx.telemetry.received.labels(name)
        self._acks = {st: ctx.telemetry.acks.labels(name, st.name.lower()) for st in Status}
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

    def acked(self, ack: Ack, peer: str, chunk: str) -> None:
        """A chunk's records are all finalized (its ack is being sent): count how, and say so
        when some were not delivered."""
        self._acks[ack.status].inc()
        if ack.rejected:
            self.warn(
                "acked_rejected",
                "%s: chunk %s acknowledged with %d record(s) rejected downstream (kept in the dead letter)",
                peer,
                chunk,
                ack.rejected,
            )
        if ack.failed:
            self.warn(
                "acked_failed",
                "%s: chunk %s acknowledged with %d record(s) dropped downstream (a full buffer's drop_newest)",
                peer,
                chunk,
                ack.failed,
            )

    def batches(self, unit: Unit) -> list[Batch]:
        """One batch per group; they share one group Ack that releases the unit's chunks once all
        are finalized (each batch has its own Ack, passed on to the group's)."""
        groups = [g for g in unit.groups.values() if g.events]
        if not groups:
            unit.finished()
            return []
        name = self.name
        group = Ack(partial(_finish, unit, name), holders=len(groups)) if unit.waiters else None
        out = []
        for g in groups:
            ack = None if group is None else Ack(partial(Ack.pass_on, to=group))
            out.append(Batch(g.events, g.meta, ids=g.ids, ack=ack, tag=g.key[0], source=name, nbytes=g.nbytes))
        self.received.inc(unit.count)
        return out


def _finish(unit: Unit, name: str, outcome: Ack) -> None:
    try:
        unit.finished(outcome)
    except Exception:  # never into the sink that finalized the batch
        log.exception("%s: could not send acks", name)
