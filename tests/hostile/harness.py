"""The hostile-input harness: the real collector CLI under attack, and what it must still do.

A :class:`Target` runs ``collector receive --listen forward+tcp://... --listen gelf+tcp://... --listen gelf+udp://...
--output file:...`` as a subprocess at default settings (or ``collector run -c`` with the same
topology when a test needs a setting changed), on loopback ports the collector picks itself.
Each attack is driven from the test; meanwhile a well-behaved client (:class:`ForwardClient`,
:class:`GelfClient`) sends numbered records from 127.0.0.1, and :func:`under_attack` checks,
for every attack:

* the process is alive;
* its peak RSS (``VmHWM``) is at most ``MAX_RSS_MB``;
* all of the good client's records are in the output within ``GOOD_WITHIN`` seconds of the
  attack's start;
* it logged at most ``MAX_LOG_LINES`` lines;
* the dead-letter directory holds at most the configured cap.

Attackers connect from other loopback addresses (127.0.0.2 ...: every 127.0.0.0/8 address is
local on Linux), so per-peer limits can tell them from the good client.  With
``HOSTILE_REPORT=path`` every check appends its figures as a JSON line (the README table).
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import orjson
import yaml

MAX_RSS_MB = 200
GOOD_RECORDS = 1000
GOOD_WITHIN = 30.0
MAX_LOG_LINES = 200
DEAD_LETTER_CAP = 64 << 20  # the default dead_letter.max_bytes, per component

GOOD_HOST = "127.0.0.1"
_LISTEN = {
    "forward": re.compile(r"listening for the forward protocol on .*tcp://127\.0\.0\.1:(\d+)"),
    "gelf_tcp": re.compile(r"receiving GELF on .*tcp://127\.0\.0\.1:(\d+)"),
    "gelf_udp": re.compile(r"receiving GELF on .*udp://127\.0\.0\.1:(\d+)"),
}


def attacker_host(i: int = 0) -> str:
    """A loopback address of its own for attacker ``i`` (127.0.0.2, 127.0.0.3, ...)."""
    return f"127.0.{(i + 2) // 250}.{(i + 2) % 250 or 250}"


# -- the collector under attack ------------------------------------------------------------------
class Target:
    """The real collector (``python -m collector``) receiving forward and GELF, writing a file."""

    def __init__(
        self,
        workdir: Path,
        *,
        forward: dict[str, Any] | None = None,
        gelf: dict[str, Any] | None = None,
        root: dict[str, Any] | None = None,
        nofile: tuple[int, int] | None = None,
    ) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.out = workdir / "out.ndjson"
        self.data_dir = workdir / "state"
        self.stderr_path = workdir / "collector.log"
        self.overrides = (forward, gelf, root)
        self.nofile = nofile
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self._err: Any = None
        self._records_seen = 0
        self._numbers: dict[str, set[int]] = {}
        self._read_at = 0

    def command(self) -> list[str]:
        forward, gelf, root = self.overrides
        if forward is None and gelf is None and root is None:  # the defaults, as a user runs it
            return [
                *("receive", "--listen", "forward+tcp://127.0.0.1:0"),
                *("--listen", "gelf+tcp://127.0.0.1:0", "--listen", "gelf+udp://127.0.0.1:0"),
                *("--output", f"file:{self.out}", "--data-dir", str(self.data_dir)),
            ]
        # what `receive` builds, with some settings changed
        cfg: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "sources": {
                "forward": {"type": "fluent_forward", "listen": ["tcp://127.0.0.1:0"], **(forward or {})},
                "gelf": {"type": "gelf", "listen": ["tcp://127.0.0.1:0", "udp://127.0.0.1:0"], **(gelf or {})},
            },
            "transforms": {"meta": {"type": "docker_metadata", "inputs": ["forward", "gelf"]}},
            "sinks": {"out": {"type": "file", "inputs": ["meta"], "path": str(self.out)}},
            **(root or {}),
        }
        path = self.dir / "pipeline.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return ["run", "-c", str(path)]

    def start(self, timeout: float = 60) -> Target:
        self._err = open(self.stderr_path, "ab")  # noqa: SIM115
        nofile = self.nofile

        def limits() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector", *self.command()],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            start_new_session=True,
            preexec_fn=limits,  # noqa: PLW1509 - only setrlimit, before exec
        )
        deadline = time.monotonic() + timeout
        while len(self.ports) < len(_LISTEN):
            log = self.log()
            for name, rx in _LISTEN.items():
                m = rx.search(log)
                if m:
                    self.ports[name] = int(m.group(1))
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the collector did not start listening:\n{log[-3000:]}")
            time.sleep(0.05)
        return self

    # -- what it is doing --------------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _status(self, key: str) -> int:
        """A ``/proc/<pid>/status`` figure in kB (0 once the process is gone)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def peak_rss_mb(self) -> float:
        return self._status("VmHWM") / 1024

    def rss_mb(self) -> float:
        return self._status("VmRSS") / 1024

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return 0

    def soft_nofile(self) -> int:
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise AssertionError("no open-files limit in /proc/<pid>/limits")

    def log(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> int:
        return self.log().count("\n")

    def dead_letter_bytes(self) -> int:
        d = self.data_dir / "dead-letter"
        return sum(p.stat().st_size for p in d.iterdir() if p.is_file()) if d.is_dir() else 0

    def good_numbers(self, run: str) -> set[int]:
        """Numbers of ``good <run> <n>`` records in the output so far (read incrementally)."""
        try:
            with open(self.out, "rb") as f:
                f.seek(self._read_at)
                data = f.read()
        except FileNotFoundError:
            return set()
        end = data.rfind(b"\n") + 1
        self._read_at += end
        for line in data[:end].splitlines():
            if b'"good ' not in line:
                continue
            msg = orjson.loads(line).get("message", "")
            parts = msg.split(" ")
            if len(parts) == 3 and parts[0] == "good":
                self._numbers.setdefault(parts[1], set()).add(int(parts[2]))
        return self._numbers.get(run, set())

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                rc = self.proc.wait(10)
        if self._err is not None:
            self._err.close()
        return rc

    def __enter__(self) -> Target:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            with contextlib.suppress(Exception):
                os.killpg(self.pid, signal.SIGKILL)
        self.stop()


# -- well-behaved clients ---------------------------------------------------------------------------
IP_BIND_ADDRESS_NO_PORT = 24  # Linux: pick the port at connect() (thousands of binds stay fast)


def bound_socket(host: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket bound to the loopback address ``host`` (its port chosen at connect)."""
    s = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((host, 0))
    except OSError:
        s.close()
        raise
    return s


def _connect(port: int, host: str = GOOD_HOST, kind: int = socket.SOCK_STREAM, timeout: float = 5) -> socket.socket:
    s = bound_socket(host, kind)
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        s.close()
        raise
    return s


def _refused(s: socket.socket, wait: float = 0.2) -> bool:
    """True when the server closes a connection it just accepted (a refusal)."""
    s.settimeout(wait)
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except TimeoutError:
        return False
    except OSError:
        return True
    finally:
        s.settimeout(5)


class GoodClient:
    """Sends ``n`` numbered records (``good <run> <i>``) at a steady pace, retrying as a
    well-behaved client does: a refused or broken connection is reopened after a pause and
    whatever was not confirmed is sent again.  :func:`start_good_client` runs one in a process
    of its own, so that the attack's threads cannot slow it down."""

    def __init__(self, port: int, run: str, n: int = GOOD_RECORDS, seconds: float = 5.0, stopping: Any = None) -> None:
        self.port = port
        self.run_id = run
        self.n = n
        self.per_message = 10
        self.pause = seconds / (n / self.per_message)
        self.stopping = stopping if stopping is not None else threading.Event()
        self.refusals = 0
        self.errors: list[str] = []

    def run(self) -> None:
        raise NotImplementedError


class ForwardClient(GoodClient):
    """Forward mode, 10 records per message, each message with a chunk id: a message counts as
    sent once its ack came back (as fluent-logger with ``require_ack_response``)."""

    def run(self) -> None:
        pk = msgpack.Packer(use_bin_type=True)
        unacked: dict[str, bytes] = {}
        todo = list(range(0, self.n, self.per_message))
        t0 = 1714564800
        while not self.stopping.is_set() and (todo or unacked):
            try:
                s = _connect(self.port)
            except OSError as e:
                self.errors.append(repr(e))
                time.sleep(0.2)
                continue
            if _refused(s):
                self.refusals += 1
                s.close()
                time.sleep(0.2)
                continue
            u = msgpack.Unpacker(raw=False)
            try:
                for data in list(unacked.values()):  # resent after a broken connection
                    s.sendall(data)
                while not self.stopping.is_set() and (todo or unacked):
                    if todo:
                        i = todo.pop(0)
                        entries = [[t0, {"message": f"good {self.run_id} {k}"}] for k in range(i, i + self.per_message)]
                        chunk = f"{self.run_id}-{i}"
                        unacked[chunk] = data = pk.pack(["good", entries, {"chunk": chunk}])
                        s.sendall(data)
                    s.settimeout(self.pause if todo else 1.0)
                    with contextlib.suppress(TimeoutError):
                        got = s.recv(65536)
                        if not got:
                            raise ConnectionError("closed by the server")
                        u.feed(got)
                        for a in u:
                            unacked.pop(a.get("ack"), None)
            except OSError as e:
                self.errors.append(repr(e))
                time.sleep(0.2)
            finally:
                s.close()


class GelfClient(GoodClient):
    """GELF over TCP, one message per record; after a broken connection the record being sent
    is sent again on a new one."""

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set() and i < self.n:
            try:
                s = _connect(self.port)
            except OSError as e:
                self.errors.append(repr(e))
                time.sleep(0.2)
                continue
            if _refused(s):
                self.refusals += 1
                s.close()
                time.sleep(0.2)
                continue
            try:
                while not self.stopping.is_set() and i < self.n:
                    frames = b"".join(
                        orjson.dumps({"version": "1.1", "host": "good", "short_message": f"good {self.run_id} {k}"})
                        + b"\0"
                        for k in range(i, min(self.n, i + self.per_message))
                    )
                    s.sendall(frames)
                    i += self.per_message
                    time.sleep(self.pause)
            except OSError as e:  # the frames of the failed sendall are sent again
                self.errors.append(repr(e))
                time.sleep(0.2)
            finally:
                s.close()


def _good_main(kind: str, port: int, run: str, n: int, stopping: Any, refusals: Any) -> None:
    client = (ForwardClient if kind == "forward" else GelfClient)(port, run, n, stopping=stopping)
    try:
        client.run()
    finally:
        refusals.value = client.refusals


class GoodClientProcess:
    """A good client in a process of its own (``start``, ``stop``, ``refusals``)."""

    def __init__(self, kind: str, port: int, run: str, n: int = GOOD_RECORDS) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.n = n
        self._stop = ctx.Event()
        self._refusals = ctx.Value("i", 0)
        self.proc = ctx.Process(target=_good_main, args=(kind, port, run, n, self._stop, self._refusals), daemon=True)

    def start(self) -> None:
        self.proc.start()

    def stop(self) -> None:
        self._stop.set()
        self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)

    @property
    def refusals(self) -> int:
        return int(self._refusals.value)


# -- attack helpers --------------------------------------------------------------------------------
def open_many(port: int, n: int, hosts: list[str], timeout: float = 20.0) -> list[socket.socket]:
    """Up to ``n`` TCP connections to ``port``, spread over source ``hosts``, opened without
    blocking on each other; those the server refuses at once are closed again."""
    sel = selectors.DefaultSelector()
    opened: list[socket.socket] = []
    pending = 0
    deadline = time.monotonic() + timeout
    for k in range(n):
        try:
            s = bound_socket(hosts[k % len(hosts)])
        except OSError:
            break
        s.setblocking(False)
        try:
            err = s.connect_ex(("127.0.0.1", port))
        except OSError:
            s.close()
            break
        if err not in (0, errno.EINPROGRESS):
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE)
        pending += 1
        while pending > 256 or (k == n - 1 and pending):  # keep the kernel's backlog busy, not flooded
            if time.monotonic() > deadline:
                break
            for key, _ in sel.select(0.5):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                sel.unregister(sock)
                pending -= 1
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    opened.append(sock)
                else:
                    sock.close()
        if time.monotonic() > deadline:
            break
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return opened


