"""Decoded values made JSON-safe: text that was not UTF-8, keys that are not text, bytes,
timestamps (:func:`text`, :func:`clean`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgpack

from collector.codecs.forward.errors import ForwardError
from collector.codecs.forward.eventtime import MAX_SECONDS, ForwardTimes, Stamp
from collector.codecs.forward.framer import MAX_DEPTH


def text(s: str) -> str:
    """``s`` made valid for JSON: bytes that were not UTF-8 become U+FFFD."""
    if s.isascii():
        return s
    try:
        s.encode()
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return s


_PLAIN = frozenset({int, float, bool, type(None), Stamp})


def clean(v: Any, depth: int = 0) -> Any:
    """``v`` made JSON-safe for orjson: keys become text, bytes become text, text is valid
    UTF-8.  Returns ``v`` itself when nothing needed changing; ForwardError when too deep."""
    t = type(v)
    if t is str:
        return text(v)
    if t in _PLAIN:
        return v
    if depth >= MAX_DEPTH:
        raise ForwardError("too deeply nested", f"more than {MAX_DEPTH} levels")
    if t is dict:
        out: dict[str, Any] | None = None
        for k, x in v.items():
            ck = text(k) if type(k) is str else _key(k)
            cx = clean(x, depth + 1)
            if out is None and (ck is not k or cx is not x):
                out = {}
                for k2, x2 in v.items():  # copy what came before unchanged
                    if k2 is k:
                        break
                    out[k2] = x2
            if out is not None:
                out[ck] = cx
        return v if out is None else out
    if t is list:
        items = [clean(x, depth + 1) for x in v]
        return v if all(a is b for a, b in zip(items, v, strict=True)) else items
    if t is bytes:
        return v.decode("utf-8", "replace")
    if t is msgpack.Timestamp:
        if 0 <= v.seconds <= MAX_SECONDS:
            return ForwardTimes()(v.seconds, v.nanoseconds)
        return f"{v.seconds}.{v.nanoseconds:09d}"
    if isinstance(v, datetime):
        return v.isoformat().replace("+00:00", "Z")
    return text(str(v))


def _key(k: Any) -> str:
    if type(k) is bytes:
        return k.decode("utf-8", "replace")
    return text(str(k))
