"""Opening the files a user names on the isolated side: the one place untrusted paths become
streams.

Every reader (verify, unpack, inspect, and later the split-part and delta readers) opens
bundles here, and the trusted keys, DEST's state files and the project files are read through
the same ``open_regular``, so the rules on what may be read are enforced once: a regular file
and nothing else. A FIFO, a device (``/dev/zero``), a directory or a socket is refused at once
by name, never opened in a way that could block or read forever.
"""

from __future__ import annotations

import fcntl
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..errors import BundleError, escape

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


def open_bundle(bundle: Path, what: str = "bundle") -> BinaryIO:
    """``bundle`` opened for reading; it must be a regular file. ``what`` names it in
    messages (``"signature file"`` for a detached co-signature file, revision 1.4).

    Raises:
        BundleError: it cannot be opened, or it is not a regular file (a FIFO, a device, a
            directory, a socket: refused at once, never read).
    """
    shown = escape(str(bundle))

    def refuse(reason: str) -> BundleError:
        # The reader seeks (over the payload, and back to hash it): only a file will do.
        return BundleError(
            f"{what} {shown} {reason}",
            remedy=f"save the {what} to a file first, then pass that file",
        )

    try:
        return open_regular(bundle, refuse)
    except OSError as e:
        raise BundleError(f"cannot read {what} {shown}: {e.strerror}") from e
