"""Opening files that someone else may have put there: never blocking, never a surprise.

A log or metadata file is only read when it is a regular file: a FIFO would block the reader
forever (and with it the event loop), a device never ends.  Paths found by globs are also kept
within the directory the glob watches once symlinks are resolved.  The checks are made on the
open descriptor, so the file checked is the file read.
"""

from __future__ import annotations

import errno
import os
import stat


class UnsafeFile(OSError):
    """A path not to read: not a regular file (a FIFO would block the reader forever, a
    device never ends), or a symlink leading out of the watched directory (or any symlink,
    where none is expected)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(errno.EPERM, message)
        self.reason = reason  # "not_regular_file" | "outside_root" | "symlink"


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def within(path: str, root: str) -> bool:
    """Whether the (resolved) ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_regular(path: str, st: os.stat_result, root: str | None) -> None:
    """Raise :class:`UnsafeFile` unless ``path`` (stat'ed as ``st``) is a regular file within
    ``root`` once symlinks are resolved (``root`` None: anywhere)."""
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile("not_regular_file", f"{path}: {kind_of(st.st_mode)}, not a regular file")
    if root is not None:
        real = os.path.realpath(path)
        if not within(real, root):
            raise UnsafeFile("outside_root", f"{path}: a symlink to {real}, outside {root}")


def open_regular(path: str | os.PathLike[str], root: str | None = None, follow_symlinks: bool = True) -> int:
    """A read descriptor of ``path``, only when it is a regular file within ``root``.

    Opened with ``O_NONBLOCK`` so that a FIFO or a device never blocks the open (meaningless
    for a regular file, whose reads never block), then checked on the descriptor itself: the
    file checked is the file read, whatever is renamed or replaced meanwhile.  With
    ``follow_symlinks`` False a symlink as the last component is refused (``outside_root``)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_symlinks:
            raise UnsafeFile("symlink", f"{path}: a symlink (not followed)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile("not_regular_file", f"{path}: {kind_of(st.st_mode)}, not a regular file")
        if root is not None:
            real = os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
            if not within(real, root):
                raise UnsafeFile("outside_root", f"{path}: leads to {real}, outside {root}")
    except BaseException:
        os.close(fd)
        raise
    return fd
