"""Verify a bundle and install it: staging beside DEST, writing, syncing, atomic rename."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import glob
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, cast

from ..errors import BundleError, IntegrityError, ResourceLimitError, escape
from ..formats.archive import (
    Header,
    OuterBundle,
    PayloadReader,
    cosignature_member,
    decompressed_limit,
    hash_region,
    read_outer,
)
from ..formats.cosign import Cosignature, parse_signature_file, render_signature_file
from ..formats.delta import is_delta
from ..formats.limits import DEFAULT_LIMITS, Limits
from ..formats.manifest import FileEntry, Manifest, parse_manifest
from ..formats.signing import load_trusted_keys, public_key_pem
from ..formats.source import is_parts_index, open_bundle, read_regular
from ..layout import (
    DETACHED_SUFFIX,
    OUTER_PAYLOAD,
    STATE_COSIGNATURES,
    STATE_DIR,
    STATE_MANIFEST,
    STATE_SIGNATURE,
    STATE_SIGNER,
)
from ..preflight import free_space, require, unpack_need
from ..progress import NullProgress, Progress
from .policy import MemberTracker, Verified, check_rollback, verify_manifest
from .trustpolicy import TrustPolicy, from_trusted_keys, load_policy, packer_keys
from .writer import Writeback, WriterPool, feed, run_members

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


@dataclass(frozen=True)
class TrustInputs:
    """What decides trust: ``--trust`` keys, or a policy file (which then replaces them), and
    the detached signature files' bytes, read at the edge (``read_detached``)."""

    trust: Sequence[Path] = ()
    policy: Path | None = None
    detached: Sequence[tuple[str, bytes]] = ()

    @functools.cached_property
    def trust_policy(self) -> TrustPolicy:
        """The policy file's policy, or ``--trust`` as "any one of these keys" (loaded once).

        Raises:
            PolicyError: the policy file cannot be used; TrustError: a key cannot be loaded.
        """
        if self.policy is not None:
            return load_policy(self.policy)
        return from_trusted_keys(load_trusted_keys(self.trust))

    def verify(
        self,
        manifest: bytes,
        signature: bytes,
        members: Sequence[tuple[str, bytes]],
        *,
        now: int,
        limits: Limits,
    ) -> Verified:
        """The manifest's trust decision (``policy.verify_manifest``) with these inputs, for
        a full bundle and a delta alike: the policy (or ``--trust``), and the co-signature
        ``members`` of the outer archive, then the detached files'.

        Raises:
            as ``policy.verify_manifest``; SignatureError: a malformed detached file.
        """
        return verify_manifest(
            manifest,
            signature,
            (),
            now=now,
            limits=limits,
            cosignatures=presented_cosignatures(members, manifest, self.detached, limits),
            policy=self.trust_policy,
        )

    def packer_key_files(self) -> list[Path]:
        """The key files of :func:`trustpolicy.packer_keys`, for a split bundle's part index
        (read by ``open_bundle``, which takes files)."""
        return [k.source for k in packer_keys(self.trust_policy)]


def read_detached(
    bundle: Path, files: Sequence[Path] | None, limits: Limits = DEFAULT_LIMITS
) -> list[tuple[str, bytes]]:
    """The detached signature files: ``files``, or else ``BUNDLE.sig`` when it is there.

    Each is read up to its size limit plus one byte, so a huge file costs nothing; the
    parser refuses it as over the limit.

    Raises:
        BundleError: a file named in ``files`` cannot be read, or is not a regular file.
    """
    if files is None:
        beside = bundle.with_name(bundle.name + DETACHED_SUFFIX)
        # A split bundle's part index has its own raw INDEX.sig (section 12), which is not
        # a co-signature file: co-signatures of a split bundle come with --signatures.
        if not beside.is_file() or (bundle.is_file() and is_parts_index(bundle)):
            return []
        files = [beside]
    out = []
    for path in files:
        with open_bundle(path, "signature file") as f:
            out.append((path.name, f.read(limits.max_signature_file_bytes + 1)))
    return out


def presented_cosignatures(
    members: Sequence[tuple[str, bytes]],
    manifest: bytes,
    detached: Sequence[tuple[str, bytes]],
    limits: Limits,
) -> list[Cosignature]:
    """Every co-signature presented: the bundle's (or delta's) members, then each detached
    file's, parsed against ``manifest``'s exact bytes."""
    found = [Cosignature(kid, sig, cosignature_member(kid)) for kid, sig in members]
    for name, data in detached:
        found.extend(parse_signature_file(data, manifest, name, limits))
    return found


