"""GELF over UDP: a message too large for one datagram travels as *chunks* (``0x1e 0x0f``, an
8-byte message id, a sequence number and a count, then a slice of the message): splitting them
(the sending side) and joining them again, in any order, bounded (:class:`Reassembler`)."""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from typing import Any

from collector.codecs.gelf.message import DEFAULT_MAX_MESSAGE_BYTES, GelfError

CHUNK_MAGIC = b"\x1e\x0f"
CHUNK_HEADER_BYTES = 12  # magic (2) + message id (8) + sequence number (1) + count (1)
MAX_CHUNKS = 128
DEFAULT_CHUNK_SIZE = 1420  # bytes per datagram, header included: fits a 1500-byte MTU path (what Docker sends)
MAX_CHUNK_SIZE = 8192  # GELF's largest chunk (Graylog 6.1 itself reads datagrams of up to 65,535 bytes)


# -- chunking ------------------------------------------------------------------------------------
def chunk_count(size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Datagrams needed for a payload of ``size`` bytes (1 when it fits unchunked)."""
    if size <= chunk_size:
        return 1
    room = chunk_size - CHUNK_HEADER_BYTES
    return -(-size // room)


def max_payload(chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """The largest payload that can be sent in at most MAX_CHUNKS datagrams."""
    return MAX_CHUNKS * (chunk_size - CHUNK_HEADER_BYTES)


def split_chunks(payload: bytes, msg_id: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    """The datagrams for ``payload``: itself when it fits, else chunks of ``chunk_size`` bytes.

    Raises GelfError ``too_many_chunks`` when more than MAX_CHUNKS would be needed.
    """
    if len(payload) <= chunk_size:
        return [payload]
    if len(msg_id) != 8:
        raise ValueError("a GELF message id is 8 bytes")
    room = chunk_size - CHUNK_HEADER_BYTES
    n = -(-len(payload) // room)
    if n > MAX_CHUNKS:
        raise GelfError("too_many_chunks", f"{len(payload)} bytes need {n} chunks of {chunk_size} (max {MAX_CHUNKS})")
    head = CHUNK_MAGIC + msg_id
    total = bytes((n,))
    return [head + bytes((i,)) + total + payload[i * room : (i + 1) * room] for i in range(n)]


class MessageIds:
    """8-byte chunk message ids: a random start, then a counter (unique within any 5 s window)."""

    __slots__ = ("_n",)

    def __init__(self) -> None:
        self._n = int.from_bytes(os.urandom(8), "big")

    def next(self) -> bytes:
        self._n = (self._n + 1) & 0xFFFF_FFFF_FFFF_FFFF
        return self._n.to_bytes(8, "big")


class _Pending:
    __slots__ = ("born", "count", "dead", "got", "nbytes", "parts")

    def __init__(self, born: float, count: int) -> None:
        self.born = born
        self.count = count
        self.parts: list[bytes | None] = [None] * count
        self.got = 0
        self.nbytes = 0
        self.dead = False  # discarded (too large): later chunks are absorbed until it expires


class Reassembler:
    """Joins chunked GELF messages; bounded in time, number of sets and bytes.

    ``add`` returns the payload when a message is complete, else None.  Everything discarded
    is counted in ``counts`` by reason: ``bad_chunk`` (short header, count 0, sequence
    number past the count, a count that changed), ``too_many_chunks`` (count > 128),
    ``duplicate_chunk`` (also one arriving within ``timeout`` after its message completed),
    ``too_large`` (a set past ``max_message_bytes``), ``chunk_expired`` (incomplete after
    ``timeout``), ``chunk_evicted`` (pushed out by the caps: a flood).
    """

    def __init__(
        self,
        timeout: float = 5.0,
        max_messages: int = 4096,
        max_bytes: int = 64 << 20,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.timeout = timeout
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_message_bytes = max_message_bytes
        self._sets: OrderedDict[tuple[Any, bytes], _Pending] = OrderedDict()  # oldest first
        self._done: OrderedDict[tuple[Any, bytes], float] = OrderedDict()  # recently completed: late duplicates
        self.nbytes = 0
        self.counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._sets)

    def add(self, datagram: bytes, peer: Any, now: float) -> bytes | None:
        if len(datagram) < CHUNK_HEADER_BYTES:
            self.counts["bad_chunk"] += 1
            return None
        seq = datagram[10]
        count = datagram[11]
        if count > MAX_CHUNKS:
            self.counts["too_many_chunks"] += 1
            return None
        if seq >= count:  # includes count == 0
            self.counts["bad_chunk"] += 1
            return None
        key = (peer, datagram[2:10])
        sets = self._sets
        p = sets.get(key)
        if p is None:
            if count == 1:
                return datagram[CHUNK_HEADER_BYTES:]
            if key in self._done:
                self.counts["duplicate_chunk"] += 1
                return None
            p = sets[key] = _Pending(now, count)
            if len(sets) > self.max_messages:
                self._evict()
        elif p.dead:
            return None
        elif p.count != count:
            self.counts["bad_chunk"] += 1
            return None
        if p.parts[seq] is not None:
            self.counts["duplicate_chunk"] += 1
            return None
        part = datagram[CHUNK_HEADER_BYTES:]
        p.parts[seq] = part
        p.got += 1
        p.nbytes += len(part)
        self.nbytes += len(part)
        if p.nbytes > self.max_message_bytes:
            self.counts["too_large"] += 1
            self._kill(p)
            return None
        if p.got == p.count:
            del sets[key]
            self.nbytes -= p.nbytes
            done = self._done
            done[key] = p.born
            if len(done) > 4 * self.max_messages:
                done.popitem(last=False)
            return b"".join(p.parts)  # type: ignore[arg-type]
        while self.nbytes > self.max_bytes and sets:
            self._evict()
        return None

    def _kill(self, p: _Pending) -> None:
        self.nbytes -= p.nbytes
        p.nbytes = 0
        p.parts = []
        p.dead = True

    def _evict(self) -> None:
        _, p = self._sets.popitem(last=False)
        if not p.dead:
            self.counts["chunk_evicted"] += 1
            self.nbytes -= p.nbytes

    def expire(self, now: float) -> int:
        """Forget sets older than ``timeout``; returns how many incomplete messages that lost."""
        sets = self._sets
        limit = now - self.timeout
        done = self._done
        while done and next(iter(done.values())) <= limit:
            done.popitem(last=False)
        n = 0
        while sets:
            key, p = next(iter(sets.items()))
            if p.born > limit:
                break
            del sets[key]
            if not p.dead:
                self.nbytes -= p.nbytes
                n += 1
        if n:
            self.counts["chunk_expired"] += n
        return n
