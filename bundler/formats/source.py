"""Opening the file a user names as BUNDLE: the one place untrusted paths become streams.

Every reader (verify, unpack, inspect, and later the split-part and delta readers) opens
bundles here, so the rules on what may be read are enforced once.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import BundleError


def open_bundle(bundle: Path, what: str = "bundle") -> BinaryIO:
    """``bundle`` opened for reading; it must be a regular file. ``what`` names it in
    messages (``"signature file"`` for a detached co-signature file, revision 1.4).

    Raises:
        BundleError: it cannot be opened, or it is not a regular file.
    """
    try:
        f = bundle.open("rb")
    except OSError as e:
        raise BundleError(f"cannot read {what} {bundle}: {e.strerror}") from e
    # The reader seeks (over the payload, and back to hash it): a pipe cannot be read.
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise BundleError(
            f"{what} {bundle} is not a regular file",
            remedy=f"save the {what} to a file first, then pass that file",
        )
    return f