def _open_checked(
    f: BinaryIO,
    inputs: TrustInputs,
    now: int,
    limits: Limits,
    progress: Progress,
    after_manifest: Callable[[Verified], None] | None = None,
) -> Opened:
    """Signatures, manifest, trust policy and payload hash: everything before decompressing
    a byte.

    ``after_manifest`` runs once the signed manifest is verified, before the payload is
    hashed (unpack's free-space preflight: refuse early, on sizes that are signed).
    """
    outer = read_outer(f, limits)
    verified = inputs.verify(
        outer.manifest, outer.signature, outer.cosignatures, now=now, limits=limits
    )
    outer.check_times(verified.manifest.created)
    if after_manifest is not None:
        after_manifest(verified)
    _check_payload(f, outer, verified.manifest, progress)
    return Opened(verified=verified, outer=outer)


def _check_payload(f: BinaryIO, outer: OuterBundle, manifest: Manifest, progress: Progress) -> None:
    """The payload's size and sha256 against the manifest, before decompressing a byte."""
    info = manifest.payload
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


def _members(
    f: BinaryIO, opened: Opened, limits: Limits
) -> Iterator[tuple[FileEntry, Iterator[bytes]]]:
    """Every payload member, admitted against the manifest, with its data chunks.

    The caller must hash the chunks and call ``MemberTracker.check_content``; after the last
    member this checks that nothing is missing and the compressed bytes did not change.
    """
    manifest = opened.manifest
    tracker = MemberTracker(expected=manifest.file_map(), created=manifest.created, limits=limits)
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
    policy: Path | None = None,
    signature_files: Sequence[Path] | None = None,
) -> Verified:
    """Verify the signatures, the manifest and the payload hash; decompress nothing.

    ``policy`` (a trust policy file) replaces ``trust``; ``signature_files`` are detached
    co-signature files (default: ``BUNDLE.sig`` when it exists).

    Raises:
        BundleRejected subclasses (exit 3) for every failed check.
        PolicyError: the policy file cannot be used (exit 2).
    """
    inputs = TrustInputs(trust, policy, read_detached(bundle, signature_files, limits))
    with open_bundle(bundle, trust=inputs.packer_key_files()) as f:
        return _open_checked(f, inputs, _now(now), limits, NullProgress()).verified


def verify(
    bundle: Path,
    trust: Sequence[Path],
    *,
    now: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
    policy: Path | None = None,
    signature_files: Sequence[Path] | None = None,
    stream: BinaryIO | None = None,
) -> Verified:
    """Full verification of every check `unpack` makes; writes nothing. (For a delta: what
    can be checked without DEST, :func:`bundler.verify.delta.verify_delta`.)

    ``policy`` and ``signature_files`` as for ``open_verified``. ``stream`` is ``bundle``
    already opened (a split bundle's parts, checked as they arrived); it is closed here.

    Raises:
        BundleRejected subclasses (exit 3) for every failed check.
        PolicyError: the policy file cannot be used (exit 2).
    """
    progress = progress or NullProgress()
    if is_delta(bundle):
        from .delta import verify_delta  # delta.py builds on this module's stage machinery

        return verify_delta(
            bundle,
            trust,
            now=now,
            limits=limits,
            progress=progress,
            policy=policy,
            signature_files=signature_files,
        )
    inputs = TrustInputs(trust, policy, read_detached(bundle, signature_files, limits))
    source = stream if stream is not None else open_bundle(bundle, trust=inputs.packer_key_files())
    with source as f:
        opened = _open_checked(f, inputs, _now(now), limits, progress)
        progress.start("verifying files", opened.manifest.payload.unpacked_size)
        # Hash-only jobs: the pool hashes while this thread parses and the reader's thread
        # decompresses ahead.
        run_members(
            _members(f, opened, limits),
            lambda pool, entry, chunks: feed(pool, entry, None, chunks, progress),
        )
        progress.finish()
        return opened.verified


@dataclass(frozen=True)
class Member:
    """One payload member read from a bundle, hashed against its manifest entry."""

    manifest: Manifest
    data: bytes
    verified: bool  # the manifest's signature verified with a trusted key


