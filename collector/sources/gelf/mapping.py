"""GELF messages -> our records (nested ECS, the same shape as the other sources).

    short_message        -> message
    full_message         -> gelf.full_message          (the gelf sink sends it back as full_message)
    host                 -> host.name                                         (shared)
                            (missing: the sender's address, flagged ``log.flags: [host_from_peer]``)
    (this collector)     -> observer.hostname                                 (shared)
    timestamp            -> @timestamp, RFC 3339 UTC with microseconds (receive time when absent)
    level                -> log.level, log.syslog.severity.{code,name} (collector/levels.py; other values
                            are kept as gelf.level)
    _container_id        -> container.id                                       (shared)
    _container_name      -> container.name                                     (shared)
    _image_name          -> container.image.name (+ container.image.tag)       (shared)
    _image_id            -> container.image.hash.all                           (shared)
    _command, _created   -> docker.container.command, docker.container.created (shared, as Metricbeat)
    _tag                 -> tags and the batch's routing tag                   (shared)
    _stream              -> stream; without it, Docker's gelf driver's level says it: 3 stderr, 6 stdout
    _anything_else       -> anything_else (top level; names we own go under ``gelf.``, see place_extra)
    facility, file, line -> gelf.facility, gelf.file, gelf.line (GELF 1.0 fields; other non-``_`` keys too)

"Shared" fields are the same for every message of one container: they become the batch's
:class:`Fields`, built once per (host, tag, container) and cached, so the docker_metadata
transform finds ``container.id`` there and enriches whole batches.
"""

from __future__ import annotations

import time
from typing import Any

from collector import levels
from collector.codecs.times import TimeFormatter
from collector.docker_api import split_image
from collector.event import Event, Fields, place_extra

MAX_CACHED = 10_000
MAX_CACHED_KEY_BYTES = 4096  # shared fields with longer values are built per message, not cached


def _size(key: tuple[Any, ...]) -> int:
    n = 0
    for v in key:
        if type(v) is tuple:
            n += _size(v)
        elif type(v) is str:
            n += len(v)
        else:
            n += 16
    return n


class Mapper:
    """Turns decoded GELF messages into (shared fields, tag, event)."""

    def __init__(self, static_tags: list[str] | None = None, observer: str | None = None) -> None:
        self.static_tags = list(static_tags or [])
        self.observer = observer
        self._meta: dict[tuple[Any, ...], tuple[Fields, str]] = {}
        self._fmt = TimeFormatter()

    def timestamp(self, ts: Any) -> str:
        t = type(ts)
        if t is float or t is int:
            try:
                return self._fmt.micros(ts)
            except (ValueError, OverflowError, OSError):
                pass
        elif t is str:
            try:
                return self._fmt.micros(float(ts))
            except (ValueError, OverflowError, OSError):
                pass
        return self._fmt.micros(time.time())

    def shared(self, host: str, tag: str | None, docker: tuple[Any, ...] | None) -> tuple[Fields, str]:
        key: tuple[Any, ...] | None = (host, tag, docker)
        try:
            hit = self._meta.get(key)  # type: ignore[arg-type]
        except TypeError:  # a list or map where Docker's driver sends text: fine, but not cached
            hit = key = None
        if hit is not None:
            return hit
        if key is not None and _size(key) > MAX_CACHED_KEY_BYTES:
            key = None  # a hostile sender cannot fill memory with huge one-off values
        data: dict[str, Any] = {"host": {"name": host}}
        if self.observer:
            data["observer"] = {"hostname": self.observer}
        tags = list(self.static_tags)
        if type(tag) is str and tag and tag not in tags:
            tags.append(tag)
        if tags:
            data["tags"] = tags
        if docker is not None:
            cid, name, image, image_id, command, created = docker
            c: dict[str, Any] = {"id": str(cid)}
            if type(name) is str and name:
                c["name"] = name.lstrip("/")
            img: dict[str, Any] = {}
            if type(image) is str and image:
                img["name"], itag = split_image(image)
                if itag:
                    img["tag"] = [itag]
            if type(image_id) is str and image_id:
                img["hash"] = {"all": [image_id]}
            if img:
                c["image"] = img
            data["container"] = c
            d = {k: v for k, v in (("command", command), ("created", created)) if v is not None}
            if d:
                data["docker"] = {"container": d}
        # no _tag (graypy and most libraries): route by sender, as gelf.<host>, so sink `match:`
        # patterns such as "gelf.**" can select it (not added to `tags`: nobody gave that tag)
        hit = (Fields(data), tag if type(tag) is str and tag else f"gelf.{host}")
        if key is not None:
            if len(self._meta) >= MAX_CACHED:
                self._meta.clear()
            self._meta[key] = hit
        return hit

    def __call__(self, msg: dict[str, Any], sender: str = "") -> tuple[Fields, str, Event]:
        """Consumes ``msg`` (a decoded GELF message with ``short_message``); ``sender`` is the
        peer's address, the host of a message that does not name its own."""
        pop = msg.pop
        short = pop("short_message")
        host = pop("host", None)
        flagged = False
        if type(host) is not str or not host:
            if host is not None and host != "":
                msg["host"] = host  # not a name: kept as written (gelf.host)
            host = sender or "unknown"
            flagged = True
        pop("version", None)
        ts = pop("timestamp", None)
        level = pop("level", None)
        tag = pop("_tag", None)
        cid = pop("_container_id", None)
        if cid is None:
            meta, tag = self.shared(host, tag, None)
        else:
            meta, tag = self.shared(
                host,
                tag,
                (
                    cid,
                    pop("_container_name", None),
                    pop("_image_name", None),
                    pop("_image_id", None),
                    pop("_command", None),
                    pop("_created", None),
                ),
            )
        ev: Event = {
            "@timestamp": self._fmt.micros(ts) if type(ts) is float and 0 < ts < 1e11 else self.timestamp(ts),
            "message": short,
        }
        if type(level) is int and 0 <= level <= 7:
            code: int | None = level
        else:
            code = levels.code(level) if level is not None else None
        if code is not None:
            ev["log"] = levels.fields(code)
        elif level is not None:
            msg["level"] = level  # not a syslog severity: kept as gelf.level
        stream = pop("_stream", None)
        if stream == "stdout" or stream == "stderr":  # noqa: PLR1714 - (a set would refuse a list: a client's value)
            ev["stream"] = stream
        elif stream is not None:
            msg["_stream"] = stream
        elif cid is not None and (code in {3, 6}):
            ev["stream"] = "stderr" if code == 3 else "stdout"  # Docker's gelf driver: stderr is level 3
        full = pop("full_message", None)
        proto: dict[str, Any] | None = None
        if msg:
            extra = {}
            for k, v in msg.items():
                if k[:1] == "_":
                    extra[k] = v
                else:  # GELF 1.0's facility, file, line, or anything non-standard
                    if proto is None:
                        proto = {}
                    proto[k.replace(".", "_")] = v
            if extra:
                place_extra(ev, extra, "gelf")
        if full is not None:
            if proto is None:
                proto = {}
            proto["full_message"] = full
        if proto is not None:
            g = ev.get("gelf")
            if type(g) is dict:
                g.update(proto)
            else:
                ev["gelf"] = proto
        if flagged:
            lg = ev.get("log")
            if type(lg) is not dict:
                lg = ev["log"] = {}
            lg["flags"] = ["host_from_peer"]
        return meta, tag, ev
