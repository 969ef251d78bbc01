"""Records and batches: the one data type that flows through a pipeline.

A *record* is an Elasticsearch-ready document with ECS field names, nested (``{"container":
{"name": ...}}``, never dotted keys).  Records travel in a :class:`Batch`:

* ``events``: one dict per record holding only what differs from record to record
  (``@timestamp``, ``message``, ``stream``, ``log.offset`` ...);
* ``meta``: a :class:`Fields` shared by every record of the batch (container, host, tags,
  file path ...), encoded to JSON once and spliced into each encoded record.  Enrichment
  is therefore per container, not per record;
* ``ids``: a stable id per record derived from where it came from, so a replay after a crash
  writes the same ``_id`` again (Elasticsearch answers 409 and nothing is duplicated);
* ``ack``: the handle that tells the source when the batch is delivered (see acks.py).

The full record is ``deep_merge(meta, event)``; :func:`encode_record` builds its JSON without
materialising that merge when the two do not share top-level keys (the common case).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from collector.acks import Ack

# ECS field names used across components.
TIMESTAMP = "@timestamp"
MESSAGE = "message"
STREAM = "stream"
TAGS = "tags"

Event = dict[str, Any]


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``over`` on top of ``base``; nested dicts merge, other values replace."""
    out = dict(base)
    for k, v in over.items():
        b = out.get(k)
        if isinstance(v, Mapping) and isinstance(b, Mapping):
            out[k] = deep_merge(b, v)
        else:
            out[k] = v
    return out


def get_path(doc: Mapping[str, Any], dotted: str) -> Any:
    """``get_path(doc, "container.name")``; None when any part is missing."""
    cur: Any = doc
    for part in dotted.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
        if cur is None:
            return None
    return cur


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_path(doc, "log.file.path", p)`` creating the intermediate dicts."""
    parts = dotted.split(".")
    cur = doc
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = cur[part] = {}
        cur = nxt
    cur[parts[-1]] = value


def with_path(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``dotted`` set, copying only the dicts on the path (copy-on-write:
    batches may be shared by several consumers, so transforms never mutate records in place)."""
    head, _, rest = dotted.partition(".")
    out = dict(doc)
    if not rest:
        out[head] = value
        return out
    inner = out.get(head)
    out[head] = with_path(inner if isinstance(inner, dict) else {}, rest, value)
    return out


# Top-level names our records and mappings own; a client's own field with one of these names
# would clash (a string "container" where an object is mapped), so it is moved aside.
RESERVED_ROOTS = frozenset(
    {
        "@timestamp",
        "message",
        "tags",
        "stream",
        "container",
        "host",
        "log",
        "event",
        "data_stream",
        "agent",
        "ecs",
        "input",
        "docker",
        "labels",
        "_id",
        "_index",
        "_source",
        "_routing",
    }
)


def place_extra(event: dict[str, Any], extra: Mapping[str, Any], namespace: str) -> None:
    """Add a client's own fields to ``event``: top level, except reserved names, which go under
    ``namespace`` (e.g. ``fluent.container``); keys never contain dots or start with ``_``."""
    aside: dict[str, Any] = {}
    for k, v in extra.items():
        key = str(k).replace(".", "_").lstrip("_") or "_"
        if key in RESERVED_ROOTS or key == namespace:
            aside[key] = v
        else:
            event[key] = v
    if aside:
        event[namespace] = aside


class Fields:
    """An immutable set of fields shared by many records, with its JSON encoded once.

    Treat ``data`` as read-only: derive a new ``Fields`` with :meth:`merged`.
    """

    __slots__ = ("_encoded", "data", "keys")

    EMPTY: Fields

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})
        self.keys = frozenset(self.data)
        self._encoded: bytes | None = None

    @property
    def encoded(self) -> bytes:
        """``orjson.dumps(data)``, computed once."""
        if self._encoded is None:
            # a copy: orjson's result keeps its whole write buffer (4 KiB at least), and shared
            # fields are kept for long (caches of containers, senders)
            self._encoded = bytes(memoryview(orjson.dumps(self.data)))
        return self._encoded

    def merged(self, over: Mapping[str, Any]) -> Fields:
        return Fields(deep_merge(self.data, over))

    def get(self, dotted: str) -> Any:
        return get_path(self.data, dotted)

    def __repr__(self) -> str:
        return f"Fields({self.data!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fields) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.encoded)


Fields.EMPTY = Fields()


