"""Reading a user-named file safely: a regular file and nothing else, never a blocking open.

The primitives under :mod:`bundler.formats.source` (and the key, state and project readers):
kept apart so that signing can use them without importing the bundle opener.
"""

from __future__ import annotations

import fcntl
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

from ..errors import BundleError

Refuse = Callable[[str], BundleError]


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for "X is not a regular file (a FIFO)")."""
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return kind
    return "an unknown file type"


def open_regular(path: Path, refuse: Refuse) -> io.BufferedReader:
    """``path`` opened for reading, only if it is a regular file (symbolic links followed).

    stat first, so a device or FIFO is refused without being opened at all (opening some
    devices has effects); then open with O_NONBLOCK, so a FIFO swapped in after the stat
    cannot block the open; then fstat the descriptor and compare it with the stat: the file
    read is the file checked. O_NONBLOCK is cleared again before the file is handed over.

    Raises:
        OSError: it cannot be stat'ed or opened (the caller words the error).
        BundleError: whatever ``refuse`` makes of the reason (it is not a regular file, or it
            was replaced while being opened).
    """
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise refuse(f"is not a regular file ({file_kind(before.st_mode)})")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode):
            raise refuse(f"is not a regular file ({file_kind(after.st_mode)})")
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise refuse("was replaced while it was being opened")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, refuse: Refuse, limit: int) -> bytes:
    """The bytes of regular file ``path``; ``refuse`` also words "more than ``limit`` bytes".

    Raises:
        OSError: it cannot be read.
        BundleError: not a regular file, or larger than ``limit``.
    """
    with open_regular(path, refuse) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise refuse(f"is larger than {limit} bytes")
    return data