def read_member(
    bundle: Path,
    path: str,
    trust: Sequence[Path] = (),
    *,
    max_bytes: int,
    now: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Member:
    """The bytes of payload member ``path``, streamed out of the bundle; writes nothing.

    With ``trust``: every check `verify` makes before decompression (signature, manifest,
    expiry, payload sha256). Without: the manifest is parsed strictly but its signature is
    NOT checked (``verified`` is False), and the payload's sha256 is still compared with it
    before decompressing. Either way the members before ``path`` are admitted against the
    manifest's rules as `verify` admits them, and the member's bytes must match its listed
    sha256 before they are returned. Decompression stops at the member.

    Raises:
        BundleError: the manifest lists no such member (e.g. a bundle from before the member
            existed); ResourceLimitError: it is larger than ``max_bytes``; BundleRejected
            subclasses (exit 3) for every failed check.
    """
    with open_bundle(bundle) as f:
        if trust:
            inputs = TrustInputs(trust=tuple(trust), detached=read_detached(bundle, None, limits))
            opened = _open_checked(f, inputs, _now(now), limits, NullProgress())
            manifest, outer = opened.manifest, opened.outer
        else:
            outer = read_outer(f, limits)
            manifest = parse_manifest(outer.manifest, limits)
            outer.check_times(manifest.created)
            _check_payload(f, outer, manifest, NullProgress())
        entries = manifest.file_map()
        if path not in entries:
            raise BundleError(
                f"bundle {bundle} has no {path} (packed before it was added to the format)",
                remedy="pack it again with this version of airgap",
            )
        if entries[path].size > max_bytes:
            raise ResourceLimitError(
                f"{entries[path].size} bytes, over the limit of {max_bytes}", member=path
            )
        tracker = MemberTracker(expected=entries, created=manifest.created, limits=limits)
        limit = decompressed_limit(manifest.payload.unpacked_size, manifest.payload.file_count)
        reader = PayloadReader(f, outer.payload_offset, outer.payload_size, limit, limits)
        # A generator: closed explicitly below, which stops the decompressing thread.
        members = cast("Generator[tuple[Header, Iterator[bytes]], None, None]", reader.members())
        try:
            for header, chunks in members:
                entry = tracker.admit(header)
                if entry.path != path:
                    for _chunk in chunks:
                        pass
                    continue
                data = b"".join(chunks)
                MemberTracker.check_content(entry, hashlib.sha256(data).hexdigest())
                return Member(manifest=manifest, data=data, verified=bool(trust))
        finally:
            members.close()
        tracker.finish()  # unreachable for a listed member: names the one that is missing
        raise IntegrityError("listed in the manifest but missing", member=path)


# ---- unpacking --------------------------------------------------------------------------


def read_installed(dest: Path, limits: Limits = DEFAULT_LIMITS) -> Manifest | None:
    """The manifest of the bundle already unpacked at ``dest``, or None if there is none."""
    path = dest / STATE_MANIFEST
    shown = escape(str(path))
    remedy = f"remove {escape(str(dest))} if it is not needed, then unpack again"
    try:
        # A FIFO or device planted as the state file is refused, never read (it would hang).
        data = read_regular(
            path,
            lambda reason: BundleError(f"{shown} {reason}", remedy=remedy),
            limits.max_manifest_bytes,
        )
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BundleError(f"cannot read {shown}: {e.strerror}") from e
    try:
        return parse_manifest(data, limits)
    except BundleError as e:
        raise BundleError(f"{shown} is not a valid manifest ({e.message})", remedy=remedy) from e


@contextlib.contextmanager
def locked(dest: Path) -> Iterator[None]:
    """An exclusive lock on DEST's parent folder, so two unpacks (or delta applies) never
    interleave; taken, it removes the stages a killed run left for ``dest``."""
    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Holding the lock, any stage for this DEST is left over from a killed run.
        for stale in dest.parent.glob(f".{glob.escape(dest.name)}{_STAGE_TAG}*"):
            _remove(stale)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


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


class Stage:
    """A fresh staging folder beside DEST that only we have touched: folders made here in
    payload order, files created and filled by a writer pool, then synced (unless
    ``sync`` is False) and swapped in with one rename. Made by ``staging``."""

    def __init__(self, root: Path, *, sync: bool = True) -> None:
        self.root = root
        self.sync = sync
        self._root_str = os.fspath(root)
        self._dirs: set[str] = {""}
        self.pool: WriterPool | None = None  # set while members are written

    def mkdirs(self, rel_dir: str) -> None:
        """Make ``rel_dir`` and its parents (each new: mkdir refuses what exists), 0755."""
        if rel_dir in self._dirs:
            return
        parent = rel_dir.rpartition("/")[0]
        self.mkdirs(parent)
        path = self.root / rel_dir
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)  # independent of the umask
        self._dirs.add(rel_dir)

    def write(self, entry: FileEntry, chunks: Iterator[bytes], progress: Progress) -> None:
        """Make the member's folders here, in payload order; the pool creates (O_EXCL,
        O_NOFOLLOW), writes and checks its file."""
        if self.pool is None:
            raise RuntimeError("Stage.write outside Stage.write_members")
        # Before the job is queued: a worker never meets a folder that is not there yet.
        self.mkdirs(entry.path.rpartition("/")[0])
        feed(self.pool, entry, f"{self._root_str}/{entry.path}", chunks, progress)

    def write_members(
        self, members: Iterator[tuple[FileEntry, Iterator[bytes]]], progress: Progress
    ) -> None:
        """Every member into the stage; returns once all are written and their hashes
        matched (the earliest failure in payload order is raised otherwise)."""

        def place(pool: WriterPool, entry: FileEntry, chunks: Iterator[bytes]) -> None:
            self.pool = pool
            self.write(entry, chunks, progress)

        # With sync, the disk starts writing while we decompress, not at the final syncfs.
        writeback = Writeback(self._root_str) if self.sync else None
        try:
            run_members(members, place, writeback=writeback)
        finally:
            self.pool = None
            if writeback is not None:
                writeback.close()

    def install(self, dest: Path) -> None:
        """Sync the stage (unless ``sync`` is False) and swap it in for ``dest``; the old
        tree ends up at the stage path, which ``staging`` removes."""
        if self.sync:
            _syncfs(self.root)
        _install(self.root, dest, sync=self.sync)

    def write_state(self, verified: Verified) -> None:
        self.mkdirs(STATE_DIR)
        state = [
            (STATE_MANIFEST, verified.manifest_bytes),
            (STATE_SIGNATURE, verified.signature),
            (STATE_SIGNER, public_key_pem(verified.key.public)),
        ]
        if verified.cosignatures:
            # Every co-signature presented, whatever it was here: a later re-check with
            # another policy verifies them again (one per key: the first one seen).
            # For a key presented twice, a signature that verified here wins.
            first: dict[str, bytes] = {}
            checks = verified.signatures[1:] or (None,) * len(verified.cosignatures)
            for co, check in zip(verified.cosignatures, checks, strict=True):
                if check is not None and check.status in ("valid", "duplicate"):
                    first.setdefault(co.key_id, co.signature)
            for co in verified.cosignatures:
                first.setdefault(co.key_id, co.signature)
            state.append(
                (STATE_COSIGNATURES, render_signature_file(verified.manifest_bytes, first.items()))
            )
        for rel, data in state:
            path = self.root / rel
            path.write_bytes(data)
            os.chmod(path, 0o644)


