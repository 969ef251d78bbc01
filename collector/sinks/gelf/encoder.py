"""Records -> GELF 1.1 documents (the mapping is described in the package docstring)."""

from __future__ import annotations

from typing import Any

import orjson

from collector.codecs.gelf import DEFAULT_LEVEL, VERSION, TimeParser, flatten, level_code
from collector.event import Batch, Fields

EMPTY_MESSAGE = "(empty)"
# Graylog trims what Java's String.trim() trims (every character up to U+0020) and drops a message
# left empty; it refuses a blank one (whitespace only): both are sent as EMPTY_MESSAGE
_JAVA_TRIM = "".join(chr(c) for c in range(0x21))


MAX_CACHED_META_BYTES = 16 << 10  # 10,000 cached entries of at most this: bounded memory


class GelfEncoder:
    """Records to GELF JSON documents; the shared fields of a batch are converted once."""

    def __init__(self, default_host: str) -> None:
        self.default_host = default_host
        self._names: dict[tuple[str, str], str] = {}
        self._meta: dict[tuple[bytes, str], dict[str, Any]] = {}
        self._time = TimeParser()

    def _convert(self, part: dict[str, Any], out: dict[str, Any], aside: dict[str, Any]) -> int | None:
        """Fields of a record (or of its shared part) into ``out``; returns the level it states."""
        level: int | None = None
        names = self._names
        for k, v in part.items():
            if k == "@timestamp":
                ts = self._time(v) if type(v) is str else (float(v) if type(v) in (int, float) else None)
                if ts is not None:
                    out["timestamp"] = ts
            elif k == "message":
                out["short_message"] = v if type(v) is str else orjson.dumps(v, default=str).decode()
            elif k == "host" and type(v) is dict:
                rest = v
                name = v.get("name")
                if name:
                    out["host"] = str(name)
                    rest = {hk: hv for hk, hv in v.items() if hk != "name"}
                flatten(rest, "_host", out, names)
            elif k == "log" and type(v) is dict:
                level = _level_of(v)
                rest = {lk: lv for lk, lv in v.items() if lk not in {"syslog", "level"}}
                syslog = v.get("syslog")
                if type(syslog) is dict:
                    rest_syslog = {sk: sv for sk, sv in syslog.items() if sk != "severity"}
                    if rest_syslog:
                        rest["syslog"] = rest_syslog
                lvl = v.get("level")
                if lvl is not None and level_code(lvl) != level:
                    rest["level"] = lvl  # says something ``level`` does not: keep it as written
                flatten(rest, "_log", out, names)
            elif k == "gelf" and type(v) is dict:
                for gk, gv in v.items():
                    if gk == "full_message":
                        out["full_message"] = gv if type(gv) is str else str(gv)
                    else:
                        flatten({gk: gv}, "", aside, names)
            elif k == "tags" and type(v) is list:
                if v:
                    out["_tags"] = ",".join(str(t) for t in v)
            else:
                flatten({k: v}, "", out, names)
        return level

    def _shared(self, meta: Fields, tag: str) -> tuple[dict[str, Any], int | None]:
        key = (meta.encoded, tag)
        hit = self._meta.get(key)
        if hit is None:
            out: dict[str, Any] = {"version": VERSION, "host": self.default_host}
            aside: dict[str, Any] = {}
            level = self._convert(meta.data, out, aside)
            if tag and "_tag" not in out:
                out["_tag"] = tag
            for k, v in aside.items():
                out.setdefault(k, v)
            hit = {"doc": out, "level": level}
            if len(key[0]) <= MAX_CACHED_META_BYTES:  # large shared fields are converted per batch
                if len(self._meta) > 10_000:
                    self._meta.clear()
                self._meta[key] = hit
        return hit["doc"], hit["level"]

    def documents(self, batch: Batch) -> list[dict[str, Any]]:
        base, base_level = self._shared(batch.meta, batch.tag)
        docs = []
        convert = self._convert
        for ev in batch.events:
            doc = dict(base)
            aside: dict[str, Any] = {}
            level = convert(ev, doc, aside)
            if aside:
                for k, v in aside.items():
                    doc.setdefault(k, v)
            if level is None:
                level = base_level
            if level is None:
                level = 3 if doc.get("_stream") == "stderr" else DEFAULT_LEVEL
            doc["level"] = level
            short = doc.get("short_message")
            if not short or (
                type(short) is str and (short.isspace() or (short[0] <= " " and not short.strip(_JAVA_TRIM)))
            ):
                doc["short_message"] = EMPTY_MESSAGE
            docs.append(doc)
        return docs

    def encode(self, batch: Batch) -> list[bytes]:
        dumps = orjson.dumps
        return [dumps(d) for d in self.documents(batch)]


def _level_of(log_: dict[str, Any]) -> int | None:
    syslog = log_.get("syslog")
    if type(syslog) is dict:
        sev = syslog.get("severity")
        if type(sev) is dict:
            code = level_code(sev.get("code"))
            if code is None:
                code = level_code(sev.get("name"))
            if code is not None:
                return code
    lvl = log_.get("level")
    return level_code(lvl) if lvl is not None else None


def truncate_to_fit(doc_json: bytes, compress: Any, limit: int) -> tuple[bytes, bytes] | None:
    """Cut ``full_message`` then ``short_message`` until the compressed document fits ``limit``.

    Returns (json, payload), or None when cutting the text is not enough.
    """
    doc = orjson.loads(doc_json)
    original = len(doc_json)
    data, payload = doc_json, compress(doc_json)
    for _ in range(8):
        if len(payload) <= limit:
            return data, payload
        ratio = len(payload) / len(data)
        excess = int((len(payload) - limit) / ratio * 1.2) + 256
        cut = False
        for field in ("full_message", "short_message"):
            text = doc.get(field)
            if type(text) is str and len(text) > 1 and excess > 0:
                keep = max(1, len(text) - excess)
                excess -= len(text) - keep
                doc[field] = text[:keep]
                cut = True
        if not cut:
            return None
        doc["_gelf_truncated_from"] = original
        data = orjson.dumps(doc)
        payload = compress(data)
    return (data, payload) if len(payload) <= limit else None
