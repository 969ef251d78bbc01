"""A full disk under the data directory: recognised, said loudly (not once per write), survived.

Disks fill on real hosts, often because of logs.  Checkpoints, disk buffers and dead letters
live in the data directory; none of them may stop the flow of good records when it is full:
dead letters are dropped and counted, checkpoint and ledger writes are retried (the last one
written stays valid), a disk buffer applies its ``when_full`` policy.  Each place keeps one
:class:`DiskFull` that says so at once, then at most every ``interval`` seconds, and once more
when writing works again.
"""

from __future__ import annotations

import errno
import logging
import time

from collector.ratelog import RateLimitedLog

log = logging.getLogger("collector.diskfull")

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


class DiskFull:
    """The state of one kind of write (``what``) while the disk is full.

    A disk that is nearly full flaps (a deleted segment makes room for one write, the next one
    fails): the warning is said at most every ``interval`` seconds, and "space is back" only
    after a warning that was said, so flapping costs two lines per interval, not two per write.
    """

    def __init__(self, what: str, meanwhile: str, interval: float = 30.0) -> None:
        self.what = what
        self.meanwhile = meanwhile  # what happens to the data meanwhile, said in every warning
        self._say = RateLimitedLog(log, interval=interval)
        self.since: float | None = None
        self._announced = False
        self.lost = 0  # items dropped since the last warning said (when the caller drops anything)

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, where: object, error: OSError, dropped: int = 0) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.lost += dropped
        if self._say.warning(
            "disk_full",
            "DISK FULL: cannot write %s to %s (%s): %s%s",
            self.what,
            where,
            error.strerror or error,
            self.meanwhile,
            f" ({self.lost} dropped so far)" if self.lost else "",
        ):
            self._announced = True

    def ok(self) -> None:
        if self.since is None:
            return
        if self._announced:
            log.warning(
                "disk space is back: writing %s again after %.0fs%s",
                self.what,
                time.monotonic() - self.since,
                f"; {self.lost} were dropped meanwhile" if self.lost else "",
            )
            self._announced = False
            self.lost = 0
        self.since = None
