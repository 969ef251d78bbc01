"""The disk buffer's files, apart from the buffer (disk.py) that writes and reads them.

    <segment>.seg    frames, appended: ``<u32 length><u32 crc32>`` + a batch (:func:`encode_batch`)
    ledger.json      {"segment": n, "offset": o}: everything before it was delivered

A batch is stored as a header line (ids, tag, origin, count) and one JSON document per record;
read back, its records stay those documents (:class:`EncodedDocs`).  :func:`inspect` counts what
a buffer's directory holds after its ledger without opening it as a buffer."""

from __future__ import annotations

import contextlib
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson

from collector.event import Batch, Fields

HEADER = struct.Struct("<II")


class EncodedDocs:
    """Records restored from disk: their documents as stored (already merged with the batch's
    shared fields), handed to the sink as they are; decoded only if a sink wants dicts."""

    __slots__ = ("docs",)
    path: str | None = None  # records of any origin (event.Columns)

    def __init__(self, docs: list[bytes]) -> None:
        self.docs = docs

    def __len__(self) -> int:
        return len(self.docs)

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(d) for d in self.docs]

    def encode(self, meta: Fields) -> list[bytes]:
        if not meta.keys:
            return self.docs
        return Batch(self.events(), meta).encoded()


def encode_batch(batch: Batch) -> bytes:
    """A header line (ids, tag, origin) then one JSON document per line: the documents are what
    the sink would send, so writing and replaying cost no dict per record."""
    head = orjson.dumps({"i": batch.ids, "t": batch.tag, "s": batch.origin, "n": len(batch)})
    return head + b"\n" + b"\n".join(batch.encoded())


def decode_batch(payload: bytes) -> Batch:
    head, _, body = payload.partition(b"\n")
    h = orjson.loads(head)
    docs = body.split(b"\n") if h["n"] else []
    if len(docs) != h["n"]:
        raise ValueError(f"frame holds {len(docs)} documents, its header says {h['n']}")
    return Batch(
        None, Fields.EMPTY, ids=h["i"], tag=h["t"], origin=h["s"], nbytes=len(payload), columns=EncodedDocs(docs)
    )


def seg_name(n: int) -> str:
    return f"{n:08d}.seg"


def inspect(directory: Path) -> tuple[int, int, int]:
    """(bytes, records, segment files) a disk buffer's directory holds after its ledger, read
    without opening it as a buffer (``collector status``, also while a collector writes it: a
    frame still being written ends the count)."""
    segs: list[int] = []
    for p in directory.glob("*.seg"):
        with contextlib.suppress(ValueError):
            segs.append(int(p.stem))
    segs.sort()
    try:
        d = orjson.loads((directory / "ledger.json").read_bytes())
        ledger = int(d["segment"]), int(d["offset"])
    except (OSError, ValueError, KeyError, TypeError):
        ledger = (segs[0] if segs else 1), 0
    nbytes = records = files = 0
    for n in segs:
        if n < ledger[0]:
            continue  # delivered, not yet deleted
        files += 1
        pos = ledger[1] if n == ledger[0] else 0
        try:
            f = open(directory / seg_name(n), "rb")  # noqa: SIM115
        except OSError:
            continue
        with f:
            f.seek(pos)
            while len(head := f.read(HEADER.size)) == HEADER.size:
                size, crc = HEADER.unpack(head)
                payload = f.read(size)
                if len(payload) < size or zlib.crc32(payload) != crc:
                    break
                try:
                    records += int(orjson.loads(payload.partition(b"\n")[0])["n"])
                except (ValueError, KeyError, TypeError):
                    break
                nbytes += HEADER.size + size
    return nbytes, records, files
