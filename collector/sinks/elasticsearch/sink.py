"""The ``elasticsearch`` sink: bulk ``create`` with stable ids, per-item outcomes, retries.

* Batches are grouped into bulk requests of ``batch.max_bytes`` / ``batch.max_events``, or
  whatever arrived within ``batch.timeout``; ``concurrency`` requests are in flight (in threads:
  the HTTP work and gzip release the GIL), and when all are busy the sink stops taking batches,
  which is how backpressure reaches the sources.
* Each record ends as exactly one of: delivered (2xx, or 409 = already there from an earlier
  attempt), rejected (a 4xx that will never succeed: mapping conflict, bad document; written to
  the dead-letter file with the reason and the record), or retried (429, 5xx, timeouts, refused
  connections, auth and read-only blocks: fixable on the server, so never thrown away).
  Retries re-send only the records that need it, waiting as the one retry policy says
  (collector/retry.py: capped exponential backoff, full jitter), for as long as it takes unless
  ``retry.max_elapsed`` is set: then records still failing after that long are dead-lettered.
* A batch is acknowledged to its source when all its records are delivered or rejected (its
  Ack holds one reference per record; the rejected ones are reported: ``done(n, rejected=n)``);
  checkpoints never pass a record still being retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import orjson

from collector.acks import Ack, release
from collector.buffers import BufferReader
from collector.component import Sink
from collector.ratelog import RateLimitedLog
from collector.retry import Backoff
from collector.sinks.elasticsearch.client import EngineClient, EngineInfo, EngineUnavailableError, Response, refusal
from collector.sinks.elasticsearch.config import ElasticsearchConfig
from collector.sinks.elasticsearch.encoder import BulkEncoder
from collector.sinks.elasticsearch.templates import ensure

log = logging.getLogger("collector.sinks.elasticsearch")

FILTER = "filter_path=errors,items.*.status,items.*.error"
RETRY_STATUSES = frozenset({401, 403, 404, 408, 429})


def classify(status: int) -> str:
    """``ok``, ``retry`` or ``reject`` for one bulk item's status."""
    if status < 300 or status == 409:  # 409 on create: the record is already there
        return "ok"
    if status >= 500 or status in RETRY_STATUSES:
        return "retry"
    return "reject"


@dataclass(slots=True)
class Request:
    """One bulk request: its body is built once, items are addressed by their end offsets
    (a retry re-sends slices of it), so a request costs its body and little more."""

    parts: list[bytes] = field(default_factory=list)  # while building: one chunk per batch
    ends: list[int] = field(default_factory=list)  # end offset of each item in the body
    # the Ack of each item's batch, which holds one reference per item (not the batch's
    # records: the encoded items are all a retry needs)
    owners: list[Ack | None] = field(default_factory=list)
    indices: list[str] = field(default_factory=list)
    size: int = 0
    started: float = 0.0
    _body: bytes | None = None

    def add(self, owner: Ack | None, items: list[bytes], indices: list[str] | str) -> None:
        self.parts.append(b"".join(items))
        start = self.size
        self.ends.extend(start + end for end in accumulate(map(len, items)))
        self.owners.extend([owner] * len(items))
        if isinstance(indices, str):
            self.indices.extend([indices] * len(items))
        else:
            self.indices.extend(indices)
        self.size = self.ends[-1]

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = b"".join(self.parts)
            self.parts = []
        return self._body

    def item(self, i: int) -> bytes:
        return self.body[self.ends[i - 1] if i else 0 : self.ends[i]]

    def subset(self, keep: list[int]) -> Request:
        r = Request()
        items = [self.item(i) for i in keep]
        r.parts = [b"".join(items)]
        r.ends = list(accumulate(map(len, items)))
        r.owners = [self.owners[i] for i in keep]
        r.indices = [self.indices[i] for i in keep]
        r.size = r.ends[-1] if r.ends else 0
        return r

    def __len__(self) -> int:
        return len(self.ends)


