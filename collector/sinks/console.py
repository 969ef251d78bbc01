"""Sink ``console``: records on standard output.

On a terminal: one readable line per record, ``time  container  tag  stream  message``:

    12:00:01.250 shop-web-1           A            stdout msg=ready
    12:00:01.251 shop-db-1            app.db       stderr FATAL: disk full

the container coloured (stable per name, like ``docker compose logs``), the tag dimmed (so
``--tag`` or a fluentd tag can be checked by looking) and stderr in red.  Piped (or
``format: json``): NDJSON, the same documents as the file sink.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Iterable, Mapping
from typing import IO, Any, ClassVar, Literal

from pydantic import Field

from collector.acks import release
from collector.buffers import BufferReader
from collector.component import Context, Sink, SinkConfig
from collector.event import Batch, get_path
from collector.sinks.file import drain

COLOURS = (36, 33, 32, 35, 34, 96, 93, 92, 95, 94)
RESET = "\x1b[0m"
DIM = "\x1b[2m"
WHO_WIDTH = 20


class ConsoleConfig(SinkConfig):
    type: Literal["console"]
    destination_keys: ClassVar[tuple[str, ...] | None] = ()
    format: Literal["auto", "text", "json"] = Field(
        "auto", description="`text` (readable), `json` (NDJSON), or `auto`: text on a terminal, else json."
    )
    color: bool | None = Field(None, description="Colour text output; default: when on a terminal.")


class ConsoleSink(Sink):
    config: ConsoleConfig

    def __init__(self, name: str, config: ConsoleConfig, ctx: Context, stream: IO[bytes] | None = None) -> None:
        super().__init__(name, config, ctx)
        self.out = stream or sys.stdout.buffer
        tty = _isatty(self.out)
        self.text = config.format == "text" or (config.format == "auto" and tty)
        self.color = tty if config.color is None else config.color

    def render(self, batch: Batch) -> bytes:
        if not self.text:
            return b"".join(line + b"\n" for line in batch.encoded())
        return render_text(batch.records(), batch.tag, self.color).encode("utf-8", "replace")

    async def run(self, inbox: BufferReader) -> None:
        self.mark_reached("writing to " + ("the terminal" if _isatty(self.out) else "standard output"))
        while (first := await inbox.recv()) is not None:
            batches = await drain(inbox, first, 5000)
            data = b"".join(self.render(b) for b in batches)
            try:
                with self.meter.request():
                    self.out.write(data)
                    self.out.flush()
            except BrokenPipeError:
                # the reader went away (``| head``): nothing more can be delivered here
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise
            self.meter.delivered(sum(len(b) for b in batches))
            for b in batches:
                release(b.ack)


def render_text(records: Iterable[Mapping[str, Any]], tag: str, color: bool) -> str:
    """Records as readable lines, ``time  container  tag  stream  message`` (also what
    ``collector tap`` prints on a terminal)."""
    lines = []
    for rec in records:
        ts = str(rec.get("@timestamp", ""))
        ts = ts[11:23] if len(ts) > 23 else ts
        who = str(get_path(rec, "container.name") or get_path(rec, "container.id") or "-")[:WHO_WIDTH]
        tags = rec.get("tags")
        shown = tag or (str(tags[0]) if isinstance(tags, list) and tags else "-")
        stream = str(rec.get("stream") or "-")
        msg = str(rec.get("message", ""))
        if color:
            c = COLOURS[zlib.crc32(who.encode()) % len(COLOURS)]
            st = f"\x1b[31m{stream:<6}{RESET}" if stream == "stderr" else f"{stream:<6}"
            lines.append(f"{DIM}{ts}{RESET} \x1b[{c}m{who:<{WHO_WIDTH}}{RESET} {DIM}{shown:<12}{RESET} {st} {msg}")
        else:
            lines.append(f"{ts} {who:<{WHO_WIDTH}} {shown:<12} {stream:<6} {msg}")
    return "".join(line + "\n" for line in lines)


def _isatty(f: IO[bytes]) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False
