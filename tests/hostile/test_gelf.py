"""Attacks on the GELF listener's decoding (the UDP side; TCP connections are in
test_connections.py, dead letters in test_dead_letters.py)."""

from __future__ import annotations

import socket
import time
import zlib

import orjson

from tests.hostile.harness import Control, Target, attacker_host, under_attack


def test_a_flood_of_datagrams_that_inflate_to_a_megabyte_each(collector):
    """1 KB datagrams that inflate to ~1 MiB of valid GELF each, as fast as they go for 10 s:
    a batch of 2,000 of them decoded at once would hold 2 GB.  They are decoded a few MB at a
    time (and what cannot be delivered is dropped, counted)."""
    target: Target = collector()
    port = target.ports["gelf_udp"]
    msg = orjson.dumps({"version": "1.1", "host": "bomb", "short_message": "a" * ((1 << 20) - 100)})
    datagram = zlib.compress(msg, 9)
    assert len(datagram) < 2048
    sent = [0]

    def attack(stop: Control) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((attacker_host(), 0))
            t0 = time.monotonic()
            while not stop.is_set() and time.monotonic() - t0 < 10:
                try:
                    s.sendto(datagram, ("127.0.0.1", port))
                    sent[0] += 1
                except OSError:
                    time.sleep(0.001)

    with under_attack(target, "GELF UDP: 1 KB datagrams inflating to 1 MiB each, 10 s", attack) as fig:
        pass
    fig.notes["datagrams"] = sent[0]
    fig.check()