def encode_record(event: Event, meta: Fields, dumps: Any = orjson.dumps) -> bytes:
    """The JSON document of ``deep_merge(meta, event)``, without building it when possible."""
    if not meta.keys:
        return dumps(event)
    if not event:
        return meta.encoded
    if meta.keys.isdisjoint(event):
        return dumps(event)[:-1] + b"," + meta.encoded[1:]
    return dumps(deep_merge(meta.data, event))


class Columns(Protocol):
    """Records kept column by column until someone needs them as dicts (see Batch)."""

    def __len__(self) -> int: ...

    @property
    def path(self) -> str | None:
        """The one file all these records were read from (a file source's read), None when they
        have no single file: what a transform may know of their origin without decoding them."""
        ...

    def events(self) -> list[Event]:
        """The records as dicts (done once, when a transform or sink asks for them)."""
        ...

    def encode(self, meta: Fields) -> list[bytes]:
        """Each record merged with ``meta`` as one JSON document, without building dicts."""
        ...


class Batch:
    """Records that travel together, with one acknowledgement handle.

    A source may hand over ``columns`` instead of ``events``: the records then stay in its
    compact form, and only turn into dicts if a transform reads ``batch.events``. A pipeline
    that only enriches per batch and encodes (json-file -> docker_metadata -> Elasticsearch)
    never builds a dict per record.
    """

    __slots__ = ("_events", "ack", "columns", "ids", "meta", "nbytes", "origin", "tag")

    def __init__(
        self,
        events: list[Event] | None,
        meta: Fields = Fields.EMPTY,
        *,
        ids: list[str] | None = None,
        ack: Ack | None = None,
        tag: str = "",
        origin: str = "",
        nbytes: int = 0,
        columns: Columns | None = None,
    ) -> None:
        if events is None and columns is None:
            raise ValueError("a batch needs events or columns")
        self._events = events
        self.columns = columns
        self.meta = meta
        self.ids = ids
        self.ack = ack
        self.tag = tag
        self.origin = origin  # the name of the source component that read these records
        # approximate size in memory/at the origin, for buffer accounting
        self.nbytes = nbytes or 64 * len(self)

    @property
    def events(self) -> list[Event]:
        if self._events is None:
            assert self.columns is not None
            self._events = self.columns.events()
            self.columns = None
        return self._events

    @events.setter
    def events(self, value: list[Event]) -> None:
        self._events = value
        self.columns = None

    def __len__(self) -> int:
        return len(self._events) if self._events is not None else len(self.columns)  # type: ignore[arg-type]

    def records(self) -> Iterator[dict[str, Any]]:
        """Each record merged with the shared fields (slow path: transforms, gelf, console)."""
        base = self.meta.data
        if not base:
            yield from self.events
            return
        for ev in self.events:
            yield deep_merge(base, ev)

    def encoded(self) -> list[bytes]:
        """Each record as one JSON document (what Elasticsearch and the file sink receive)."""
        if self._events is None and self.columns is not None:
            return self.columns.encode(self.meta)
        meta = self.meta
        dumps = orjson.dumps
        if not meta.keys:
            return [dumps(ev) for ev in self.events]
        menc = meta.encoded
        tail = menc[1:]
        keys = meta.keys
        out: list[bytes] = []
        ap = out.append
        for ev in self.events:
            if not ev:
                ap(menc)
            elif keys.isdisjoint(ev):
                ap(dumps(ev)[:-1] + b"," + tail)
            else:
                ap(dumps(deep_merge(meta.data, ev)))
        return out

    def derive(self, events: list[Event] | None, ids: list[str] | None, meta: Fields | None = None) -> Batch:
        """A batch for a subset/rewrite of these records sharing the same origin (``events``
        None: the same records, still in their columns when they are).

        The caller arranges the acknowledgement (``ack.retain``) when both batches live on.
        """
        n = len(self)
        if events is None:
            b = Batch(
                self._events,
                self.meta if meta is None else meta,
                ids=ids,
                ack=self.ack,
                tag=self.tag,
                origin=self.origin,
                nbytes=self.nbytes,
                columns=self.columns,
            )
            return b
        return Batch(
            events,
            self.meta if meta is None else meta,
            ids=ids,
            ack=self.ack,
            tag=self.tag,
            origin=self.origin,
            nbytes=max(1, self.nbytes * len(events) // max(1, n)),
        )

    def __repr__(self) -> str:
        return f"Batch({len(self)} events, origin={self.origin!r}, tag={self.tag!r})"
