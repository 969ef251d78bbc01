"""What every component is given and what it must provide.

A *source* produces batches (``async run(out)``), a *transform* rewrites them
(``async process(batch)``), a *sink* delivers them (``async run(inbox)``, reading a
:class:`~collector.buffers.BufferReader`).  Components receive a :class:`Context` with the core
services (checkpoints, dead letter, telemetry) and the shared helpers they ask for by type
(``ctx.service(DockerMetadataService)``), and never import each other: shared code lives in
codecs/, buffers/, acks.py, docker_api/ and the core modules (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar, cast

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from collector.acks import InFlight, release
from collector.buffers import BufferConfig, BufferReader
from collector.checkpoints import CheckpointStore
from collector.deadletter import DeadLetter
from collector.event import Batch
from collector.telemetry import Telemetry

if TYPE_CHECKING:
    from collector.tap import Tap

DEFAULT_DOCKER_ROOT = "/var/lib/docker"  # the pipeline's docker_root unless configured (PipelineConfig)


class ComponentConfig(BaseModel):
    """Base of every component's config: unknown keys are errors, every field is described."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerTls(ComponentConfig):
    """TLS of a listener (the forward and GELF sources)."""

    cert_file: str = Field(description="PEM certificate (chain) the listener presents.")
    key_file: str = Field(description="PEM private key of `cert_file`.")
    client_ca_file: str | None = Field(
        None, description="When set, clients must present a certificate signed by this CA (mutual TLS)."
    )

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


class ClientTls(ComponentConfig):
    """TLS of a client (the elasticsearch and gelf sinks): one shape for both."""

    ca_file: str | None = Field(
        None, description="CA bundle (PEM) to verify the server's certificate; default: the system's."
    )
    cert_file: str | None = Field(
        None, description="Client certificate (PEM), when the server asks for one (mutual TLS)."
    )
    key_file: str | None = Field(None, description="Private key of `cert_file`.")
    verify: bool = Field(True, description="Verify the server's certificate and its name (turn off only for tests).")
    server_name: str | None = Field(None, description="Name expected in the server's certificate; default: the host's.")
    fingerprint: str | None = Field(
        None,
        description="Pin the server certificate's SHA-256 fingerprint (hex, colons allowed): that certificate is "
        "accepted, any other refused, whatever signed it (for self-signed certificates).",
    )

    @field_validator("fingerprint")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is None:
            return v
        digits = v.replace(":", "").lower()
        if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
            raise ValueError("expected a SHA-256 fingerprint: 64 hex digits (colons allowed)")
        return digits

    def fingerprint_matches(self, der: bytes | None) -> bool:
        """Whether the server's certificate (DER) is the pinned one (always, when none is pinned)."""
        return self.fingerprint is None or (der is not None and hashlib.sha256(der).hexdigest() == self.fingerprint)


class TransformConfig(ComponentConfig):
    inputs: list[str] = Field(min_length=1, description="Components whose output this one receives.")

    @classmethod
    def output_ports(cls, config: Mapping[str, object]) -> list[str]:
        """The named outputs (``<name>.<port>``) a transform with this config has, besides its
        default one. Declared here, once: the config's graph check asks it of the raw document
        (so it must tolerate a wrong shape: the schema reports that), the pipeline of the model."""
        return []


class SinkConfig(TransformConfig):
    # the keys that say where records go: a pipeline's identity (checkpoints.pipeline_identity);
    # None: every key but inputs, buffer and match
    destination_keys: ClassVar[tuple[str, ...] | None] = None
    buffer: BufferConfig = Field(default_factory=BufferConfig, description="Where records wait for this sink.")
    match: str | None = Field(
        None,
        description="Fluentd-style tag pattern (`app.**`, `log-test-container-*`, `{a,b}`): "
        "only batches whose tag matches are delivered here; the rest are dropped (counted).",
    )


class ErrorCounter:
    """``count(reason, n)``: a component's ``collector_errors_total{component, reason}``, one
    child per reason, looked up once (reasons are short, stable words chosen by the code)."""

    __slots__ = ("_by_reason", "_errors", "component")

    def __init__(self, errors: Counter, component: str) -> None:
        self._errors = errors
        self.component = component
        self._by_reason: dict[str, Counter] = {}

    def __call__(self, reason: str, n: float = 1) -> None:
        c = self._by_reason.get(reason)
        if c is None:
            c = self._by_reason[reason] = self._errors.labels(self.component, reason)
        c.inc(n)


class Service:
    """A helper shared by the components of one pipeline (Docker metadata, ...), asked for by
    type: ``ctx.service(cls)`` creates it with the context on first request (cheaply: it acquires
    what it holds when first used) and ``aclose()`` runs when the pipeline ends."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def aclose(self) -> None:
        """Release what it holds (threads, connections); called once, at the pipeline's end."""


ServiceT = TypeVar("ServiceT", bound=Service)


@dataclass
class Context:
    """Core services shared by the components of one running pipeline."""

    data_dir: Path
    telemetry: Telemetry
    checkpoints: CheckpointStore
    deadletter: DeadLetter
    once: bool = False
    docker_root: str = DEFAULT_DOCKER_ROOT  # the pipeline's (config.PipelineConfig.docker_root)
    hostname: str = field(default_factory=socket.gethostname)
    _services: dict[type[Service], Service] = field(default_factory=dict)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run last-first by aclose

    def error_counter(self, component: str) -> ErrorCounter:
        """How a component counts its errors (``collector_errors_total``)."""
        return ErrorCounter(self.telemetry.errors, component)

    def service(self, cls: type[ServiceT]) -> ServiceT:
        """The pipeline's one ``cls`` (created on first request, closed by :meth:`aclose`)."""
        s = self._services.get(cls)
        if s is None:
            s = self._services[cls] = cls(self)
            self._closers.append(s.aclose)
        return cast(ServiceT, s)  # keyed by its own type

    async def aclose(self) -> None:
        """Close the services (and what components registered in ``_closers``), the last first."""
        closers = list(self._closers)
        self._closers.clear()
        self._services.clear()
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()


