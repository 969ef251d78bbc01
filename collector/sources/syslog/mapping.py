"""Syslog messages -> our records (nested ECS, the same shape as the other sources).

    PRI                      -> log.syslog.priority, log.syslog.facility.{code,name},
                                log.syslog.severity.{code,name} and log.level (collector/levels.py)
    TIMESTAMP                -> @timestamp (RFC 3339 UTC, microseconds; receive time when absent)
    HOSTNAME                 -> host.name                                        (shared)
                                (absent: this host for a local socket; else the sender's address,
                                flagged ``log.flags: [host_from_peer]``)
    (this collector)         -> observer.hostname                                 (shared)
    APP-NAME / TAG           -> log.syslog.appname; tags and the batch's routing tag (shared);
                                container.id when it names a container (see below) (shared)
    PROCID, MSGID, VERSION   -> log.syslog.procid, log.syslog.msgid, log.syslog.version
    STRUCTURED-DATA          -> log.syslog.structured_data.<SD-ID>.<PARAM> (dots become ``_``)
    MSG                      -> message
    (Docker's driver)        -> stream: stderr at severity 3 (err), stdout at 6 (info)

Docker's syslog driver puts its ``tag`` (default ``{{.ID}}``, the 12-character id) in APP-NAME.
When the tag is a container id (full or a 12+ character hex prefix) or a container name that
the Docker metadata knows, the record gets ``container.id`` (the full id), and the
docker_metadata transform adds the rest.  Tags are validated (hex ids, Docker-shaped names)
before any lookup, and the answers are remembered (``resolve_ttl``), so a flood of made-up
tags costs a bounded cache, never a lookup per message.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from collector import levels
from collector.codecs.syslog import FACILITIES, Message
from collector.event import Event, Fields

MAX_CACHED = 10_000


class Mapper:
    """Turns parsed syslog messages into (shared fields, tag, event)."""

    def __init__(self, static_tags: list[str] | None, observer: str) -> None:
        self.static_tags = list(static_tags or [])
        self.observer = observer
        self._meta: dict[tuple[Any, ...], tuple[Fields, str]] = {}

    def shared(self, host: str, appname: str | None, container_id: str | None) -> tuple[Fields, str]:
        key = (host, appname, container_id)
        hit = self._meta.get(key)
        if hit is not None:
            return hit
        data: dict[str, Any] = {"host": {"name": host}, "observer": {"hostname": self.observer}}
        tags = list(self.static_tags)
        if appname and appname not in tags:
            tags.append(appname)
        if tags:
            data["tags"] = tags
        if container_id:
            data["container"] = {"id": container_id}
        # no APP-NAME: route by sender, as syslog.<host>, so sink `match:` patterns can select it
        hit = (Fields(data), appname or f"syslog.{host}")
        if len(self._meta) >= MAX_CACHED:
            self._meta.clear()
        self._meta[key] = hit
        return hit

    @staticmethod
    def event(m: Message, received: str, flagged_host: bool, container: bool) -> Event:
        sev = m.severity
        lg: dict[str, Any] = levels.fields(sev)
        sl = lg["syslog"]
        sl["facility"] = {"code": m.facility, "name": FACILITIES[m.facility]}
        sl["priority"] = m.priority
        if m.appname is not None:
            sl["appname"] = m.appname
        if m.procid is not None:
            sl["procid"] = m.procid
        if m.msgid is not None:
            sl["msgid"] = m.msgid
        if m.version is not None:
            sl["version"] = str(m.version)
        if m.structured_data:
            sl["structured_data"] = m.structured_data
        flags = list(m.flags)
        if flagged_host:
            flags.append("host_from_peer")
        if flags:
            lg["flags"] = flags
        ev: Event = {"@timestamp": m.timestamp or received, "message": m.text, "log": lg}
        if container and sev in (3, 6):
            ev["stream"] = "stderr" if sev == 3 else "stdout"  # Docker's driver: Err for stderr, Info for stdout
        return ev


class Resolutions:
    """Which container a tag names, remembered for ``ttl`` seconds (bounded, oldest dropped)."""

    def __init__(self, ttl: float, size: int = 4096) -> None:
        self.ttl = ttl
        self.size = size
        self._d: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    def get(self, tag: str) -> tuple[bool, str | None]:
        hit = self._d.get(tag)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, tag: str, cid: str | None) -> None:
        self._d[tag] = (time.monotonic() + self.ttl, cid)
        self._d.move_to_end(tag)
        while len(self._d) > self.size:
            self._d.popitem(last=False)
