"""Opening the files a user names on the isolated side: the one place untrusted paths become
streams.

Every reader (verify, unpack, inspect, split, the delta readers) opens bundles here, and the
trusted keys, DEST's state files and the project files are read through the same
``open_regular``, so the rules on what may be read are enforced once: a regular file and
nothing else. A FIFO, a device (``/dev/zero``), a directory or a socket is refused at once by
name, never opened in a way that could block or read forever. A BUNDLE may also be a split
bundle's part index (``model.airgap.split.json``, docs/format.md section 12): it opens as one
seekable file over the parts, each hashed against the signed index before its bytes are used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final, cast

from ..errors import BundleError, ResourceLimitError, escape
from .files import Refuse, file_kind, open_regular, read_regular
from .parts import MAX_INDEX_BYTES, PartsFile, PartsIndex, signature_path, verify_index
from .signing import SIGNATURE_BYTES, load_trusted_keys

# An outer bundle starts with its first member's name, "payload.tar.zst"; a part index is
# a JSON object. One byte tells them apart before anything else is read.
_INDEX_START: Final = b"{"


def _open_regular(path: Path, what: str) -> BinaryIO:
    shown = escape(str(path))

    def refuse(reason: str) -> BundleError:
        # The reader seeks (over the payload, and back to hash it): only a file will do.
        return BundleError(
            f"{what} {shown} {reason}",
            remedy=f"save the {what} to a file first, then pass that file",
        )

    try:
        return open_regular(path, refuse)
    except OSError as e:
        raise BundleError(f"cannot read {what} {shown}: {e.strerror}") from e


def is_parts_index(path: Path) -> bool:
    """True when ``path`` is a part index rather than a bundle (by its first byte).

    Raises:
        BundleError: it cannot be opened, or it is not a regular file.
    """
    with _open_regular(path, "bundle") as f:
        return f.read(1) == _INDEX_START


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    with _open_regular(path, what) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ResourceLimitError(f"over {limit} bytes", member=path.name)
    return data


def read_index(index_path: Path, trust: Sequence[Path]) -> tuple[PartsIndex, bytes]:
    """The verified part index at ``index_path`` and its exact bytes.

    Raises:
        TrustError, SignatureError, PartsIndexError (exit 3); BundleError: unreadable.
    """
    keys = load_trusted_keys(trust)
    data = _read_bounded(index_path, MAX_INDEX_BYTES, "part index")
    sig = signature_path(index_path)
    if not sig.exists():
        raise BundleError(
            f"the part index's signature {escape(str(sig))} is missing",
            remedy="copy it with the index (split writes both)",
        )
    signature = _read_bounded(sig, SIGNATURE_BYTES, "signature")
    index, _key = verify_index(data, signature, keys, index_path.name)
    return index, data


def open_bundle(
    bundle: Path, what: str = "bundle", *, trust: Sequence[Path] | None = None
) -> BinaryIO:
    """``bundle`` opened for reading; it must be a regular file. ``what`` names it in
    messages (``"signature file"`` for a detached co-signature file, revision 1.4).

    A part index is opened as a `PartsFile` over its parts once its signature verifies with
    ``trust``; without ``trust`` (inspect) an index is refused.

    Raises:
        BundleError: it cannot be opened, or it is not a regular file (a FIFO, a device, a
            directory, a socket: refused at once, never read); BundleRejected subclasses: a
            part index that does not verify.
    """
    f = _open_regular(bundle, what)
    if what != "bundle" or f.read(1) != _INDEX_START:
        f.seek(0)
        return f
    f.close()
    if trust is None:
        raise BundleError(
            f"{escape(str(bundle))} is a split bundle's part index",
            remedy="`airgap verify INDEX --trust KEY` checks its parts; `cat` them into one "
            "file to inspect it",
        )
    index, _ = read_index(bundle, trust)
    return cast(BinaryIO, PartsFile(index, Path(os.path.abspath(bundle)).parent))


__all__ = [
    "Refuse",
    "file_kind",
    "is_parts_index",
    "open_bundle",
    "open_regular",
    "read_index",
    "read_regular",
]
