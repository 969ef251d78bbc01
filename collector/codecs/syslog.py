"""Syslog messages: RFC 5424 (with structured data) and RFC 3164, and their TCP framings.

:func:`parse` reads one message (a UDP/unix datagram, or one frame of a stream):

* RFC 5424: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]``; what
  Docker's syslog driver sends with ``syslog-format=rfc5424|rfc5424micro`` (the tag as APP-NAME
  and MSGID), util-linux ``logger`` over the network, rsyslog's ``RSYSLOG_SyslogProtocol23Format``.
* RFC 3164 and what is sent under its name: ``<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG``;
  without HOSTNAME (Docker's default format, glibc's ``syslog(3)``, ``logger`` on a unix
  socket); with an RFC 3339 timestamp instead (rsyslog's high-precision forwarding). A
  timestamp without a year or zone is this host's local time in the current year (the previous
  one when that would be more than a day ahead). A message that has no valid timestamp keeps
  everything after ``<PRI>`` as its text (RFC 3164 4.3.2).

``auto`` tells them apart by the version digit after ``<PRI>``.  A message without ``<PRI>``,
an RFC 5424 header that does not parse or malformed structured data is a :class:`SyslogError`
with a reason (the caller dead-letters it).  One trailing newline (senders such as Go's srslog,
which Docker uses, end every message with one) and a UTF-8 BOM before MSG are removed; bytes
that are not UTF-8 are replaced (U+FFFD) and the message is flagged ``invalid_utf8``.

:class:`Framer` splits a stream (TCP, TLS, unix stream) into frames, per frame: octet counting
(``LEN SP MSG``, RFC 6587 3.4.1 and RFC 5425) when it starts with digits and a space, newline
framing (RFC 6587 3.4.2) otherwise.  A frame longer than ``max_bytes`` is skipped (octet
counting: exactly its length; newline framing: up to its newline) and reported.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

from collector.codecs import InputError

Format = Literal["auto", "rfc5424", "rfc3164"]

FACILITIES = (
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
)
MONTHS = {
    m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)
}
NIL = "-"
BOM = "\ufeff"
MAX_HEADER_FIELD = 255  # RFC 5424 allows 48 (APP-NAME) ... 255 (HOSTNAME); senders exceed the small ones


class SyslogError(InputError):
    """A syslog message that cannot be read."""


@dataclass(slots=True)
class Message:
    facility: int
    severity: int
    timestamp: str | None  # RFC 3339 UTC with microseconds; None: the message had none
    hostname: str | None
    appname: str | None
    procid: str | None
    msgid: str | None
    structured_data: dict[str, Any] | None
    text: str
    format: str  # "rfc5424" | "rfc3164"
    version: int | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def priority(self) -> int:
        return self.facility * 8 + self.severity


def _utc(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_TS = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)\Z", re.ASCII)
_UTC_SECONDS: dict[tuple[str, str], str] = {}  # (local seconds, zone) -> UTC seconds: one conversion per second


def parse_rfc3339(s: str) -> str:
    """An RFC 5424 TIMESTAMP as RFC 3339 UTC with microseconds; ValueError when it is not one."""
    m = _TS.match(s)
    if m is None:
        raise ValueError(s)
    zone = m.group(8)
    key = (s[:19], zone)
    utc = _UTC_SECONDS.get(key)
    if utc is None:
        y, mo, d, h, mi, sec = (int(x) for x in m.group(1, 2, 3, 4, 5, 6))
        if zone in ("Z", "z"):
            tz: Any = UTC
        else:
            off = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            tz = timezone(off if zone[0] == "+" else -off)
        utc = datetime(y, mo, d, h, mi, sec, tzinfo=tz).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        if len(_UTC_SECONDS) >= 4096:
            _UTC_SECONDS.clear()
        _UTC_SECONDS[key] = utc
    frac = m.group(7)
    return f"{utc}.{(frac + '00000')[:6] if frac else '000000'}Z"


def parse_bsd_time(s: str, now: float | None = None) -> str:
    """``Mmm dd hh:mm:ss`` (local time, no year) as RFC 3339 UTC; ValueError when it is not one."""
    mon = MONTHS.get(s[:3])
    if mon is None or len(s) != 15 or s[3] != " " or s[6] != " " or s[9] != ":" or s[12] != ":":
        raise ValueError(s)
    day = int(s[4:6].strip())
    hh, mm, ss = int(s[7:9]), int(s[10:12]), int(s[13:15])
    now = time.time() if now is None else now
    year = time.localtime(now).tm_year
    t = time.mktime((year, mon, day, hh, mm, ss, 0, 0, -1))
    if t > now + 86400:  # December's lines read in January
        t = time.mktime((year - 1, mon, day, hh, mm, ss, 0, 0, -1))
    return _utc(datetime.fromtimestamp(t, UTC))


def _priority(text: str) -> tuple[int, int]:
    """(PRI, index after '>')."""
    if text[:1] != "<":
        raise SyslogError("no_priority", "a syslog message starts with <PRI>")
    end = text.find(">", 1, 5)
    digits = text[1:end] if end > 0 else ""
    if not digits.isdigit() or not digits.isascii() or (len(digits) > 1 and digits[0] == "0"):
        raise SyslogError("bad_priority", repr(text[:6]))
    pri = int(digits)
    if pri > 191:
        raise SyslogError("bad_priority", f"{pri} > 191")
    return pri, end + 1


def parse(data: bytes, fmt: Format = "auto", now: float | None = None) -> Message:
    """One syslog message (see the module docstring)."""
    flags: list[str] = []
    try:
        text = data.decode()
    except UnicodeDecodeError:
        text = data.decode("utf-8", "replace")
        flags.append("invalid_utf8")
    if text[-1:] == "\n":
        text = text[:-1]
    pri, i = _priority(text)
    is_5424 = text[i : i + 1].isdigit() and (
        text[i + 1 : i + 2] == " " or (text[i + 1 : i + 2].isdigit() and text[i + 2 : i + 3] == " ")
    )
    m = _parse_5424(text, i) if fmt == "rfc5424" or (fmt == "auto" and is_5424) else _parse_3164(text, i, now)
    m.facility, m.severity = pri >> 3, pri & 7
    if flags:
        m.flags = flags
    return m


def _parse_5424(text: str, i: int) -> Message:
    parts = text[i:].split(" ", 6)
    if len(parts) < 7:
        raise SyslogError("bad_rfc5424_header", repr(text[: i + 80]))
    version, ts, host, app, procid, msgid, rest = parts
    if not version.isdigit() or not version.isascii() or version[0] == "0":
        raise SyslogError("bad_rfc5424_header", f"version {version!r}")
    for name, v in (("hostname", host), ("app-name", app), ("procid", procid), ("msgid", msgid)):
        if not v or len(v) > MAX_HEADER_FIELD:
            raise SyslogError("bad_rfc5424_header", f"{name} {v[:40]!r}")
    if ts == NIL:
        stamp = None
    else:
        try:
            stamp = parse_rfc3339(ts)
        except ValueError:
            raise SyslogError("bad_timestamp", repr(ts[:40])) from None
    sd, j = _structured_data(rest)
    msg = rest[j:]
    if msg[:1] == " ":
        msg = msg[1:]
    elif msg:
        raise SyslogError("bad_structured_data", f"no space after it: {rest[: j + 10]!r}")
    if msg[:1] == BOM:
        msg = msg[1:]
    return Message(
        0,
        0,
        stamp,
        None if host == NIL else host,
        None if app == NIL else app,
        None if procid == NIL else procid,
        None if msgid == NIL else msgid,
        sd,
        msg,
        "rfc5424",
        int(version),
    )


def _structured_data(s: str) -> tuple[dict[str, Any] | None, int]:
    """STRUCTURED-DATA at the start of ``s``: ({SD-ID: {PARAM: value}}, index after it)."""
    if s[:1] == NIL and s[1:2] in ("", " "):
        return None, 1
    if s[:1] != "[":
        raise SyslogError("bad_structured_data", repr(s[:40]))
    out: dict[str, Any] = {}
    i, n = 0, len(s)
    while i < n and s[i] == "[":
        j = i + 1
        while j < n and s[j] not in ' ]="':
            j += 1
        sd_id = s[i + 1 : j]
        if not sd_id or j >= n or s[j] not in " ]":
            raise SyslogError("bad_structured_data", f"SD-ID at {s[i : i + 40]!r}")
        params: dict[str, Any] = {}
        while j < n and s[j] == " ":
            k = j + 1
            while k < n and s[k] not in ' ]="':
                k += 1
            name = s[j + 1 : k]
            if not name or s[k : k + 2] != '="':
                raise SyslogError("bad_structured_data", f"PARAM at {s[j : j + 40]!r}")
            k += 2
            chars: list[str] = []
            while True:
                q = s.find('"', k)
                b = s.find("\\", k, q if q >= 0 else n)
                if q < 0:
                    raise SyslogError("bad_structured_data", "unterminated PARAM-VALUE")
                if b < 0:
                    chars.append(s[k:q])
                    k = q + 1
                    break
                chars.append(s[k:b])
                nxt = s[b + 1 : b + 2]
                chars.append(nxt if nxt in ('"', "\\", "]") else "\\" + nxt)  # other escapes kept as written
                k = b + 2
            key = name.replace(".", "_")
            value = "".join(chars)
            if key in params:  # a PARAM-NAME may repeat (RFC 5424 6.3.3)
                old = params[key]
                params[key] = [*old, value] if isinstance(old, list) else [old, value]
            else:
                params[key] = value
            j = k
        if j >= n or s[j] != "]":
            raise SyslogError("bad_structured_data", f"no ']' closing {sd_id!r}")
        out[sd_id.replace(".", "_")] = params
        i = j + 1
    return out, i


def _parse_3164(text: str, i: int, now: float | None) -> Message:
    rest = text[i:]
    stamp: str | None = None
    try:
        if rest[:4].isdigit() and rest[4:5] == "-":  # RFC 3339 in the BSD position (rsyslog)
            sp = rest.find(" ")
            stamp = parse_rfc3339(rest[:sp] if sp > 0 else rest)
            rest = rest[sp + 1 :] if sp > 0 else ""
        else:
            stamp = parse_bsd_time(rest[:15], now)
            rest = rest[16:] if rest[15:16] == " " else rest[15:]
    except (ValueError, IndexError):
        # no valid timestamp: everything after <PRI> is the message (RFC 3164 4.3.2)
        return Message(0, 0, None, None, None, None, None, None, rest, "rfc3164")
    host: str | None = None
    first, sp, after = rest.partition(" ")
    if first and sp and not _is_tag(first) and len(first) <= MAX_HEADER_FIELD:
        host, rest = first, after
    app = procid = None
    tag, sp, after = rest.partition(" ")
    if _is_tag(tag):
        name = tag[:-1]
        if name.endswith("]") and "[" in name:
            name, _, pid = name[:-1].partition("[")
            procid = pid or None
        app = name or None
        rest = after if sp else ""
    return Message(0, 0, stamp, host, app, procid, None, None, rest, "rfc3164")


def _is_tag(tok: str) -> bool:
    """``name:`` or ``name[pid]:`` (what follows the timestamp, or the hostname)."""
    if tok[-1:] != ":" or not 1 < len(tok) <= 129:
        return False
    name = tok[:-1]
    if "[" in name:
        return name.endswith("]") and name.index("[") > 0
    return True


class FramingError(Exception):
    pass


class Framer:
    """Splits a byte stream into syslog frames (octet counting or newline, decided per frame)."""

    __slots__ = ("_buf", "_skip", "_skip_newline", "max_bytes", "oversize")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversize octet-counted frame still to discard
        self._skip_newline = False  # discarding an oversize newline frame up to its newline
        self.oversize: list[tuple[bytes, int]] = []  # (head, declared or seen length) of skipped frames

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        if self._skip_newline:
            nl = data.find(b"\n")
            if nl < 0:
                return []
            self._skip_newline = False
            data = data[nl + 1 :]
        buf += data
        out: list[bytes] = []
        pos, n = 0, len(buf)
        while pos < n:
            c = buf[pos]
            if 48 <= c <= 57:  # a digit: octet counting, LEN SP MSG
                sp = buf.find(b" ", pos, pos + 11)
                if sp < 0:
                    if n - pos >= 11 or not bytes(buf[pos:n]).isdigit():
                        raise FramingError(
                            f"neither an octet count nor a syslog message: {bytes(buf[pos : pos + 40])!r}"
                        )
                    break
                digits = bytes(buf[pos:sp])
                if not digits.isdigit():
                    raise FramingError(f"bad octet count {digits[:20]!r}")
                size = int(digits)
                start = sp + 1
                if size > self.max_bytes:
                    head = bytes(buf[start : start + min(size, 1024)])
                    self.oversize.append((head, size))
                    have = n - start
                    if have >= size:
                        pos = start + size
                        continue
                    self._skip = size - have
                    pos = n
                    break
                if n - start < size:
                    break
                out.append(bytes(buf[start : start + size]))
                pos = start + size
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if n - pos > self.max_bytes:
                    self.oversize.append((bytes(buf[pos : pos + 1024]), n - pos))
                    self._skip_newline = True
                    pos = n
                break
            if nl - pos > self.max_bytes:
                self.oversize.append((bytes(buf[pos : pos + 1024]), nl - pos))
            elif nl > pos:
                out.append(bytes(buf[pos:nl]))
            pos = nl + 1
        del buf[:pos]
        return out

    def take_oversize(self) -> list[tuple[bytes, int]]:
        o, self.oversize = self.oversize, []
        return o

    def rest(self) -> bytes | None:
        """What is left when the stream ends: a last newline frame without its newline."""
        if self._buf and not self._skip:
            data = bytes(self._buf)
            self._buf.clear()
            if data[:1] == b"<":
                return data
            raise FramingError(f"the stream ended inside a frame: {data[:40]!r}")
        return None
