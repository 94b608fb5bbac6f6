"""Verify a bundle and install it: staging beside DEST, writing, syncing, atomic rename."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from ..errors import BundleError, IntegrityError
from ..formats.archive import (
    OuterBundle,
    PayloadReader,
    decompressed_limit,
    hash_region,
    read_outer,
)
from ..formats.delta import is_delta
from ..formats.limits import DEFAULT_LIMITS, Limits
from ..formats.manifest import FileEntry, Manifest, parse_manifest
from ..formats.signing import load_trusted_keys, public_key_pem
from ..formats.source import open_bundle
from ..layout import OUTER_PAYLOAD, STATE_DIR, STATE_MANIFEST, STATE_SIGNATURE, STATE_SIGNER
from ..preflight import free_space, require, unpack_need
from ..progress import NullProgress, Progress
from .policy import MemberTracker, Verified, check_rollback, verify_manifest

_STAGE_TAG: Final = ".airgap-stage-"
_RENAME_EXCHANGE: Final = 2
_AT_FDCWD: Final = -100


@dataclass(frozen=True)
class Opened:
    """A bundle whose manifest verified and whose payload hash matched."""

    verified: Verified
    outer: OuterBundle

    @property
    def manifest(self) -> Manifest:
        return self.verified.manifest


def _open_checked(
    f: BinaryIO,
    trust: Sequence[Path],
    now: int,
    limits: Limits,
    progress: Progress,
    after_manifest: Callable[[Verified], None] | None = None,
) -> Opened:
    """Signature, manifest and payload hash: everything before decompressing a byte.

    ``after_manifest`` runs once the signed manifest is verified, before the payload is
    hashed (unpack's free-space preflight: refuse early, on sizes that are signed).
    """
    keys = load_trusted_keys(trust)
    outer = read_outer(f, limits)
    verified = verify_manifest(outer.manifest, outer.signature, keys, now=now, limits=limits)
    if after_manifest is not None:
        after_manifest(verified)
    info = verified.manifest.payload
    if outer.payload_size != info.size:
        raise IntegrityError(
            f"payload is {outer.payload_size} bytes, the manifest says {info.size} "
            "(truncated or extended)",
            member=OUTER_PAYLOAD,
        )
    progress.start("hashing payload", outer.payload_size)
    if hash_region(f, outer.payload_offset, outer.payload_size) != info.sha256:
        raise IntegrityError("sha256 differs from the signed manifest", member=OUTER_PAYLOAD)
    progress.finish()
    return Opened(verified=verified, outer=outer)


def _members(
    f: BinaryIO, opened: Opened, limits: Limits
) -> Iterator[tuple[FileEntry, Iterator[bytes]]]:
    """Every payload member, admitted against the manifest, with its data chunks.

    The caller must hash the chunks and call ``MemberTracker.check_content``; after the last
    member this checks that nothing is missing and the compressed bytes did not change.
    """
    manifest = opened.manifest
    tracker = MemberTracker(expected=manifest.file_map(), limits=limits)
    limit = decompressed_limit(manifest.payload.unpacked_size, manifest.payload.file_count)
    reader = PayloadReader(f, opened.outer.payload_offset, opened.outer.payload_size, limit, limits)
    for header, chunks in reader.members():
        yield tracker.admit(header), chunks
    tracker.finish()
    reader.finish(manifest.payload.sha256)


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


def open_verified(
    bundle: Path,
    trust: Sequence[Path],
    *,
    now: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Verified:
    """Verify the signature, the manifest and the payload hash; decompress nothing.

    Raises:
        BundleRejected subclasses (exit 3) for every failed check.
    """
    with open_bundle(bundle) as f:
        return _open_checked(f, trust, _now(now), limits, NullProgress()).verified


def verify(
    bundle: Path,
    trust: Sequence[Path],
    *,
    now: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> Verified:
    """Full verification of every check `unpack` makes; writes nothing. (For a delta: what
    can be checked without DEST, :func:`bundler.verify.delta.verify_delta`.)

    Raises:
        BundleRejected subclasses (exit 3) for every failed check.
    """
    progress = progress or NullProgress()
    if is_delta(bundle):
        from .delta import verify_delta  # delta.py builds on this module's stage machinery

        return verify_delta(bundle, trust, now=now, limits=limits, progress=progress)
    with open_bundle(bundle) as f:
        opened = _open_checked(f, trust, _now(now), limits, progress)
        progress.start("verifying files", opened.manifest.payload.unpacked_size)
        for entry, chunks in _members(f, opened, limits):
            digest = hashlib.sha256()
            for chunk in chunks:
                digest.update(chunk)
                progress.advance(len(chunk))
            MemberTracker.check_content(entry, digest.hexdigest())
        progress.finish()
        return opened.verified


# ---- unpacking --------------------------------------------------------------------------


def read_installed(dest: Path, limits: Limits = DEFAULT_LIMITS) -> Manifest | None:
    """The manifest of the bundle already unpacked at ``dest``, or None if there is none."""
    path = dest / STATE_MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror}") from e
    try:
        return parse_manifest(data, limits)
    except BundleError as e:
        raise BundleError(
            f"{path} is not a valid manifest ({e.message})",
            remedy=f"remove {dest} if it is not needed, then unpack again",
        ) from e


@contextlib.contextmanager
def _locked(parent: Path) -> Iterator[None]:
    """An exclusive lock on DEST's parent folder, so two unpacks never interleave."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _clean_stale_stages(dest: Path) -> None:
    # Holding the lock, any stage for this DEST is left over from a killed run.
    for stale in dest.parent.glob(f".{glob.escape(dest.name)}{_STAGE_TAG}*"):
        _remove(stale)


def _remove(path: Path) -> None:
    # A stage can hold a symlinked DEST swapped out by _install; rmtree refuses links.
    if path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _syncfs(path: Path) -> None:
    """Flush the staged tree to disk once (cheaper than fsync per file, same guarantee)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(b))


class _Stage:
    """Writes verified members into a fresh staging folder that only we have touched."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_str = os.fspath(root)
        self._dirs: set[str] = {""}

    def _mkdirs(self, rel_dir: str) -> None:
        if rel_dir in self._dirs:
            return
        parent = rel_dir.rpartition("/")[0]
        self._mkdirs(parent)
        path = self.root / rel_dir
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)  # independent of the umask
        self._dirs.add(rel_dir)

    def write(self, entry: FileEntry, chunks: Iterator[bytes], progress: Progress) -> None:
        self._mkdirs(entry.path.rpartition("/")[0])
        # O_EXCL and O_NOFOLLOW: the path must be new; nothing can redirect the write.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(f"{self._root_str}/{entry.path}", flags, 0o600)
        digest = hashlib.sha256()
        try:
            for chunk in chunks:
                digest.update(chunk)
                view = memoryview(chunk)
                while view:  # write(2) may write less than asked
                    view = view[os.write(fd, view) :]
                progress.advance(len(chunk))
            os.fchmod(fd, entry.mode)
        finally:
            os.close(fd)
        MemberTracker.check_content(entry, digest.hexdigest())

    def write_state(self, verified: Verified) -> None:
        self._mkdirs(STATE_DIR)
        for rel, data in (
            (STATE_MANIFEST, verified.manifest_bytes),
            (STATE_SIGNATURE, verified.signature),
            (STATE_SIGNER, public_key_pem(verified.key.public)),
        ):
            path = self.root / rel
            path.write_bytes(data)
            os.chmod(path, 0o644)


