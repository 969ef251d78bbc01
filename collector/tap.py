"""``collector tap``: the records passing a component of a running collector, live.

Server side (``GET /tap?component=NAME&tag=PATTERN&container=NAME&rate=N`` on the API): each
component's output (an :class:`~collector.component.Emitter`; for a sink, the edges into it, after
its ``match``) has a ``taps`` list. Empty, it costs one attribute check per batch. A tap attached
there copies the matching records of a batch, serialized at once (a tap never holds or mutates a
record), into a small queue of its own. When the queue is full (the client reads slowly, or not
at all) or the tap's rate (records per second) is spent, the batch is skipped and counted: a tap
never waits, so it can never slow or block the pipeline; the stream says how many were skipped.

The stream is NDJSON (the same documents as the file sink) with control lines starting with
``#``, which are never records:

    #tap {"component": "out", "kind": "sink", "rate": 1000, "queue": 1000}   once, first
    #tag "app.web"                                 the tag of the records that follow
    #skipped 1234                                  records skipped so far (sampling; once a second)
    #end stop                                      the pipeline stopped
    #end reload                                    it is replaced (a reload): ask again
    #                                              nothing passed for a second (the stream is alive)

Client side: :func:`run_tap` prints the records, as the console sink does on a terminal
(``render_text``) and as NDJSON when piped.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

from collector.event import Batch, get_path
from collector.tags import TagPatternError, tag_pattern

DEFAULT_RATE = 1000  # records per second a tap copies at most (0: no limit but the queue)
DEFAULT_QUEUE = 1000  # records a tap holds for its client at most
SKIPPED_EVERY = 1.0  # seconds between two "#skipped" lines of a stream (and one at its end)


class Tap:
    """One attached client: its filters, its bounded queue, what it skipped."""

    def __init__(
        self,
        component: str,
        tag: str | None = None,
        container: str | None = None,
        rate: int = DEFAULT_RATE,
        queue: int = DEFAULT_QUEUE,
    ) -> None:
        self.component = component
        self.match_tag = tag_pattern(tag) if tag else None
        self.container = container
        self.rate = rate
        self.queue = queue
        self.tokens = float(min(rate, queue)) if rate else 0.0
        self.last = time.monotonic()
        self.chunks: deque[tuple[str, list[bytes]]] = deque()
        self.queued = 0
        self.skipped = 0
        self.closed = False
        self.wake = asyncio.Event()

    def _container_ok(self, name: Any, cid: Any) -> bool:
        pat = self.container or ""
        return (isinstance(name, str) and fnmatchcase(name, pat)) or (
            isinstance(cid, str) and len(pat) >= 4 and cid.startswith(pat)
        )

    def _record_ok(self, line: bytes) -> bool:
        doc = orjson.loads(line)
        return self._container_ok(get_path(doc, "container.name"), get_path(doc, "container.id"))

    def offer(self, batch: Batch) -> None:
        """Called by the component's output for each batch: copy what matches, if there is room
        and rate left; otherwise count it as skipped. Never waits."""
        if self.closed or (self.match_tag is not None and not self.match_tag(batch.tag)):
            return
        per_record = False
        if self.container is not None:
            name, cid = batch.meta.get("container.name"), batch.meta.get("container.id")
            if name is None and cid is None:
                per_record = True  # not a shared field of the batch: decided record by record
            elif not self._container_ok(name, cid):
                return
        n = len(batch)
        want = min(n, self.queue - self.queued)
        if self.rate:
            now = time.monotonic()
            burst = min(self.rate, self.queue)
            self.tokens = min(float(burst), self.tokens + (now - self.last) * self.rate)
            self.last = now
            want = min(want, burst)
            if self.tokens < want:
                want = 0
        if want <= 0:
            self.skipped += n
            return
        lines = batch.encoded()  # serialized now: later changes to the batch are not seen
        if per_record:
            lines = [line for line in lines if self._record_ok(line)]
        take = lines[:want]
        self.skipped += len(lines) - len(take)
        if take:
            if self.rate:
                self.tokens -= len(take)
            self.chunks.append((batch.tag, [bytes(line) for line in take]))
            self.queued += len(take)
            self.wake.set()

    def take(self) -> list[tuple[str, list[bytes]]]:
        out = list(self.chunks)
        self.chunks.clear()
        self.queued = 0
        return out

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class Tappable:
    """A point records pass (an output, an edge into a sink): a list of taps, empty when none."""

    taps: list[Tap]


class TapHub:
    """The tap points of one pipeline, by component name, and the ``GET /tap`` stream."""

    def __init__(self) -> None:
        self.points: dict[str, list[Tappable]] = {}
        self.kinds: dict[str, str] = {}
        self.active: dict[Tap, asyncio.StreamWriter] = {}
        self.closed = False
        self.reason = "stop"

    def add(self, component: str, kind: str, point: Tappable) -> None:
        self.points.setdefault(component, []).append(point)
        self.kinds[component] = kind

    def default_component(self) -> str | None:
        sinks = [n for n, k in self.kinds.items() if k == "sink"]
        return sinks[0] if len(sinks) == 1 else None

    def attach(self, tap: Tap) -> None:
        for p in self.points[tap.component]:
            p.taps = [*p.taps, tap]  # replaced, never changed in place: an emit in progress is not affected

    def detach(self, tap: Tap) -> None:
        tap.close()
        for p in self.points.get(tap.component, ()):
            p.taps = [t for t in p.taps if t is not tap]

    async def close(self, reason: str = "stop", grace: float = 1.0) -> None:
        """The pipeline stopped (``reason``: stop or reload): each stream says so and ends; one
        whose client does not read is cut after ``grace`` seconds."""
        self.closed = True
        self.reason = reason
        for tap in list(self.active):
            tap.close()
        deadline = time.monotonic() + grace
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for writer in list(self.active.values()):
            writer.transport.abort()

    async def serve(self, query: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """``GET /tap``: stream until the client goes away or the pipeline stops."""
        q = {k: v[-1] for k, v in parse_qs(query).items()}
        component = q.get("component") or self.default_component()
        if component is None or component not in self.points:
            known = ", ".join(f"{n} ({k})" for n, k in self.kinds.items())
            why = (
                f"no component {component!r} in this pipeline"
                if component
                else "this pipeline has several sinks: name a component"
            )
            await _respond(writer, 404, {"error": f"{why}; components: {known}"})
            return
        try:
            rate = int(q.get("rate", DEFAULT_RATE))
            queue = int(q.get("queue", DEFAULT_QUEUE))
            if rate < 0 or queue < 1:
                raise ValueError("rate must be 0 or more, queue 1 or more")
            tap = Tap(component, q.get("tag") or None, q.get("container") or None, rate, queue)
        except (ValueError, TagPatternError) as e:
            await _respond(writer, 400, {"error": str(e)})
            return
        if self.closed:
            await _respond(writer, 503, {"error": "the pipeline is stopping"})
            return
        head = {"component": component, "kind": self.kinds[component], "rate": rate, "queue": queue}
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\n"
            b"Connection: close\r\n\r\n#tap " + orjson.dumps(head) + b"\n"
        )
        self.attach(tap)
        self.active[tap] = writer
        gone = asyncio.ensure_future(reader.read(1))  # the client sends nothing more: b"" when it leaves
        reported = 0
        said = 0.0
        try:
            await writer.drain()
            while not gone.done():
                woken = asyncio.ensure_future(tap.wake.wait())
                await asyncio.wait({woken, gone}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if gone.done():
                    break
                tap.wake.clear()
                out: list[bytes] = []
                for tag, lines in tap.take():
                    out.append(b"#tag " + orjson.dumps(tag) + b"\n")
                    out.extend(line + b"\n" for line in lines)
                now = time.monotonic()
                if tap.skipped != reported and (now - said >= SKIPPED_EVERY or tap.closed):
                    reported, said = tap.skipped, now
                    out.append(b"#skipped %d\n" % reported)
                if tap.closed:
                    out.append(b"#end " + self.reason.encode() + b"\n")
                if not out:
                    out.append(b"#\n")  # still there (the client's read timeout is not reached)
                writer.write(b"".join(out))
                await writer.drain()  # only this stream waits for its client
                if tap.closed:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            gone.cancel()
            self.detach(tap)
            self.active.pop(tap, None)


async def _respond(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
    data = orjson.dumps(body)
    reason = {400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + data
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


# -- the client --------------------------------------------------------------------------------
class TapError(Exception):
    """The tap cannot start: ``code`` is the exit code, the message says why."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def find_url(url: str | None, data_dir: Path) -> str:
    """``--url``, else the API the collector running on ``data_dir`` announced (api.json), else
    ``$COLLECTOR_API_LISTEN`` or port 8686 on loopback (as ``collector top``)."""
    if url:
        return url
    from collector.status import running_api  # noqa: PLC0415
    from collector.top import default_url  # noqa: PLC0415

    return running_api(data_dir) or default_url()