class ElasticsearchSink(Sink):
    config: ElasticsearchConfig

    def __init__(self, name: str, config: ElasticsearchConfig, ctx: Any) -> None:
        super().__init__(name, config, ctx)
        self.client = EngineClient.from_config(config)
        self.encoder = BulkEncoder(config)
        t = ctx.telemetry
        self._retries = t.retries
        self._errors = t.errors
        self.engine: EngineInfo | None = None
        self._executor = ThreadPoolExecutor(max_workers=config.concurrency + 1, thread_name_prefix=f"es-{name}")
        self._slots = asyncio.Semaphore(config.concurrency)
        self._requests: asyncio.TaskGroup | None = None  # bulk requests in flight; one failing fails the sink
        self._failing_since: float | None = None
        self._last_error = ""
        self._warn = RateLimitedLog(log, interval=30.0)
        self._last_ok = time.monotonic()
        self.requests = 0
        self.duplicates = 0  # 409s: records that were already there (replays)

    # -- plumbing ------------------------------------------------------------------------
    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _trouble(self, what: str, waiting: int, delay: float) -> None:
        """Say it once, then at most every 30 s, never silently."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._last_error = what
        self._warn.warning(
            "retrying",
            "%s: %s; retrying in %.1fs (%d record(s) waiting, nothing is lost)",
            self.name,
            what,
            delay,
            waiting,
        )

    async def _wait(self, backoff: Backoff, req: Request, what: str) -> bool:
        """Wait before trying ``req`` again; True when its records were given up on instead
        (``retry.max_elapsed`` passed): they are dead-lettered with the last error."""
        delay = backoff.delay()
        if backoff.expired:
            reason = f"retries_exhausted: {backoff.attempts} attempt(s) over {backoff.elapsed:.0f}s, last: {what}"
            self._finalize(req, [], [(i, reason) for i in range(len(req))])
            return True
        self._trouble(what, len(req), delay)
        await asyncio.sleep(delay)
        return False

    def _recovered(self) -> None:
        self._last_ok = time.monotonic()
        self._warn.reset("retrying")
        if self._failing_since is not None:
            log.info("%s: delivering again after %.0fs of trouble", self.name, time.monotonic() - self._failing_since)
            self._failing_since = None

    def health(self) -> tuple[bool, str]:
        hosts = ", ".join(self.client.hosts)
        if self._failing_since is not None and time.monotonic() - self._failing_since > self.config.unhealthy_after:
            return False, f"{hosts}: {self._last_error}"
        return True, f"{hosts}" + (f" ({self.engine})" if self.engine else "")

    # -- setup -----------------------------------------------------------------------------
    def _prepare_sync(self) -> EngineInfo:
        info = self.client.info()
        cfg = self.config
        if cfg.mode == "data_stream" and not info.data_streams:
            raise EngineUnavailableError(", ".join(self.client.hosts), f"{info} has no data streams: use `mode: index`")
        if cfg.manage_template:
            for what, outcome in ensure(self.client, cfg.target(), cfg.mode == "data_stream", settings="create-only"):
                if outcome in ("installed", "updated"):
                    log.info("%s: %s %s on %s", self.name, outcome, what, info)
        return info

    async def _prepare(self) -> None:
        """Learn what the engine is and install the template; retried until it works (records
        wait in the buffer meanwhile: ``max_elapsed`` does not apply, nothing is held here)."""
        backoff = Backoff(self.config.retry)
        while self.engine is None:
            try:
                self.engine = await self._call(self._prepare_sync)
                self._recovered()
                self.mark_reached(f"{self.engine} at {', '.join(self.client.hosts)}")
                log.info("%s: connected to %s at %s", self.name, self.engine, ", ".join(self.client.hosts))
            except EngineUnavailableError as e:
                delay = backoff.delay()
                self._trouble(f"cannot prepare {e}", 0, delay)
                self._errors.labels(self.name, "unavailable").inc()
                await asyncio.sleep(delay)

    # -- delivery -------------------------------------------------------------------------
    def _path(self, req: Request) -> str:
        cfg = self.config
        first = req.indices[0] if req.indices else self.encoder.target
        query = FILTER + (f"&pipeline={cfg.pipeline}" if cfg.pipeline else "")
        if self.encoder.static:
            return f"/{first}/_bulk?{query}"
        return f"/_bulk?{query}"

    def _finalize(self, req: Request, ok: list[int], rejected: list[tuple[int, str]]) -> None:
        if rejected:
            self.ctx.deadletter.records(
                self.name,
                [(reason, _doc_of(req.item(i)), {"_index": req.indices[i]}) for i, reason in rejected],
            )
            if self.config.dead_letter_index:
                self._dead_letter_index(req, rejected)
        owners = req.owners
        for ack, n in Counter(owners[i] for i in ok).items():
            if ack is not None:
                ack.done(n)
        for ack, n in Counter(owners[i] for i, _ in rejected).items():
            if ack is not None:
                ack.done(n, rejected=n)
        if ok:
            self.meter.delivered(len(ok))

    def _dead_letter_index(self, req: Request, rejected: list[tuple[int, str]]) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lines = []
        for i, reason in rejected:
            doc = {
                "@timestamp": now,
                "message": _doc_of(req.item(i)).decode("utf-8", "replace"),
                "error": {"type": reason.split(":")[0], "message": reason},
                "event": {"original": _doc_of(req.item(i)).decode("utf-8", "replace")[:32000]},
            }
            lines.append(b'{"create":{}}\n' + orjson.dumps(doc) + b"\n")
        body = b"".join(lines)

        def send() -> None:
            try:
                r = self.client.request("POST", f"/{self.config.dead_letter_index}/_bulk", body, "application/x-ndjson")
                if r.status >= 300:
                    log.warning("%s: dead-letter index refused: %s", self.name, refusal(r))
            except EngineUnavailableError as e:
                log.warning("%s: dead-letter index unreachable: %s", self.name, e)

        self._executor.submit(send)

    async def _deliver(self, req: Request) -> None:
        backoff = Backoff(self.config.retry)
        while len(req):
            body = req.body
            try:
                with self.meter.request():
                    resp: Response = await self._call(
                        self.client.request, "POST", self._path(req), body, "application/x-ndjson"
                    )
            except EngineUnavailableError as e:
                self._errors.labels(self.name, "unavailable").inc()
                self._retries.labels(self.name, "unavailable").inc(len(req))
                if await self._wait(backoff, req, f"cannot reach {e.host}: {e.cause}"):
                    return
                continue
            self.requests += 1
            if resp.status == 413 or (resp.status == 400 and len(req) > 1 and not _has_items(resp)):
                if len(req) == 1:
                    self._finalize(req, [], [(0, f"request refused: {refusal(resp)}")])
                    return
                half = len(req) // 2
                await asyncio.gather(
                    self._deliver(req.subset(list(range(half)))),
                    self._deliver(req.subset(list(range(half, len(req))))),
                )
                return
            if resp.status >= 300 or not _has_items(resp):
                if resp.status == 400 and len(req) == 1:
                    self._finalize(req, [], [(0, f"request refused: {refusal(resp)}")])
                    return
                self._retries.labels(self.name, f"http_{resp.status}").inc(len(req))
                if await self._wait(backoff, req, f"{resp.host} refused the bulk request: {refusal(resp)}"):
                    return
                continue
            self._recovered()
            body_json = resp.body
            if body_json.get("errors") is False:
                self._finalize(req, list(range(len(req))), [])
                return
            ok: list[int] = []
            again: list[int] = []
            rejected: list[tuple[int, str]] = []
            items = body_json.get("items") or []
            for i, it in enumerate(items):
                res = next(iter(it.values()))
                status = int(res.get("status", 500))
                verdict = classify(status)
                if verdict == "ok":
                    ok.append(i)
                    if status == 409:
                        self.duplicates += 1
                elif verdict == "retry":
                    again.append(i)
                else:
                    err = res.get("error") or {}
                    reason = f"{err.get('type', f'http_{status}')}: {err.get('reason', '')}"
                    cause = err.get("caused_by")
                    if isinstance(cause, dict) and cause.get("reason"):
                        reason += f" ({cause.get('type')}: {cause.get('reason')})"
                    rejected.append((i, reason))
            if len(items) < len(req):  # should not happen: treat the missing ones as to retry
                again.extend(range(len(items), len(req)))
            self._finalize(req, ok, rejected)
            if not again:
                return
            req = req.subset(again)
            statuses = {next(iter(items[i].values())).get("status") for i in again if i < len(items)}
            self._retries.labels(self.name, "item").inc(len(again))
            if await self._wait(backoff, req, f"{len(again)} record(s) to retry (status {sorted(statuses)})"):
                return

    async def _submit(self, req: Request) -> None:
        assert self._requests is not None
        await self._slots.acquire()

        async def go() -> None:
            try:
                await self._deliver(req)
            finally:
                self._slots.release()

        self._requests.create_task(go(), name=f"{self.name}:bulk")

    async def run(self, inbox: BufferReader) -> None:
        """Deliver until the inbox ends. A request that fails with an unexpected error fails the
        sink (the task group cancels the rest): never a silently dead request holding records."""
        try:
            await self._prepare()
            async with asyncio.TaskGroup() as self._requests:
                await self._take(inbox)
        finally:
            self._requests = None
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.client.close()

    async def _take(self, inbox: BufferReader) -> None:
        cfg = self.config.batch
        req = Request()
        while True:
            timeout = None if not len(req) else max(0.0, req.started + cfg.timeout - time.monotonic())
            try:
                batch = await asyncio.wait_for(inbox.recv(), timeout)
            except TimeoutError:
                await self._submit(req)
                req = Request()
                continue
            if batch is None:
                break
            if not len(batch):
                release(batch.ack)
                continue
            items, indices = self.encoder.encode(batch)
            if not len(req):
                req.started = time.monotonic()
            if batch.ack is not None and len(items) > 1:
                batch.ack.retain(len(items) - 1)  # one reference per item, released as each is finalized
            req.add(batch.ack, items, indices)
            if req.size >= cfg.max_bytes or len(req) >= cfg.max_events:
                await self._submit(req)
                req = Request()
        if len(req):
            await self._submit(req)


def _has_items(resp: Response) -> bool:
    """A bulk answer: per-item results, or the shortcut for "no errors" (client.py)."""
    return isinstance(resp.body, dict) and ("items" in resp.body or resp.body.get("errors") is False)


def _doc_of(item: bytes) -> bytes:
    """The document line of a bulk item (action line, document, newline)."""
    return item[item.index(b"\n") + 1 : -1]
