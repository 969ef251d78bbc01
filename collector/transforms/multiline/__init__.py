"""Transform ``multiline``: stack traces (and other multi-line messages) as one record.

    multiline: {type: multiline, inputs: [meta], mode: java}
    multiline: {type: multiline, inputs: [meta], mode: pattern, start_pattern: '^\\d{4}-\\d\\d-\\d\\d '}

Lines are joined per stream (stdout, stderr) per container, in the order they were written,
separated by ``\\n`` and otherwise byte for byte (no trailing newline).  A joined record is its
first line's record (time, stream, offset, id) with the joined text, flagged
``log.flags: [multiline]``.  Modes:

* ``java``: a line starting with whitespace and ``at ``, ``... N more``/``... N common frames
  omitted``, or ``Caused by:``/``Suppressed:`` continues the line before it;
* ``node``: a line starting with whitespace and ``at `` (or ``... N more``) continues;
* ``python``: from ``Traceback (most recent call last):`` through the indented lines to the
  exception line, with chained tracebacks (``During handling of the above exception ...``,
  ``The above exception was the direct cause ...``) kept together;
* ``go``: from ``panic:``/``fatal error:``/``goroutine N [...]:`` through the goroutine dumps
  (tab-indented file lines, function lines, ``created by``, blank lines between goroutines);
* ``pattern``: ``start_pattern`` (a line matching it begins a record, any other line continues)
  and/or ``continue_pattern`` (a line matching it continues, any other begins); with both, a
  line matching neither is a record of its own;
* ``none``: records pass through (for containers that choose nothing, see ``label``).

``label`` (default ``collector.multiline``): a container with that label (``docker run --label
collector.multiline=python``) gets that mode; the others get ``mode``.  So one collector serves
mixed hosts; put this transform after ``docker_metadata`` (the labels come from there).

Limits: a record reaching ``max_lines`` or ``max_bytes`` is emitted as it is (flagged
``multiline_limit``) and the next line begins a new one; a record waits at most ``timeout``
seconds for its next line (the container went quiet: it is emitted as it is).

Delivery: a record still being built holds back the acknowledgement of every batch it has lines
from, and a batch whose last record continues into the next batch is finalized only with that
next batch, so a source's checkpoint only ever lands between two records.  After a kill -9 the
lines are read again from there and joined the same way, with the same ids (the first line's):
nothing is lost, and Elasticsearch gets no duplicate.  At a stop (SIGTERM), a record still
being built is not emitted (its lines are read again at the next start), except from sources
that cannot replay (GELF, syslog: it is emitted); with ``--once`` it is emitted.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from functools import partial
from typing import Any, Literal

from pydantic import Field, model_validator

from collector.acks import Ack
from collector.codecs.docker_json import DockerLines, Parsed
from collector.component import Context, Transform, TransformConfig
from collector.event import Batch, Fields
from collector.ratelog import RateLimitedLog
from collector.transforms.multiline.modes import (
    _JAVA_CONT,
    _NODE_CONT,
    CONT,
    HOLD,
    SINGLE,
    _go,
    _java,
    _node,
    _pattern,
    _python,
)
from collector.transforms.multiline.records import _batches, _Head, _Origin, _Record, _unref, _unref_all

log = logging.getLogger("collector.transforms.multiline")

Mode = Literal["none", "java", "python", "go", "node", "pattern"]
MODES = ("none", "java", "python", "go", "node", "pattern")


class MultilineConfig(TransformConfig):
    type: Literal["multiline"]
    mode: Mode = Field(
        description="How records continue: `java`, `python`, `go`, `node` stack traces, `pattern` (start_pattern / "
        "continue_pattern), or `none` (containers whose label does not choose)."
    )
    start_pattern: str | None = Field(None, description="(pattern) A line matching this regex begins a record.")
    continue_pattern: str | None = Field(
        None, description="(pattern) A line matching this regex continues the record before it."
    )
    label: str | None = Field(
        "collector.multiline",
        description="Container label whose value (a mode) overrides `mode` for that container; null: no label.",
    )
    max_lines: int = Field(500, ge=2, description="Lines of one record at most; past it a new record begins.")
    max_bytes: int = Field(
        1 << 20, ge=1024, description="Bytes of one record's text at most; past it a new record begins."
    )
    timeout: float = Field(
        1.0, gt=0, description="Seconds a record waits for its next line before it is emitted as it is."
    )
    field: Literal["message"] = Field("message", description="The field whose lines are joined.")

    @model_validator(mode="after")
    def _patterns(self) -> MultilineConfig:
        for name in ("start_pattern", "continue_pattern"):
            p = getattr(self, name)
            if p is not None:
                try:
                    re.compile(p)
                except re.error as e:
                    raise ValueError(f"{name}: bad pattern: {e}") from None
        if self.mode == "pattern" and not (self.start_pattern or self.continue_pattern):
            raise ValueError("mode: pattern needs `start_pattern` and/or `continue_pattern`")
        return self


class MultilineTransform(Transform):
    config: MultilineConfig

    def __init__(self, name: str, config: MultilineConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        c = config
        self._modes: dict[str, Any] = {
            "java": _java,
            "node": _node,
            "python": _python,
            "go": _go,
            "none": None,
            "pattern": _pattern(
                re.compile(c.start_pattern) if c.start_pattern else None,
                re.compile(c.continue_pattern) if c.continue_pattern else None,
            )
            if (c.start_pattern or c.continue_pattern)
            else None,
        }
        # modes in which every line either begins a record or continues the one before (no state):
        # their column batches take the fast path, records made of runs of lines (_runs)
        self._is_cont: dict[Any, Any] = {_java: _JAVA_CONT.match, _node: _NODE_CONT.match}
        pat = self._modes["pattern"]
        if pat is not None and not (c.start_pattern and c.continue_pattern):
            if c.continue_pattern:
                self._is_cont[pat] = re.compile(c.continue_pattern).search
            else:
                start = re.compile(c.start_pattern or "").search
                self._is_cont[pat] = lambda line: start(line) is None
        self._label = c.label.replace(".", "_") if c.label else None
        self._mode_of: dict[Fields, Any] = {}
        self._pending: OrderedDict[tuple[str, str, str], _Record] = OrderedDict()  # by last activity
        self._out: list[_Record] = []
        self._say = RateLimitedLog(log)
        self.tick_interval = min(0.25, c.timeout / 4)
        self._joined = ctx.telemetry.errors.labels(name, "multiline_limit")

    def _mode(self, meta: Fields) -> Any:
        fn = self._mode_of.get(meta, False)
        if fn is not False:
            return fn
        mode = self.config.mode
        if self._label:
            want = meta.get(f"container.labels.{self._label}")
            if isinstance(want, str) and want:
                if want in MODES and (want != "pattern" or self._modes["pattern"] is not None):
                    mode = want
                else:  # counted once per container (the choice is cached), said once a minute
                    self.ctx.telemetry.errors.labels(self.name, "bad_label").inc()
                    self._say.warning(
                        "bad_label",
                        "%s: container label %s=%r is not a mode (%s); using %r",
                        self.name,
                        self.config.label,
                        want[:60],
                        ", ".join(MODES),
                        mode,
                    )
        fn = self._modes[mode]
        if len(self._mode_of) > 10_000:
            self._mode_of.clear()
        self._mode_of[meta] = fn
        return fn

    # -- records ---------------------------------------------------------------------------------
    def _finalize(self, rec: _Record) -> None:
        self._out.append(rec)
        for head, line, origin in rec.tentative:  # held blank lines that did not continue it
            single = _Record(head, line, origin, None)
            if origin is not None:
                origin.refs -= 1  # _Record took a ref; the tentative line had one already
            self._out.append(single)
        rec.tentative = []

    def _line(self, key: tuple[str, str, str], classify: Any, head: _Head, line: str, origin: _Origin | None) -> None:
        rec = self._pending.get(key)
        action, state = classify(rec.state if rec is not None else None, line)
        if action == HOLD:
            if rec is None:
                action = SINGLE
            else:
                if origin is not None:
                    origin.refs += 1
                rec.tentative.append((head, line, origin))
                rec.state = state
                rec.last = time.monotonic()
                self._pending.move_to_end(key)
                return
        if action == CONT and rec is not None:
            cfg = self.config
            extra = sum(len(t[1]) + 1 for t in rec.tentative) + len(line) + 1
            if len(rec.lines) + len(rec.tentative) >= cfg.max_lines or rec.nbytes + extra > cfg.max_bytes:
                rec.limited = True
                self._joined.inc()
                del self._pending[key]
                self._finalize(rec)
                self._pending[key] = _Record(head, line, origin, state)
                return
            for _h, t, o in rec.tentative:
                rec.lines.append(t)
                rec.hold(o)
                if o is not None:
                    o.refs -= 1
            rec.nbytes += extra
            rec.tentative = []
            rec.lines.append(line)
            rec.hold(origin)
            rec.state = state
            rec.last = time.monotonic()
            self._pending.move_to_end(key)
            return
        if rec is not None:
            del self._pending[key]
            self._finalize(rec)
        new = _Record(head, line, origin, state)
        if action == SINGLE:
            self._out.append(new)
        else:
            self._pending[key] = new

    async def process(self, batch: Batch) -> list[tuple[str | None, Batch]]:
        meta = batch.meta
        classify = self._mode(meta)
        if classify is None:
            return [*self._expired(), (None, batch)]
        origin = _Origin(batch.ack) if batch.ack is not None else None
        ids = batch.ids
        cid = meta.get("container.id") or batch.tag
        src, tag = batch.origin, batch.tag
        cols = batch.columns
        is_cont = self._is_cont.get(classify)
        if isinstance(cols, DockerLines) and is_cont is not None:
            return self._runs(batch, cols, is_cont, origin, cid)
        if isinstance(cols, DockerLines):
            path = cols.path
            flags, attrs = cols.flags, cols.attrs
            for i, (t, m, st, off) in enumerate(
                zip(cols.times, cols.messages, cols.streams, cols.offsets, strict=True)
            ):
                col = (t, st, off, flags.get(i), attrs.get(i))
                head = _Head(meta, tag, src, ids[i] if ids else None, path, col, None)
                self._line((src, cid, st), classify, head, m, origin)
        else:
            for i, ev in enumerate(batch.events):
                text = ev.get("message")
                if type(text) is not str:
                    head = _Head(meta, tag, src, ids[i] if ids else None, None, None, ev)
                    self._out.append(_Record(head, "", origin, None))
                    continue
                c = ev.get("container")
                key = (src, (c.get("id") if isinstance(c, dict) else None) or cid, ev.get("stream") or "")
                head = _Head(meta, tag, src, ids[i] if ids else None, None, None, ev)
                self._line(key, classify, head, text, origin)
        self._expire(time.monotonic())
        out = self._emit()
        if origin is not None:
            _unref(origin)
        return out

    def _runs(self, batch: Batch, cols: DockerLines, is_cont: Any, origin: _Origin | None, cid: str) -> Any:
        """The fast path of stateless modes on columns: a record is a line that does not continue and the
        lines after it (same stream) that do.  Records that end in this batch come out without a
        ``_Record`` each; the last one of each stream waits for the next batch (or the timeout)."""
        cfg = self.config
        msgs, streams = cols.messages, cols.streams
        src, tag, meta, ids = batch.origin, batch.tag, batch.meta, batch.ids
        by_stream: dict[str, list[int]] = {}
        for i, st in enumerate(streams):
            lst = by_stream.get(st)
            if lst is None:
                by_stream[st] = [i]
            else:
                lst.append(i)
        own: list[tuple[list[int], bool]] = []  # (line indices, cut by a limit) of records ending here
        now = time.monotonic()
        for st, idxs in by_stream.items():
            key = (src, cid, st)
            rec = self._pending.get(key)
            j, n = 0, len(idxs)
            if rec is not None:  # leading continuations extend the record waiting from before
                while j < n and is_cont(msgs[idxs[j]]):
                    m = msgs[idxs[j]]
                    if len(rec.lines) >= cfg.max_lines or rec.nbytes + len(m) + 1 > cfg.max_bytes:
                        break
                    rec.lines.append(m)
                    rec.nbytes += len(m) + 1
                    rec.hold(origin)
                    j += 1
                if j == n:
                    rec.last = now
                    self._pending.move_to_end(key)
                    continue
                rec.limited = bool(is_cont(msgs[idxs[j]]))  # a continuation that did not fit
                if rec.limited:
                    self._joined.inc()
                del self._pending[key]
                self._finalize(rec)
            cur: list[int] = []
            size = 0
            for i in idxs[j:]:
                m = msgs[i]
                if cur and is_cont(m):
                    if len(cur) < cfg.max_lines and size + len(m) + 1 <= cfg.max_bytes:
                        cur.append(i)
                        size += len(m) + 1
                        continue
                    own.append((cur, True))
                    self._joined.inc()
                elif cur:
                    own.append((cur, False))
                cur, size = [i], len(m)
            if cur:  # the last record of the stream waits for its next line
                first = cur[0]
                col = (cols.times[first], st, cols.offsets[first], cols.flags.get(first), cols.attrs.get(first))
                head = _Head(meta, tag, src, ids[first] if ids else None, cols.path, col, None)
                rec = _Record(head, msgs[first], origin, None)
                if len(cur) > 1:
                    rec.lines.extend(msgs[k] for k in cur[1:])
                    rec.nbytes = size
                self._pending[key] = rec
        self._expire(now)
        out = self._emit()
        if own:
            own.sort(key=lambda r: r[0][0])
            p = Parsed()
            flags, attrs = cols.flags, cols.attrs
            for k, (idx, limited) in enumerate(own):
                first = idx[0]
                p.times.append(cols.times[first])
                p.streams.append(streams[first])
                p.offsets.append(cols.offsets[first])
                old = flags.get(first)
                if len(idx) == 1:
                    p.messages.append(msgs[first])
                    if limited or old:
                        p.flags[k] = [*(old or []), *(["multiline_limit"] if limited else [])]
                else:
                    p.messages.append("\n".join([msgs[i] for i in idx]))
                    p.flags[k] = [*(old or []), "multiline", *(["multiline_limit"] if limited else [])]
                if first in attrs:
                    p.attrs[k] = attrs[first]
            ack = None
            if origin is not None:
                origin.refs += 1
                ack = Ack(partial(_unref_all, [origin]))
            nbytes = sum(len(m) for m in p.messages) + 64 * len(own)
            b = Batch(
                None, meta, ids=None, ack=ack, tag=tag, origin=src, nbytes=nbytes, columns=DockerLines(p, cols.path)
            )
            if ids:
                b.ids = [ids[idx[0]] for idx, _ in own]
            out.append((None, b))
        if origin is not None:
            _unref(origin)
        return out

    def _expire(self, now: float) -> None:
        deadline = now - self.config.timeout
        while self._pending:
            key, rec = next(iter(self._pending.items()))
            if rec.last > deadline:
                break
            del self._pending[key]
            self._finalize(rec)

    def _expired(self) -> list[tuple[str | None, Batch]]:
        if not self._pending:
            return []
        self._expire(time.monotonic())
        return self._emit()

    async def tick(self) -> list[tuple[str | None, Batch]]:
        return self._expired()

    async def finish(self) -> list[tuple[str | None, Batch]]:
        for key, rec in list(self._pending.items()):
            # with --once, or from a source that cannot replay: emit; else read again next start
            if self.ctx.once or not rec.origins:
                del self._pending[key]
                self._finalize(rec)
        return self._emit()

    async def hand_over(self) -> list[tuple[str | None, Batch]]:
        # replaced at a reload: every record held is emitted as it is (a group cut short there)
        while self._pending:
            key = next(iter(self._pending))
            self._finalize(self._pending.pop(key))
        return self._emit()

    # -- output ----------------------------------------------------------------------------------
    def _emit(self) -> list[tuple[str | None, Batch]]:
        recs, self._out = self._out, []
        return _batches(recs)