def open_stream(url: str, params: dict[str, str], timeout: float = 30.0) -> tuple[Any, Any]:
    """The connection and the response of ``GET <url>/tap?params``; TapError when refused."""
    u = urlsplit(url)
    if u.scheme not in ("http", "") or not u.hostname:
        raise TapError(f"--url {url!r}: expected http://HOST:PORT", 2)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    target = (u.path.rstrip("/") or "") + "/tap?" + urlencode(params)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise TapError(
            f"cannot reach {url}: {getattr(e, 'strerror', None) or e} (is a collector running with its API on: "
            "--api, api.listen?)",
            1,
        ) from None
    if resp.status != 200:
        body = resp.read()
        conn.close()
        try:
            why = str(orjson.loads(body)["error"])
        except (ValueError, KeyError, TypeError):
            why = f"HTTP {resp.status} from {url}/tap (an older collector without taps?)"
        raise TapError(why, 2 if resp.status in (400, 404) else 3 if resp.status == 503 else 1)
    return conn, resp


def reattach(target: str, params: dict[str, str], within: float = 60.0) -> tuple[Any, Any]:
    """The stream of the pipeline that replaces the one that ended for a reload (it answers 503
    until it runs)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return open_stream(target, params)
        except TapError as e:
            if e.code != 3 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run_tap(
    url: str | None,
    data_dir: Path,
    component: str | None = None,
    tag: str | None = None,
    container: str | None = None,
    limit: int | None = None,
    rate: int = DEFAULT_RATE,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print what passes; 0 after ``limit`` records or on Ctrl-C, 1 when the collector cannot be
    reached or stops first, 2 for a component that does not exist or a bad pattern."""
    out = out or sys.stdout
    err = err or sys.stderr
    params = {k: v for k, v in (("component", component), ("tag", tag), ("container", container)) if v}
    params["rate"] = str(rate)
    target = find_url(url, data_dir)
    try:
        conn, resp = open_stream(target, params)
    except TapError as e:
        print(f"collector tap: {e}", file=err)
        return 1 if e.code == 3 else e.code
    text = out.isatty()
    render: Callable[[list[dict[str, Any]], str], str] | None = None
    if text:
        from collector.sinks.console import render_text  # noqa: PLC0415

        def render(recs: list[dict[str, Any]], t: str) -> str:
            return render_text(recs, t, True)

    shown = 0
    current_tag = ""
    try:
        while limit is None or shown < limit:
            try:
                line = resp.readline()
            except TimeoutError:
                print(f"collector tap: {target} stopped answering", file=err)
                return 1
            if not line:
                print("collector tap: the connection to the collector was lost", file=err)
                return 1
            if line.startswith(b"#"):
                word, _, rest = line[1:].rstrip(b"\n").partition(b" ")
                if word == b"tag":
                    current_tag = str(orjson.loads(rest))
                elif word == b"skipped":
                    print(
                        f"sampling: {int(rest):,} records skipped (the tap keeps up to {rate or 'any number of'} "
                        "records/s; --rate)",
                        file=err,
                        flush=True,
                    )
                elif word == b"tap":
                    head = orjson.loads(rest)
                    print(
                        f"tapping {head['component']} ({head['kind']}) at {target}; Ctrl-C to stop",
                        file=err,
                        flush=True,
                    )
                elif word == b"end":
                    if rest != b"reload":
                        print("collector tap: the collector stopped", file=err)
                        return 0 if limit is None else 1
                    print("collector tap: the collector is reloading its config; tapping the new pipeline", file=err)
                    conn.close()
                    try:
                        conn, resp = reattach(target, params)
                    except TapError as e:
                        print(f"collector tap: {e}", file=err)
                        return e.code
                continue
            shown += 1
            if render is not None:
                out.write(render([orjson.loads(line)], current_tag))
            else:
                out.write(line.decode("utf-8", "replace"))
            out.flush()
        return 0
    except KeyboardInterrupt:
        print(f"\ncollector tap: stopped after {shown:,} records", file=err)
        return 0
    except BrokenPipeError:  # `collector tap | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    finally:
        conn.close()
