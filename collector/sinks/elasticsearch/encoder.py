"""Bulk request bodies: one ``create`` action line and one document per record.

Documents come from :meth:`Batch.encoded` (per-container fields encoded once, spliced into
each record), so a record costs one small ``orjson.dumps`` and one ``%`` format.
``create`` with the record's stable ``_id`` makes a replay harmless: the engine answers 409.

The target index can use record fields (``logs-docker-{{container.compose.project}}``) and,
in index mode, the record's date (``logs-docker-%Y.%m.%d``). Names are rendered once per
batch when the fields are shared by the batch (the usual case), per record otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from collector.event import Batch, get_path
from collector.sinks.elasticsearch.config import ElasticsearchConfig

_FIELD = re.compile(r"\{\{\s*([A-Za-z0-9_@.]+)\s*\}\}")
_BAD = re.compile(r'[\\/*?"<>| ,#:]+')


def sanitize(value: str) -> str:
    """A value usable inside an index name: lowercase, forbidden characters as ``_``."""
    v = _BAD.sub("_", value.lower())
    return v.lstrip("-_+") or "_"


def _json_str(s: str) -> bytes:
    b = s.encode()
    return orjson.dumps(s)[1:-1] if (b'"' in b or b"\\" in b) else b


class BulkEncoder:
    def __init__(self, cfg: ElasticsearchConfig) -> None:
        self.target = cfg.target()
        self.fields = cfg.template_fields()
        self.dated = cfg.mode == "index" and "%" in self.target
        self.fallback = cfg.fallback
        self.static = not self.fields and not self.dated
        self._names: dict[tuple[str, ...], str] = {}

    def _render(self, values: tuple[str, ...], date: str | None) -> str:
        key = (*values, date or "")
        name = self._names.get(key)
        if name is None:
            it = iter(values)
            name = _FIELD.sub(lambda _: sanitize(next(it)), self.target)
            if date:
                name = name.replace("%Y", date[0:4]).replace("%m", date[5:7]).replace("%d", date[8:10])
            if len(self._names) > 10_000:
                self._names.clear()
            self._names[key] = name
        return name

    def _value(self, ev: dict[str, Any], meta: Any, field: str) -> str:
        v = get_path(ev, field)
        if v is None:
            v = meta.get(field)
        return self.fallback if v is None or v == "" else str(v)

    def indices(self, batch: Batch) -> list[str] | str:
        """The target of each record, or one name for the whole batch."""
        if self.static:
            return self.target
        meta = batch.meta
        shared = [meta.get(f) for f in self.fields]
        if all(v is not None for v in shared) and not self.dated:
            return self._render(tuple(str(v) for v in shared), None)
        out = []
        for ev in batch.events:
            values = tuple(self._value(ev, meta, f) for f in self.fields)
            ts = ev.get("@timestamp") if self.dated else None
            out.append(self._render(values, ts if isinstance(ts, str) else None))
        return out

    def encode(self, batch: Batch) -> tuple[list[bytes], list[str] | str]:
        """(one bulk item per record: action line + document, the index of each record)."""
        docs = batch.encoded()
        ids = batch.ids
        target = self.indices(batch)
        items: list[bytes]
        if isinstance(target, str) and self.static:
            if ids is None:
                items = [b'{"create":{}}\n' + d + b"\n" for d in docs]
            else:
                items = [b'{"create":{"_id":"%s"}}\n%s\n' % (_json_str(i), d) for i, d in zip(ids, docs, strict=True)]
            return items, target
        names = [target] * len(docs) if isinstance(target, str) else target
        if ids is None:
            items = [b'{"create":{"_index":"%s"}}\n%s\n' % (n.encode(), d) for n, d in zip(names, docs, strict=True)]
        else:
            items = [
                b'{"create":{"_index":"%s","_id":"%s"}}\n%s\n' % (n.encode(), _json_str(i), d)
                for n, i, d in zip(names, ids, docs, strict=True)
            ]
        return items, names