def unpack(
    bundle: Path,
    dest: Path,
    trust: Sequence[Path],
    *,
    allow_downgrade: bool = False,
    now: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
    before_write: Callable[[Manifest], None] | None = None,
) -> Verified:
    """Verify ``bundle`` and install its payload at ``dest``, all or nothing.

    Members are written into a staging folder beside ``dest`` (same filesystem), synced, and
    swapped in with one rename; on any failure the stage is removed and ``dest`` is exactly as
    it was. A stage left by a killed run is removed by the next run.

    ``before_write`` is called with the verified manifest before anything is written (the
    CLI's host check); whatever it raises stops the unpack with ``dest`` untouched.

    Raises:
        BundleRejected subclasses (exit 3): any failed check, including rollback.
        InsufficientSpaceError: the new tree does not fit beside ``dest``; nothing written.
        BundleError: ``dest`` cannot be written, or is a folder airgap did not make.
    """
    if is_delta(bundle):
        from .delta import apply_delta  # delta.py builds on this module's stage machinery

        return apply_delta(
            bundle,
            dest,
            trust,
            allow_downgrade=allow_downgrade,
            now=now,
            limits=limits,
            progress=progress,
            before_write=before_write,
        )
    progress = progress or NullProgress()
    dest = Path(os.path.abspath(dest))
    parent = dest.parent
    if not parent.is_dir():
        raise BundleError(f"{parent} does not exist", remedy=f"create it: mkdir -p {parent}")
    if dest.is_symlink():
        # Swapping the stage in would replace the link, not the folder it points to.
        raise BundleError(
            f"{dest} is a symbolic link",
            remedy=f"pass the real folder instead: {os.path.realpath(dest)}",
        )
    if dest.exists() and not dest.is_dir():
        raise BundleError(f"{dest} exists and is not a folder")
    with _locked(parent):
        _clean_stale_stages(dest)
        installed = read_installed(dest, limits) if dest.exists() else None
        if dest.exists() and installed is None and any(dest.iterdir()):
            raise BundleError(
                f"{dest} is not empty and was not made by `airgap unpack`",
                remedy="choose a new or empty destination folder",
            )
        with open_bundle(bundle) as f:
            opened = _open_checked(
                f, trust, _now(now), limits, progress, lambda v: _require_space(parent, v)
            )
            if installed is not None and installed.name == opened.manifest.name:
                check_rollback(opened.manifest, installed, allow_downgrade=allow_downgrade)
            if before_write is not None:
                before_write(opened.manifest)
            stage_root: Path | None = None
            try:
                stage_root = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_STAGE_TAG}", dir=parent))
                os.chmod(stage_root, 0o755)
                stage = _Stage(stage_root)
                progress.start("unpacking", opened.manifest.payload.unpacked_size)
                for entry, chunks in _members(f, opened, limits):
                    stage.write(entry, chunks, progress)
                progress.finish()
                stage.write_state(opened.verified)
                _syncfs(stage_root)
                _install(stage_root, dest)
            except OSError as e:
                raise BundleError(f"cannot write under {parent}: {e.strerror}") from e
            finally:
                if stage_root is not None:
                    _remove(stage_root)
        return opened.verified


