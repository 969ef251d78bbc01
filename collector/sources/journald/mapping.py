"""Journal entries -> our records (nested ECS, the same shape as the other sources); the package
docstring (``collector/sources/journald/__init__.py``) lists the fields.  Pure code, on the
fields journalctl exported, so every rule is testable on an entry."""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, datetime
from typing import Any

from collector import levels
from collector.codecs.journal_export import Entry
from collector.codecs.syslog import FACILITIES
from collector.docker_api import split_image
from collector.event import Event, Fields

_HEX = re.compile(r"[0-9a-f]{12}(?:[0-9a-f]{52})?\Z")
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)\Z")
KNOWN = frozenset(
    {
        "MESSAGE",
        "PRIORITY",
        "SYSLOG_FACILITY",
        "SYSLOG_IDENTIFIER",
        "SYSLOG_PID",
        "SYSLOG_TIMESTAMP",
        "CONTAINER_ID",
        "CONTAINER_ID_FULL",
        "CONTAINER_NAME",
        "CONTAINER_TAG",
        "IMAGE_NAME",
        "CONTAINER_PARTIAL_MESSAGE",
        "CONTAINER_PARTIAL_ID",
        "CONTAINER_PARTIAL_ORDINAL",
        "CONTAINER_PARTIAL_LAST",
        "CONTAINER_LOG_EPOCH",
        "CONTAINER_LOG_ORDINAL",
        "MESSAGE_ID",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
    }
)


def shared_fields(key: tuple[bytes | None, ...], hostname: str, static_tags: list[str]) -> tuple[Fields, str]:
    """The fields every entry of one (host, container, name, image, tag) shares, and its routing tag;
    ``key`` is those journal fields as read (the source caches the result by it)."""
    host, cid, name, image, ctag = (v.decode(errors="replace") if v is not None else None for v in key)
    data: dict[str, Any] = {
        "host": {"name": host or hostname},
        "observer": {"hostname": hostname},
    }
    tags = list(static_tags)
    if ctag and ctag not in tags:
        tags.append(ctag)
    if tags:
        data["tags"] = tags
    if cid and _HEX.match(cid):  # an id from the journal is still validated before anyone looks it up
        c: dict[str, Any] = {"id": cid}
        if name:
            c["name"] = name.lstrip("/")
        if image:
            iname, itag = split_image(image)
            c["image"] = {"name": iname, "tag": [itag]} if itag else {"name": iname}
        data["container"] = c
    return Fields(data), ctag or (f"journald.{host}" if host else "journald")


def event(e: Entry, text: str, flags: list[str], container: bool) -> Event:
    """One record: ``text`` (the entry's MESSAGE, or a split line rejoined) and the entry's own fields."""
    g = e.get
    ev: Event = {"@timestamp": timestamp(e), "message": text}
    lg: dict[str, Any] = {}
    sev = _int(g("PRIORITY"))
    if sev is not None and 0 <= sev <= 7:
        lg = levels.fields(sev)
        if container and sev in (3, 6):
            ev["stream"] = "stderr" if sev == 3 else "stdout"  # Docker's journald driver
    syslog = lg.setdefault("syslog", {})
    fac = _int(g("SYSLOG_FACILITY"))
    if fac is not None and 0 <= fac < len(FACILITIES):
        syslog["facility"] = {"code": fac, "name": FACILITIES[fac]}
    ident = g("SYSLOG_IDENTIFIER")
    if ident is not None:
        syslog["appname"] = ident.decode(errors="replace")
    procid = g("SYSLOG_PID") or g("_PID")
    if procid is not None:
        syslog["procid"] = procid.decode(errors="replace")
    if not syslog:
        del lg["syslog"]
    if flags:
        lg["flags"] = flags
    if lg:
        ev["log"] = lg
    proc: dict[str, Any] = {}
    pid = _int(g("_PID"))
    if pid is not None:
        proc["pid"] = pid
    for src, dst in ((b"_COMM", "name"), (b"_EXE", "executable")):
        v = g(src.decode())
        if v is not None:
            proc[dst] = v.decode(errors="replace")
    if proc:
        ev["process"] = proc
    sd = {k: g(f).decode(errors="replace") for k, f in (("unit", "_SYSTEMD_UNIT"), ("transport", "_TRANSPORT")) if g(f)}
    if sd:
        ev["systemd"] = sd
    custom = {
        k.lower(): v.decode(errors="replace")
        for k, v in e.items()
        if k[:1] != "_" and k not in KNOWN and len(v) <= 4096
    }
    if custom:
        ev["journald"] = {"custom": custom}
    return ev


def _int(v: bytes | None) -> int | None:
    if v is None or not v.isdigit() or len(v) > 18:
        return None
    return int(v)


def record_id(cursor: str) -> str:
    return hashlib.blake2b(cursor.encode(), digest_size=16).hexdigest()


def timestamp(e: Entry) -> str:
    st = e.get("SYSLOG_TIMESTAMP")
    if st is not None:
        m = _RFC3339.match(st.decode(errors="replace").strip())
        if m:
            base, frac, zone = m.groups()
            try:
                dt = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).astimezone(UTC)
                return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"
            except ValueError:
                pass
    us = _int(e.get("_SOURCE_REALTIME_TIMESTAMP")) or _int(e.get("__REALTIME_TIMESTAMP"))
    if us is None:
        us = int(time.time() * 1e6)
    sec, micro = divmod(us, 1_000_000)
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{micro:06d}Z"
