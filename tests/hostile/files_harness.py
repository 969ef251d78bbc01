"""Run the real collector as a subprocess under attack and measure what the issue asks for:
alive, peak RSS, log lines.

Peak RSS is the kernel's own figure for the collector process (``wait4``'s ``ru_maxrss``),
taken by a small launcher process that forks and execs the collector: measured straight from
pytest, the figure would include pytest's own memory (a forked child's peak starts at its
parent's size, and exec keeps it).

(Helper for the file, metadata and config attacks; helper i13net builds the generic harness of
this directory for network attacks, and this one should merge into it once it lands.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO

# What every attack must stay within, at default settings (issue 13).
MAX_RSS_MB = 200
MAX_LOG_LINES = 200


@dataclass
class Outcome:
    rc: int
    peak_rss_mb: float
    stderr: str
    alive_when_stopped: bool  # still running when we asked it to stop (follow mode)

    @property
    def log_lines(self) -> int:
        return len(self.stderr.splitlines())

    def assert_within_limits(self) -> None:
        assert "Traceback" not in self.stderr, self.stderr[-3000:]
        assert self.peak_rss_mb <= MAX_RSS_MB, f"peak RSS {self.peak_rss_mb:.0f} MB"
        assert self.log_lines <= MAX_LOG_LINES, f"{self.log_lines} log lines:\n{self.stderr[-3000:]}"


# Forks the collector, passes SIGTERM/SIGINT on, and writes its exit code and peak RSS.
_LAUNCHER = """
import json, os, signal, sys
result, args = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "collector", *args])
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda s, f: os.kill(pid, s))
while True:
    try:
        _, status, ru = os.wait4(pid, 0)
        break
    except InterruptedError:
        continue
rc = os.waitstatus_to_exitcode(status)
with open(result, "w") as f:
    json.dump({"rc": rc, "maxrss_kb": ru.ru_maxrss}, f)
sys.exit(rc if rc >= 0 else 128 - rc)
"""


class Running:
    """``python -m collector ARGS`` in its own session; stderr (the log) in a file."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        stamp = time.monotonic_ns()
        self.log_path = workdir / f"collector-{stamp}.log"
        self.result_path = workdir / f"collector-{stamp}.result"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(self.result_path), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env={**os.environ, **(env or {})},
            cwd=REPO,
            start_new_session=True,
        )
        self.rc: int | None = None
        self.peak_kb = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.rc is None and self._poll()

    def _poll(self) -> bool:
        if self.proc.poll() is None:
            return True
        try:
            result = json.loads(self.result_path.read_text())
        except (OSError, ValueError):  # the launcher itself was killed
            result = {"rc": self.proc.returncode, "maxrss_kb": 0}
        self.rc = result["rc"]
        self.peak_kb = result["maxrss_kb"]
        self._log.close()
        return False

    def wait(self, timeout: float) -> bool:
        """True when it exited within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.alive(), f"exited {self.rc} before logging {text!r}:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in the log after {timeout}s:\n{self.log()[-3000:]}"
            time.sleep(0.05)

    def stop(self, timeout: float = 60) -> Outcome:
        """SIGTERM (what a service manager sends); it must exit by itself within ``timeout``."""
        alive = self.alive()
        if alive:
            os.kill(self.proc.pid, signal.SIGTERM)
        exited = self.wait(timeout)
        if not exited:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.wait(30)
            raise AssertionError(f"still running {timeout}s after SIGTERM:\n{self.log()[-3000:]}")
        return self.outcome(alive)

    def outcome(self, alive_when_stopped: bool = False) -> Outcome:
        assert self.rc is not None
        return Outcome(self.rc, self.peak_kb / 1024, self.log(), alive_when_stopped)

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.wait(30)


def run_to_end(args: list[str], workdir: Path, timeout: float = 120, env: dict[str, str] | None = None) -> Outcome:
    """Run a command that ends by itself (``validate``, ``tail --once``)."""
    r = Running(args, workdir, env)
    if not r.wait(timeout):
        r.kill()
        raise AssertionError(f"collector {' '.join(args)} did not end within {timeout}s:\n{r.log()[-3000:]}")
    return r.outcome()


def poll_until(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def record_figures(attack: str, outcome: Outcome, good: int | None) -> None:
    """Append the figures of an attack to ``$HOSTILE_FIGURES`` (for the README's table)."""
    path = os.environ.get("HOSTILE_FIGURES")
    if not path:
        return
    row = {"attack": attack, "peak_rss_mb": round(outcome.peak_rss_mb, 1), "good": good, "log_lines": outcome.log_lines}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
