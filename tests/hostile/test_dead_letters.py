"""Dead letters under attack (issue 13, row 5): garbage on many forward connections and a flood
of invalid GELF datagrams must not fill the disk."""

from __future__ import annotations

import os
import socket
import threading
import time

from tests.hostile.harness import DEAD_LETTER_CAP, Control, Target, attacker_host, bound_socket, under_attack

RATE = 1 << 20  # the default dead_letter.max_bytes_per_second
BURST = 4 << 20
ENTRY = 2 << 20  # one entry may take the bucket below zero (256 KiB of binary garbage: ~1 MB of JSON)


def test_garbage_on_300_forward_connections(collector):
    """300 connections of 256 KiB of random bytes: 142 MB of dead letters in 2.2 s (the
    limit counted entries, not bytes)."""
    target: Target = collector()
    port = target.ports["forward"]
    junk = b"\xc1" + os.urandom(256 << 10)

    def attack(stop: Control) -> float:
        t0 = time.monotonic()

        def worker(k: int) -> None:
            for i in range(k, 300, 10):
                if stop.is_set():
                    return
                with bound_socket(attacker_host(i % 8)) as s:
                    try:
                        s.connect(("127.0.0.1", port))
                        s.sendall(junk)
                    except OSError:
                        pass

        ts = [threading.Thread(target=worker, args=(k,)) for k in range(10)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.monotonic() - t0

    t0 = time.monotonic()
    with under_attack(target, "forward: 256 KiB of garbage on 300 connections", attack) as fig:
        pass
    fig.check()
    assert fig.dead_letter_bytes <= BURST + RATE * (time.monotonic() - t0) + ENTRY


def test_invalid_gelf_datagrams_for_10_seconds(collector):
    """60 KB invalid GELF datagrams for 10 s: 222 MB of dead letters (80 GB/h)."""
    target: Target = collector()
    port = target.ports["gelf_udp"]
    junk = b"{" + os.urandom(60_000)
    sent = [0]

    def attack(stop: Control) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((attacker_host(), 0))
            t0 = time.monotonic()
            while not stop.is_set() and time.monotonic() - t0 < 10:
                try:
                    s.sendto(junk, ("127.0.0.1", port))
                    sent[0] += 1
                except OSError:
                    time.sleep(0.001)

    t0 = time.monotonic()
    with under_attack(target, "GELF UDP: 60 KB invalid datagrams for 10 s", attack) as fig:
        pass
    fig.notes["datagrams"] = sent[0]
    fig.check(dead_letter_cap=DEAD_LETTER_CAP)
    assert fig.dead_letter_bytes <= BURST + RATE * (time.monotonic() - t0) + ENTRY
