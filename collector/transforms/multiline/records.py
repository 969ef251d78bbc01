"""The multiline transform's bookkeeping: the records being built, what they keep of their first
line, the input batches whose acknowledgement they hold, and the batches finished records make."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from collector.acks import Ack, release
from collector.codecs.docker_json import DockerLines, Parsed
from collector.event import Batch, Fields, with_path


# -- bookkeeping ---------------------------------------------------------------------------------
class _Origin:
    """One input batch's acknowledgement, held by the records made of its lines.

    Released when nothing holds it (``refs``) and every later batch a record spanned into from
    this one is released (``blocked``): the source's checkpoint never lands inside a record.
    The outcome (records rejected/failed) of an output batch is passed to the first input batch
    it holds, where its records began."""

    __slots__ = ("ack", "blocked", "failed", "preds", "refs", "rejected", "released", "succs")

    def __init__(self, ack: Ack) -> None:
        self.ack = ack
        self.refs = 1  # the batch being processed
        self.blocked = 0
        self.preds: list[_Origin] = []
        self.succs: list[_Origin] = []
        self.released = False
        self.rejected = 0
        self.failed = 0


def _unref(o: _Origin) -> None:
    o.refs -= 1
    _settle(o)


def _unref_all(held: list[_Origin], out: Ack) -> None:
    """An output batch is finalized: let go of the input batches it held."""
    if out.rejected or out.failed:
        held[0].rejected += out.rejected
        held[0].failed += out.failed
    for o in held:
        _unref(o)


def _settle(o: _Origin) -> None:
    todo = [o]
    while todo:
        x = todo.pop()
        if x.released or x.refs > 0 or x.blocked > 0:
            continue
        x.released = True
        release(x.ack, rejected=x.rejected, failed=x.failed)
        for p in x.preds:
            p.blocked -= 1
            todo.append(p)
        x.preds = []


def _link(earlier: _Origin, later: _Origin) -> None:
    if earlier is later or later in earlier.succs:
        return
    earlier.succs.append(later)
    later.preds.append(earlier)
    earlier.blocked += 1


class _Head:
    """What a record keeps of its first line (not the whole input batch)."""

    __slots__ = ("col", "event", "id", "meta", "origin", "path", "tag")

    def __init__(
        self, meta: Fields, tag: str, origin: str, rid: str | None, path: str | None, col: Any, event: Any
    ) -> None:
        self.meta, self.tag, self.origin, self.id, self.path, self.col, self.event = (
            meta,
            tag,
            origin,
            rid,
            path,
            col,
            event,
        )


class _Record:
    __slots__ = ("head", "last", "limited", "lines", "nbytes", "origins", "state", "tentative")

    def __init__(self, head: _Head, line: str, origin: _Origin | None, state: Any) -> None:
        self.head = head
        self.lines = [line]
        self.nbytes = len(line)
        self.origins: list[_Origin] = []
        self.state = state
        self.tentative: list[tuple[_Head, str, _Origin | None]] = []
        self.limited = False
        self.last = time.monotonic()
        self.hold(origin)

    def hold(self, origin: _Origin | None) -> None:
        if origin is not None and (not self.origins or self.origins[-1] is not origin):
            if self.origins:
                _link(self.origins[-1], origin)
            if origin not in self.origins:
                origin.refs += 1
                self.origins.append(origin)


def _batches(recs: list[_Record]) -> list[tuple[str | None, Batch]]:
    """Finished records as batches: consecutive records with the same shared fields and origin go
    together (never reordered); each batch holds the input batches its records were made of."""
    if not recs:
        return []
    groups: list[tuple[tuple[int, str, str, str | None], list[_Record]]] = []
    for r in recs:
        h = r.head
        key = (id(h.meta), h.tag, h.origin, h.path if h.col is not None else None)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(r)
        else:
            groups.append((key, [r]))
    out: list[tuple[str | None, Batch]] = []
    for (_, tag, source, path), rs in groups:
        meta = rs[0].head.meta
        held = [o for r in rs for o in r.origins]
        ack = Ack(partial(_unref_all, held)) if held else None
        ids = [r.head.id for r in rs]
        nbytes = sum(r.nbytes for r in rs) + 64 * len(rs)
        if path is not None:
            p = Parsed()
            for i, r in enumerate(rs):
                t, st, off, flags, attrs = r.head.col
                p.times.append(t)
                p.messages.append("\n".join(r.lines) if len(r.lines) > 1 else r.lines[0])
                p.streams.append(st)
                p.offsets.append(off)
                fl = _flags(flags, r)
                if fl:
                    p.flags[i] = fl
                if attrs is not None:
                    p.attrs[i] = attrs
            b = Batch(
                None, meta, ids=None, ack=ack, tag=tag, origin=source, nbytes=nbytes, columns=DockerLines(p, path)
            )
        else:
            events = []
            for r in rs:
                ev = r.head.event
                if ev is None:  # a columns record finalized among events (never in practice)
                    ev = {}
                if len(r.lines) > 1 or r.limited:
                    ev = with_path(ev, "message", "\n".join(r.lines))
                    lg = ev.get("log")
                    old = lg.get("flags") if isinstance(lg, dict) else None
                    ev = with_path(ev, "log.flags", _flags(old, r))
                events.append(ev)
            b = Batch(events, meta, ids=None, ack=ack, tag=tag, origin=source, nbytes=nbytes)
        if all(i is not None for i in ids):
            b.ids = ids  # type: ignore[assignment]
        out.append((None, b))
    return out


def _flags(old: list[str] | None, r: _Record) -> list[str] | None:
    if len(r.lines) == 1 and not r.limited:
        return old
    fl = list(old or [])
    if len(r.lines) > 1:
        fl.append("multiline")
    if r.limited:
        fl.append("multiline_limit")
    return fl