@contextlib.contextmanager
def staging(dest: Path, *, sync: bool = True) -> Iterator[Stage]:
    """A new stage beside ``dest`` (same filesystem), removed on leaving, whatever happens:
    after ``Stage.install`` it holds the old tree, on a failure the partial new one. Call
    with ``locked(dest)`` held.

    Raises:
        BundleError: the stage cannot be made or written (an OSError inside the block).
    """
    root: Path | None = None
    try:
        root = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_STAGE_TAG}", dir=dest.parent))
        os.chmod(root, 0o755)
        yield Stage(root, sync=sync)
    except OSError as e:
        raise BundleError(f"cannot write under {dest.parent}: {e.strerror}") from e
    finally:
        if root is not None:
            _remove(root)


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
    policy: Path | None = None,
    signature_files: Sequence[Path] | None = None,
    sync: bool = True,
) -> Verified:
    """Verify ``bundle`` and install its payload at ``dest``, all or nothing.

    ``policy`` and ``signature_files`` as for ``open_verified``; the co-signatures are kept
    in ``DEST/.airgap/cosignatures.json`` for later re-checks.

    Members are written into a staging folder beside ``dest`` (same filesystem), synced, and
    swapped in with one rename; on any failure the stage is removed and ``dest`` is exactly as
    it was. A stage left by a killed run is removed by the next run. ``sync=False`` skips the
    syncfs and the fsync of the parent (tmpfs, scratch): still all or nothing if the process
    dies, but after a power loss the new DEST may hold truncated or empty files.

    ``before_write`` is called with the verified manifest before anything is written (the
    CLI's host check); whatever it raises stops the unpack with ``dest`` untouched.

    Raises:
        BundleRejected subclasses (exit 3): any failed check, including rollback.
        PolicyError: the policy file cannot be used (exit 2).
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
            policy=policy,
            signature_files=signature_files,
            sync=sync,
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
    with locked(dest):
        installed = read_installed(dest, limits) if dest.exists() else None
        if dest.exists() and installed is None and any(dest.iterdir()):
            raise BundleError(
                f"{dest} is not empty and was not made by `airgap unpack`",
                remedy="choose a new or empty destination folder",
            )
        inputs = TrustInputs(trust, policy, read_detached(bundle, signature_files, limits))
        with open_bundle(bundle, trust=inputs.packer_key_files()) as f:
            opened = _open_checked(
                f, inputs, _now(now), limits, progress, lambda v: _require_space(parent, v)
            )
            if installed is not None and installed.name == opened.manifest.name:
                check_rollback(opened.manifest, installed, allow_downgrade=allow_downgrade)
            if before_write is not None:
                before_write(opened.manifest)
            with staging(dest, sync=sync) as stage:
                progress.start("unpacking", opened.manifest.payload.unpacked_size)
                stage.write_members(_members(f, opened, limits), progress)
                progress.finish()
                stage.write_state(opened.verified)
                stage.install(dest)
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


def _install(stage_root: Path, dest: Path, *, sync: bool) -> None:
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
    if not sync:
        return
    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