def _require_space(parent: Path, verified: Verified) -> None:
    """The preflight: the whole new tree must fit beside DEST before the stage is made.

    Raises:
        InsufficientSpaceError: naming the bytes (or inodes) needed and free.
    """
    try:
        block = free_space(parent).block_size
    except OSError as e:
        raise BundleError(f"cannot ask {parent} for its free space: {e.strerror}") from e
    need = unpack_need(verified.manifest, len(verified.manifest_bytes), block)
    require(
        parent,
        need,
        doing=f"unpack {verified.manifest.name} {verified.manifest.version}",
        remedy="free space there or unpack elsewhere; the old DEST is kept until the new tree "
        "is complete, so both must fit at once (`airgap doctor BUNDLE --dest DIR` checks first)",
    )


def _install(stage_root: Path, dest: Path) -> None:
    """Swap the stage in; the old tree ends up at the stage path, which the caller removes."""
    if dest.exists():
        if not _exchange(stage_root, dest):
            # Without RENAME_EXCHANGE there is a moment with no DEST, never a half-written one.
            aside = stage_root.with_name(stage_root.name + "-old")
            os.rename(dest, aside)
            os.rename(stage_root, dest)
            os.rename(aside, stage_root)
    else:
        os.rename(stage_root, dest)
    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
