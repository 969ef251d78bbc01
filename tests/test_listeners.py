"""What every listener shares (collector/listeners.py): the connection table's rules and the
open-files limit.  The listeners themselves are attacked for real in tests/hostile/."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

from collector.listeners import FREE_BYTES, ConnectionTable, ListenerLimits, fd_budget, raise_fd_limit


class Conn:
    def __init__(self, host: str, idle: float = 0.0) -> None:
        self.peer_host = host
        self.last_active = time.monotonic() - idle
        self.message_since: float | None = None
        self.held = 0
        self.killed: str | None = None

    def kill(self, reason: str) -> None:
        self.killed = reason


def table(**limits: Any) -> tuple[ConnectionTable, list[str]]:
    counted: list[str] = []
    return ConnectionTable("t", ListenerLimits(**limits), counted.append), counted


def test_a_peer_cannot_take_more_than_its_share():
    t, counted = table(max_connections=10, max_connections_per_peer=3)
    conns = [Conn("10.0.0.1") for _ in range(3)]
    for c in conns:
        assert t.admit("10.0.0.1:1", c.peer_host)
        t.add(c)
    assert not t.admit("10.0.0.1:2", "10.0.0.1")
    assert counted == ["too_many_connections_from_peer"]
    assert t.admit("10.0.0.2:1", "10.0.0.2")  # another address is welcome
    assert t.admit("unix", "")  # Unix sockets have no address to share
    t.discard(conns[0])
    t.discard(conns[0])  # (twice is harmless)
    assert t.admit("10.0.0.1:3", "10.0.0.1")
    assert t.per_peer == {"10.0.0.1": 2}


def test_a_peer_at_its_cap_makes_room_by_closing_its_own_longest_idle_connection():
    # Docker's syslog and fluentd drivers hold one quiet connection per container, all from one
    # address: containers that stopped logging must not lock new ones out
    t, counted = table(max_connections=10, max_connections_per_peer=2, idle_timeout=10)
    other = Conn("10.0.0.9", idle=60)  # idlest of all, but another address's
    idle = Conn("10.0.0.1", idle=30)
    busy = Conn("10.0.0.1", idle=1)
    for c in (other, idle, busy):
        t.add(c)
    assert t.admit("10.0.0.1:3", "10.0.0.1")
    assert idle.killed == "idle_evicted" and other.killed is None and busy.killed is None
    t.add(Conn("10.0.0.1"))
    assert not t.admit("10.0.0.1:4", "10.0.0.1")  # none of its own idle for 10 s: refused
    assert counted == ["idle_evicted", "too_many_connections_from_peer"]
    assert t.per_peer == {"10.0.0.9": 1, "10.0.0.1": 2}


def test_a_full_listener_makes_room_by_closing_its_longest_idle_connection():
    t, counted = table(max_connections=3, idle_timeout=10)
    busy = Conn("a", idle=1)
    idler = Conn("b", idle=30)
    idlest = Conn("c", idle=60)
    for c in (idlest, idler, busy):  # (the table orders them by activity, as reads happen)
        t.add(c)
    assert t.admit("d:1", "d")
    assert idlest.killed == "idle_evicted"
    assert len(t) == 2
    t.add(Conn("d"))
    assert t.admit("e:1", "e")
    assert idler.killed == "idle_evicted"
    t.add(Conn("e"))
    assert not t.admit("f:1", "f")  # none idle for 10 s: refused
    assert busy.killed is None
    assert counted == ["idle_evicted", "idle_evicted", "too_many_connections"]


def test_bytes_held_for_messages_still_arriving_are_bounded():
    t, counted = table(max_buffered_bytes=1 << 20)
    a, b = Conn("a"), Conn("b")
    t.add(a)
    t.add(b)
    now = time.monotonic()
    assert t.active(a, now, 600 << 10)
    assert a.message_since == now
    assert t.active(b, now, FREE_BYTES)  # a small message still arriving is free
    assert not t.active(b, now, 600 << 10)  # 2 x (600 KiB - 32 KiB) > 1 MiB
    assert counted == ["memory_budget"]
    t.discard(b)
    assert t.held == (600 << 10) - FREE_BYTES
    assert t.active(a, now, 0)  # the message arrived
    assert a.message_since is None and t.held == 0


def test_a_message_must_arrive_within_the_read_timeout():
    async def main() -> tuple[Conn, Conn, list[str]]:
        t, counted = table(read_timeout=0.2)
        slow, quick = Conn("slow"), Conn("quick")
        t.add(slow)
        t.add(quick)
        loop = asyncio.get_running_loop()
        t.active(slow, loop.time(), 10)  # a message began and never ends
        watch = asyncio.create_task(t.watch())
        for _ in range(10):
            t.active(quick, loop.time(), 10 if _ % 2 else 0)  # messages that do end
            await asyncio.sleep(0.05)
        watch.cancel()
        return slow, quick, counted

    slow, quick, counted = asyncio.run(main())
    assert slow.killed == "read_timeout"
    assert quick.killed is None
    assert counted == ["read_timeout"]


def test_the_soft_open_files_limit_is_raised_to_the_hard_one():
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096));"
        "from collector.listeners import raise_fd_limit, fd_budget; print(*raise_fd_limit(), fd_budget())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["4096", "4096", str(4096 - 4096 // 8)]  # (no listener yet: no accept bursts to keep room for)
    soft, hard = raise_fd_limit()
    assert hard in (soft, -1)
    assert fd_budget() < soft


def test_max_connections_stays_below_the_open_files_limit():
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024));"
        "from collector.listeners import ConnectionTable, ListenerLimits;"
        "t = ConnectionTable('t', ListenerLimits(max_connections=5000), print); t.listening(2);"
        "print(t.max_connections)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(1024 - 128 - 2 * 2 * 100)]  # 1/8 kept, and two accept bursts per server
    assert "above what the open-files limit (ulimit -n) allows" in out.stderr