def still_open(socks: list[socket.socket]) -> list[socket.socket]:
    """The connections the server has not closed (closing the others)."""
    alive = []
    for s in socks:
        try:
            closed = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            closed = False
        except OSError:
            closed = True
        if closed:
            s.close()
        else:
            alive.append(s)
    return alive


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


class Control(threading.Event):
    """What an attack function gets: set when it must stop (``wait``/``is_set`` as an Event);
    ``ready`` is set by the attack once it is in place (see ``under_attack(wait_ready=...)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = threading.Event()


class Attack(threading.Thread):
    """Runs ``fn(control)`` in the background; exceptions are kept for the report."""

    def __init__(self, fn: Callable[[Control], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.stopping = Control()
        self.error: BaseException | None = None
        self.result: Any = None

    def run(self) -> None:
        try:
            self.result = self.fn(self.stopping)
        except BaseException as e:
            self.error = e
        finally:
            self.stopping.ready.set()

    def stop(self, timeout: float = 30) -> None:
        self.stopping.set()
        self.join(timeout)


class LoopProbe(threading.Thread):
    """Measures how long the collector's event loop stops answering: a UDP heartbeat to the
    forward port every 50 ms; the longest wait for an answer is ``max_stall``."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.max_stall = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((GOOD_HOST, 0))
        try:
            while not self.stopping.is_set():
                t = time.monotonic()
                s.sendto(b"\x00", ("127.0.0.1", self.port))
                s.settimeout(0.05)
                while not self.stopping.is_set():
                    try:
                        s.recv(16)
                        break
                    except TimeoutError:
                        self.max_stall = max(self.max_stall, time.monotonic() - t)
                        if time.monotonic() - t > 0.05:
                            s.sendto(b"\x00", ("127.0.0.1", self.port))  # a datagram may be dropped
                    except OSError:
                        break
                self.max_stall = max(self.max_stall, time.monotonic() - t)
                self.stopping.wait(0.05)
        finally:
            s.close()

    def stop(self) -> float:
        self.stopping.set()
        self.join(10)
        return self.max_stall


