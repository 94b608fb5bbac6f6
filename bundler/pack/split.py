"""Splitting a bundle for media: numbered parts, the signed part index and a `sha256sum -c`
file, written beside each other so that a complete index means complete parts."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import BundleError, UsageError
from ..formats.archive import read_outer
from ..formats.manifest import parse_manifest
from ..formats.parts import (
    FAT32_MAX_FILE,
    MAX_PARTS,
    MIN_PART_SIZE,
    SUMS_SUFFIX,
    BackgroundDigest,
    BundleIdentity,
    PartsIndex,
    Readable,
    build_index,
    index_name,
    part_name,
    part_pattern,
    split_stream,
)
from ..formats.signing import key_id, load_private_key, sign
from ..formats.source import open_bundle
from ..progress import NullProgress, Progress


@dataclass(frozen=True)
class Split:
    """What `split_bundle` wrote: the index, its signature, the sums file and the parts."""

    index: PartsIndex
    index_path: Path
    signature_path: Path
    sums_path: Path
    part_paths: tuple[Path, ...]


def split_bundle(
    bundle: Path,
    part_size: int,
    private_key: Ed25519PrivateKey,
    *,
    out_dir: Path | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> Split:
    """Write ``bundle`` as parts of ``part_size`` bytes (the last shorter) plus a signed index.

    The same bundle and key give byte-identical parts, index and signature. Files named like
    parts of this bundle that the new index does not list (a previous split's) are removed.

    Raises:
        UsageError: ``part_size`` below the minimum, or too many parts.
        BundleError: the bundle cannot be read or is not a bundle; ``out_dir`` not writable.
    """
    progress = progress or NullProgress()
    if part_size < MIN_PART_SIZE:
        raise UsageError(f"part size {part_size} is below the minimum of {MIN_PART_SIZE} bytes")
    folder = Path(os.path.abspath(out_dir if out_dir is not None else bundle.parent))
    signer = key_id(private_key.public_key())
    with open_bundle(bundle) as f:
        # Split only what reads as a bundle: the index binds its manifest's digest and name.
        outer = read_outer(f)
        manifest = parse_manifest(outer.manifest)
        size = f.seek(0, io.SEEK_END)
        f.seek(0)
        count = -(-size // part_size)
        if count > MAX_PARTS:
            raise UsageError(
                f"{count} parts of {part_size} bytes, over the limit of {MAX_PARTS}",
                remedy="choose a larger --size",
            )
        if warn is not None:
            if part_size > FAT32_MAX_FILE and count > 1:
                warn(
                    f"parts of {part_size} bytes do not fit FAT32 (at most {FAT32_MAX_FILE} "
                    "bytes a file); --size 4G (4,000,000,000 bytes) does"
                )
            if manifest.signer != signer:
                warn(
                    f"the bundle is signed by {manifest.signer[:16]}..., the index by "
                    f"{signer[:16]}...: the isolated side must trust both keys"
                )
        names = [part_name(bundle.name, n, count) for n in range(1, count + 1)]
        progress.start("splitting", size)
        before = os.fstat(f.fileno())
        with _staged(folder) as stage:
            whole_digest = BackgroundDigest(f.fileno(), size)
            try:
                # open_bundle gives a BufferedReader for a bundle file (a part index was refused).
                src = cast(Readable, f)
                written = split_stream(
                    src, size, part_size, stage.sinks(names), advance=progress.advance
                )
            except BaseException:
                whole_digest.cancel()
                raise
            whole = whole_digest.result()
            # The parts and the whole digest were read in two passes: the same file, unchanged.
            if _identity(os.fstat(f.fileno())) != _identity(before):
                raise BundleError(
                    f"{bundle} changed while it was split",
                    remedy="split again once nothing writes to the bundle",
                )
            identity = BundleIdentity(
                file=bundle.name,
                name=manifest.name,
                version=manifest.version,
                manifest_sha256=hashlib.sha256(outer.manifest).hexdigest(),
                sha256=whole,
                size=size,
            )
            index = build_index(identity, signer, part_size, written)
            data = index.to_bytes()
            idx = index_name(bundle.name)
            stage.add(idx + ".sig", sign(private_key, data))
            stage.add(bundle.name + SUMS_SUFFIX, index.sha256sums())
            # The index last: once it is in place, every part it names is too.
            stage.add(idx, data)
            stage.commit(stale=part_pattern(bundle.name))
        progress.finish()
    return Split(
        index=index,
        index_path=folder / idx,
        signature_path=folder / (idx + ".sig"),
        sums_path=folder / (bundle.name + SUMS_SUFFIX),
        part_paths=tuple(folder / n for n in names),
    )


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Stage:
    """Temp files beside their final names, renamed into place only when all are written."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pending: list[tuple[str, str]] = []  # (temp path, final name), in commit order
        self._current: BinaryIO | None = None  # the part being written

    def _new(self, name: str) -> tuple[int, str]:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
        except OSError as e:
            raise BundleError(f"cannot write in {self.folder}: {e.strerror}") from e
        self.pending.append((tmp, name))
        return fd, tmp

    def sinks(self, names: list[str]) -> Iterator[BinaryIO]:
        """A new part file for each name; the previous one is synced and closed first."""
        for name in names:
            self._close_current()
            fd, _ = self._new(name)
            self._current = os.fdopen(fd, "wb")
            yield self._current

    def _close_current(self, *, sync: bool = True) -> None:
        f, self._current = self._current, None
        if f is not None:
            try:
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                f.close()

    def add(self, name: str, data: bytes) -> None:
        fd, _ = self._new(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def commit(self, stale: re.Pattern[str]) -> None:
        self._close_current()
        keep = {name for _, name in self.pending}
        for entry in os.scandir(self.folder):
            if stale.fullmatch(entry.name) and entry.name not in keep:
                os.unlink(entry.path)
        for tmp, name in self.pending:
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.folder / name)
        self.pending.clear()
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._close_current(sync=False)
        for tmp, _ in self.pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


@contextlib.contextmanager
def _staged(folder: Path) -> Iterator[_Stage]:
    if not folder.is_dir():
        raise BundleError(f"{folder} is not a folder", remedy=f"create it: mkdir -p {folder}")
    stage = _Stage(folder)
    try:
        yield stage
    except OSError as e:
        stage.discard()
        raise BundleError(f"cannot write in {folder}: {e.strerror}") from e
    except BaseException:
        stage.discard()
        raise


def split_file(
    bundle: Path,
    part_size: int,
    key: Path,
    *,
    passphrase: bytes | None = None,
    out_dir: Path | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> Split:
    """`split_bundle` with the signing key read from ``key`` (PKCS#8 PEM, as `pack` takes).

    Raises:
        KeyFileError: the key cannot be loaded; and what `split_bundle` raises.
    """
    private = load_private_key(key, passphrase)
    return split_bundle(bundle, part_size, private, out_dir=out_dir, progress=progress, warn=warn)