class Outlet(Protocol):
    """One edge out of an emitter: a channel, or the pipeline's counting wrapper around one."""

    async def send(self, batch: Batch) -> bool: ...

    def has_room(self) -> bool: ...

    async def wait_room(self) -> None: ...

    def close(self) -> None: ...


class Emitter:
    """A component's output: delivers each batch to every downstream channel.

    Fan-out gives every consumer its own Batch (records are shared: transforms never mutate a
    record in place, see ``event.with_path``) and retains its Ack once per extra consumer.
    """

    def __init__(
        self,
        name: str,
        channels: Sequence[Outlet] = (),
        inflight: InFlight | None = None,
        counter: Counter | None = None,
    ) -> None:
        self.name = name
        self.channels = list(channels)
        self.inflight = inflight  # a source's output: what it emits is counted until finalized
        self.counter = counter  # collector_events_out_total of the component (None: not counted)
        self.taps: list[Tap] = []  # `collector tap` clients attached here (tap.py); replaced, never mutated

    async def emit(self, batch: Batch) -> None:
        if self.taps:
            for tap in self.taps:
                tap.offer(batch)
        if self.inflight is not None:
            self.inflight.track(batch)
        if self.counter is not None:
            self.counter.inc(len(batch))
        chans = self.channels
        if not chans:
            release(batch.ack)  # nothing downstream: finalized by definition
            return
        if len(chans) > 1 and batch.ack is not None:
            batch.ack.retain(len(chans) - 1)
        # each consumer gets its own Batch object (transforms replace meta/tag/events on it)
        copies = [batch] + [batch.derive(None, batch.ids) for _ in chans[1:]]
        for ch, b in zip(chans, copies, strict=True):
            await ch.send(b)

    def has_room(self) -> bool:
        return all(ch.has_room() for ch in self.channels)

    async def wait_room(self) -> None:
        for ch in self.channels:
            await ch.wait_room()

    def close(self) -> None:
        for ch in self.channels:
            ch.close()


class Source:
    """Produces batches until stopped (or, with ``once``, until it has read everything)."""

    kind: ClassVar[str] = "source"

    def __init__(self, name: str, config: ComponentConfig, ctx: Context) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self._stop = asyncio.Event()
        self.is_ready = False  # set once it listens (or has found its files): GET /ready
        self.ready_detail = "starting"

    async def run(self, out: Emitter) -> None:
        raise NotImplementedError

    def mark_ready(self, detail: str) -> None:
        self.is_ready = True
        self.ready_detail = detail

    def ready(self) -> tuple[bool, str]:
        return self.is_ready, self.ready_detail

    def progress(self) -> tuple[int, int] | None:
        """(bytes read, bytes present) for a progress bar of a ``--once`` run; None: not known."""
        return None

    def stop(self) -> None:
        """Stop producing soon; ``run`` returns after its current batch."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()


class Transform:
    """Rewrites whole batches. ``process`` returns (output port, batch) pairs; port None is the
    default output, named ports (``route``) are addressed as ``<name>.<port>``."""

    kind: ClassVar[str] = "transform"

    def __init__(self, name: str, config: ComponentConfig, ctx: Context) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.connected: set[str] = set()  # the named outputs something reads (set by the pipeline)

    def output_ports(self) -> list[str]:
        """Its named outputs, as its config class declares them (``TransformConfig.output_ports``)."""
        return type(self.config).output_ports(self.config.model_dump())

    async def start(self) -> None:
        """Acquire what the transform needs (Docker metadata ...)."""

    async def process(self, batch: Batch) -> list[tuple[str | None, Batch]]:
        raise NotImplementedError

    # A transform that holds records back (multiline) sets ``tick_interval``: ``tick`` is then
    # called at least that often while no batch arrives, and ``finish`` once its inputs are closed.
    tick_interval: float | None = None

    async def tick(self) -> list[tuple[str | None, Batch]]:
        """What is due without new input (a record whose time is up)."""
        return []

    async def finish(self) -> list[tuple[str | None, Batch]]:
        """The inputs are closed and drained: what is still held back."""
        return []

    async def hand_over(self) -> list[tuple[str | None, Batch]]:
        """A reload replaces this instance (its inputs stay open, its successor reads on): all it
        still holds, since nothing may stay unfinalized in an instance that is let go."""
        return await self.finish()


class Sink:
    """Delivers batches from its inbox; finalizes each one (``ack.done()``) only when delivered
    or dead-lettered.  Returns once the inbox is closed and everything is finalized."""

    kind: ClassVar[str] = "sink"

    def __init__(self, name: str, config: ComponentConfig, ctx: Context) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.meter = ctx.telemetry.sink(name)
        self.reached = False  # its destination answered once (connected, opened): GET /ready
        self.ready_detail = "destination not reached yet"

    async def run(self, inbox: BufferReader) -> None:
        raise NotImplementedError

    def health(self) -> tuple[bool, str]:
        return True, "ok"

    def mark_reached(self, detail: str) -> None:
        self.reached = True
        self.ready_detail = detail

    def ready(self) -> tuple[bool, str]:
        return self.reached, self.ready_detail


Component = Source | Transform | Sink  # any running component (the pipeline makes and replaces them)