class GoodWatch(threading.Thread):
    """Counts the good client's records in the output until all are there or the deadline."""

    def __init__(self, target: Target, run: str, n: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.run_id = run
        self.n = n
        self.deadline = deadline
        self.count = 0
        self.done_at: float | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set() and time.monotonic() < self.deadline and self.target.alive():
            self.count = len(self.target.good_numbers(self.run_id))
            if self.count >= self.n:
                self.done_at = time.monotonic()
                return
            self.stopping.wait(0.2)
        self.count = len(self.target.good_numbers(self.run_id))
        if self.count >= self.n and time.monotonic() <= self.deadline + 0.5:
            self.done_at = time.monotonic()


# -- the check ---------------------------------------------------------------------------------------
@dataclass
class Figures:
    attack: str
    alive: bool = False
    peak_rss_mb: float = 0.0
    good: int = 0
    good_seconds: float | None = None
    log_lines: int = 0
    dead_letter_bytes: int = 0
    max_stall_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def report(self) -> None:
        path = os.environ.get("HOSTILE_REPORT")
        if path:
            with open(path, "ab") as f:
                f.write(orjson.dumps(asdict(self)) + b"\n")

    def check(self, *, dead_letter_cap: int = DEAD_LETTER_CAP, good_within: float = GOOD_WITHIN) -> None:
        """Every claim of the hostile-input suite, at once (so a failure shows every figure)."""
        problems = []
        if not self.alive:
            problems.append("the collector died")
        if self.peak_rss_mb > MAX_RSS_MB:
            problems.append(f"peak RSS {self.peak_rss_mb:.0f} MB > {MAX_RSS_MB} MB")
        if self.good < GOOD_RECORDS:
            problems.append(f"only {self.good} of {GOOD_RECORDS} good records within {good_within:.0f}s")
        if self.log_lines > MAX_LOG_LINES:
            problems.append(f"{self.log_lines} log lines > {MAX_LOG_LINES}")
        if self.dead_letter_bytes > dead_letter_cap:
            problems.append(f"{self.dead_letter_bytes} dead-letter bytes > {dead_letter_cap}")
        assert not problems, f"{self.attack}: {'; '.join(problems)} ({self})"


@contextlib.contextmanager
def under_attack(
    target: Target,
    name: str,
    attack: Callable[[Control], Any],
    *,
    client: str = "forward",
    good_within: float = GOOD_WITHIN,
    attack_for: float = 120.0,
    wait_ready: bool = False,
    until_served: bool = False,
    probe: bool = True,
) -> Iterator[Figures]:
    """Start ``attack`` and a good client at once; on exit wait for the good records (at most
    ``good_within`` seconds from the start) and for the attack to end (at most ``attack_for``
    seconds), stop what is left of it and collect the figures.  With ``wait_ready`` the good
    client starts once the attack says it is in place (``control.ready``).  With
    ``until_served`` the attack is told to stop once the good client is served (all its records
    are in) or ``good_within`` has passed, whichever comes first: for attacks that only hold
    their connections, what comes after that proves nothing more.  The body of the ``with``
    may watch the attack (and add notes to the figures)."""
    figures = Figures(name)
    run = f"r{os.getpid()}x{time.monotonic_ns() % 10**9}"
    port = target.ports["forward" if client == "forward" else "gelf_tcp"]
    good = GoodClientProcess(client, port, run)
    loop_probe = LoopProbe(target.ports["forward"]) if probe else None
    a = Attack(attack)
    t0 = time.monotonic()
    watch = GoodWatch(target, run, good.n, t0 + good_within)
    a.start()
    if wait_ready:  # the good client comes once the attack is in place (a container started meanwhile)
        a.stopping.ready.wait(good_within)
    good.start()
    watch.start()
    if loop_probe is not None:
        loop_probe.start()
    try:
        yield figures
        watch.join(max(0.0, t0 + good_within - time.monotonic()) + 5)
        if until_served:
            a.stopping.set()
        a.join(attack_for)  # the attack runs its course (its own duration), whatever the good client did
    finally:
        watch.stopping.set()
        watch.join(10)
        figures.good = watch.count
        figures.good_seconds = None if watch.done_at is None else round(watch.done_at - t0, 1)
        good.stop()
        a.stop()
        if loop_probe is not None:
            figures.max_stall_s = round(loop_probe.stop(), 2)
        figures.alive = target.alive()
        figures.peak_rss_mb = round(target.peak_rss_mb(), 1)
        figures.log_lines = target.log_lines()
        figures.dead_letter_bytes = target.dead_letter_bytes()
        figures.notes.setdefault("good_client_refusals", good.refusals)
        if a.error is not None:
            figures.notes["attack_error"] = repr(a.error)
        figures.report()  # (also when the body failed: the figures of a failing run are wanted too)
