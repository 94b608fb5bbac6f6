"""Verify a delta bundle, and apply it: DEST must hold exactly its base; the new tree is built
in a stage from the base's files (reflink, hardlink or copy) plus the carried ones, checked
against the new signed manifest, and swapped in with unpack's machinery."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

from ..errors import BundleError, DeltaError, IntegrityError, TreeModifiedError
from ..formats.archive import PayloadReader, decompressed_limit, hash_region
from ..formats.delta import (
    DeltaDescriptor,
    DeltaOuter,
    check_binding,
    manifest_digest,
    parse_descriptor,
    read_delta_outer,
)
from ..formats.limits import DEFAULT_LIMITS, Limits
from ..formats.manifest import FileEntry, Manifest
from ..formats.source import open_bundle
from ..layout import (
    OUTER_DELTA_SIGNATURE,
    OUTER_PAYLOAD,
    STATE_MANIFEST,
)
from ..preflight import delta_need, free_space, require
from ..progress import NullProgress, Progress
from .policy import MemberTracker, Verified, check_rollback
from .tree import check_unpacked, open_regular
from .trustpolicy import check_packer_signature
from .unpack import TrustInputs, locked, read_detached, read_installed, staging

_FICLONE: Final = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


@dataclass(frozen=True, kw_only=True)
class VerifiedDelta(Verified):
    """A delta whose manifest, descriptor and payload verified (and, once applied, how)."""

    descriptor: DeltaDescriptor
    carried: tuple[FileEntry, ...]
    # How each reused file reached the stage: counts of "reflink", "hardlink", "copy".
    reused: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Opened:
    verified: VerifiedDelta
    outer: DeltaOuter


def _fields(v: Verified) -> dict[str, Any]:
    """A ``Verified``'s fields, to carry all of them (the trust decision too) into a delta's."""
    return {f.name: getattr(v, f.name) for f in dataclasses.fields(Verified)}


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


def _open_checked(
    f: BinaryIO,
    inputs: TrustInputs,
    now: int,
    limits: Limits,
    progress: Progress,
    after_manifest: Callable[[VerifiedDelta], None] | None = None,
) -> _Opened:
    """Both signatures, the manifest, the descriptor's binding and the payload hash."""
    outer = read_delta_outer(f, limits)
    # The new manifest is trusted exactly as in a full bundle: the same keys or policy, the
    # same co-signatures (members and detached files), the same expiry rule.
    v = inputs.verify(outer.manifest, outer.signature, outer.cosignatures, now=now, limits=limits)
    # The descriptor carries its packer's signature alone: the key the manifest names.
    check_packer_signature(
        inputs.trust_policy,
        v.manifest.signer,
        outer.descriptor,
        outer.descriptor_signature,
        member=OUTER_DELTA_SIGNATURE,
    )
    descriptor = parse_descriptor(outer.descriptor, limits)
    carried = check_binding(descriptor, outer.manifest, v.manifest)
    verified = VerifiedDelta(**_fields(v), descriptor=descriptor, carried=carried)
    if after_manifest is not None:
        after_manifest(verified)
    if outer.payload_size != descriptor.payload.size:
        raise IntegrityError(
            f"payload is {outer.payload_size} bytes, delta.json says {descriptor.payload.size}",
            member=OUTER_PAYLOAD,
        )
    progress.start("hashing delta payload", outer.payload_size)
    if hash_region(f, outer.payload_offset, outer.payload_size) != descriptor.payload.sha256:
        raise IntegrityError("sha256 differs from the signed delta.json", member=OUTER_PAYLOAD)
    progress.finish()
    return _Opened(verified, outer)


def _members(
    f: BinaryIO, opened: _Opened, limits: Limits
) -> Iterator[tuple[FileEntry, Iterator[bytes]]]:
    """The carried members, admitted against the new manifest's entries for them only."""
    d = opened.verified.descriptor
    tracker = MemberTracker(
        expected={e.path: e for e in opened.verified.carried},
        created=opened.verified.manifest.created,
        limits=limits,
    )
    limit = decompressed_limit(d.payload.unpacked_size, d.payload.file_count)
    outer = opened.outer
    reader = PayloadReader(f, outer.payload_offset, outer.payload_size, limit, limits)
    for header, chunks in reader.members():
        yield tracker.admit(header), chunks
    tracker.finish()
    reader.finish(d.payload.sha256)


def verify_delta(
    bundle: Path,
    trust: Sequence[Path],
    *,
    now: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
    policy: Path | None = None,
    signature_files: Sequence[Path] | None = None,
) -> VerifiedDelta:
    """Everything that can be checked without DEST: both signatures, the descriptor, and
    every carried file against the new manifest. Writes nothing.

    ``policy`` and ``signature_files`` as for ``unpack.open_verified``.

    Raises:
        BundleRejected subclasses (exit 3) for every failed check.
        PolicyError: the policy file cannot be used (exit 2).
    """
    progress = progress or NullProgress()
    inputs = TrustInputs(trust, policy, read_detached(bundle, signature_files, limits))
    with open_bundle(bundle) as f:
        opened = _open_checked(f, inputs, _now(now), limits, progress)
        progress.start("verifying carried files", opened.verified.descriptor.payload.unpacked_size)
        for entry, chunks in _members(f, opened, limits):
            digest = hashlib.sha256()
            for chunk in chunks:
                digest.update(chunk)
                progress.advance(len(chunk))
            MemberTracker.check_content(entry, digest.hexdigest())
        progress.finish()
        return opened.verified


# ---- applying ---------------------------------------------------------------------------


def require_base(dest: Path, installed: Manifest | None, d: DeltaDescriptor) -> None:
    """DEST's stored manifest must be the delta's base, byte for byte.

    Raises:
        DeltaError: no bundle there, another bundle, or another version of it.
    """
    needs = f"this delta needs {d.base.name} {d.base.version}"
    if installed is None:
        raise DeltaError(
            f"{dest} holds no unpacked bundle; {needs}",
            member=STATE_MANIFEST,
            remedy=f"unpack the full {d.base.name} {d.base.version} bundle there first",
        )
    if installed.name != d.base.name:
        raise DeltaError(
            f"{dest} holds {installed.name} {installed.version}, another bundle; {needs}",
            member=STATE_MANIFEST,
            remedy="apply the delta to the DEST of the bundle it was made for",
        )
    try:
        held = manifest_digest((dest / STATE_MANIFEST).read_bytes())
    except OSError as e:
        raise BundleError(f"cannot read {dest / STATE_MANIFEST}: {e.strerror}") from e
    if held != d.base.manifest_sha256:
        raise DeltaError(
            f"{dest} holds {installed.name} {installed.version} (manifest sha256 {held[:16]}...)"
            f", not the base: {needs} (manifest sha256 {d.base.manifest_sha256[:16]}...)",
            member=STATE_MANIFEST,
            remedy=f"unpack the full {d.name} {d.version} bundle instead, or ask for a delta "
            f"from {installed.version}",
        )


def _check_base_tree(dest: Path, d: DeltaDescriptor, limits: Limits) -> Manifest:
    """Every file of DEST against its stored manifest (tree.check_unpacked).

    Raises:
        DeltaError: naming the first file that differs.
    """
    try:
        return check_unpacked(dest, limits=limits)
    except TreeModifiedError as e:
        raise DeltaError(
            f"DEST no longer holds exactly {d.base.name} {d.base.version}: "
            + e.message.split(": ", 2)[-1],
            member=e.member,
            remedy="unpack the full bundle instead (a delta applies only to an intact base)",
        ) from e


def _reuse(src: Path, dst: str, entry: FileEntry, src_mode: int) -> str:
    """Put the base's copy of ``entry`` at ``dst`` (new); return how.

    A reflink shares blocks copy-on-write, so the new file is independent. A hardlink shares
    the inode with the old DEST: only when the modes match (a chmod would change the old
    tree), and safe because nothing writes to the old tree again (it is removed after the
    swap, which only unlinks). Otherwise a plain copy.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open_regular(src, entry.path) as s:
        fd = os.open(dst, flags, 0o600)
        try:
            try:
                fcntl.ioctl(fd, _FICLONE, s.fileno())
                os.fchmod(fd, entry.mode)
                return "reflink"
            except OSError as e:
                if e.errno not in (
                    errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                    errno.EPERM, errno.EBADF,
                ):  # fmt: skip
                    raise
            if src_mode == entry.mode:
                os.close(fd)
                fd = -1
                os.unlink(dst)
                try:
                    os.link(src, dst, follow_symlinks=False)
                    return "hardlink"
                except OSError:
                    fd = os.open(dst, flags, 0o600)
            with os.fdopen(os.dup(fd), "wb") as out:
                shutil.copyfileobj(s, out, 1 << 20)
            os.fchmod(fd, entry.mode)
            return "copy"
        finally:
            if fd >= 0:
                os.close(fd)


def _check_staged(root: Path, entry: FileEntry) -> None:
    """A reused file in the stage against the new manifest: mode, size, sha256."""
    with open_regular(root / entry.path, entry.path) as f:
        st = os.fstat(f.fileno())
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if stat.S_IMODE(st.st_mode) != entry.mode or st.st_size != entry.size:
        raise IntegrityError("mode or size differs from the new manifest", member=entry.path)
    MemberTracker.check_content(entry, digest)


def apply_delta(
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
) -> VerifiedDelta:
    """Apply the delta ``bundle`` to ``dest``, which must hold exactly its base; all or nothing.

    ``policy`` and ``signature_files`` as for ``unpack.unpack``; the co-signatures are kept
    in DEST's state as a full unpack keeps them.

    The same checks as a full unpack (signatures, expiry, rollback, host check via
    ``before_write``; free space for what the delta writes), plus: DEST's stored manifest is
    the base named in the signed descriptor, and every file of DEST still matches it. The
    new tree is staged beside DEST, every file is checked against the new manifest, then it
    is swapped in with one rename. ``sync`` as for ``unpack``.

    Raises:
        DeltaError (exit 3): DEST is not the base, or was changed since it was unpacked.
        BundleRejected subclasses (exit 3): any other failed check, including rollback.
        InsufficientSpaceError: the new tree does not fit beside ``dest``.
        BundleError: ``dest`` cannot be read or written.
    """
    progress = progress or NullProgress()
    dest = Path(os.path.abspath(dest))
    parent = dest.parent
    if dest.is_symlink():
        raise BundleError(
            f"{dest} is a symbolic link",
            remedy=f"pass the real folder instead: {os.path.realpath(dest)}",
        )
    if not parent.is_dir() or (dest.exists() and not dest.is_dir()):
        raise BundleError(f"{dest} is not a folder an earlier unpack made")
    with locked(dest):
        installed = read_installed(dest, limits) if dest.is_dir() else None

        def before_payload(v: VerifiedDelta) -> None:
            # DEST's own checks come before the payload is hashed: a wrong DEST is refused
            # at once, however large the delta.
            require_base(dest, installed, v.descriptor)
            assert installed is not None  # require_base refused otherwise
            check_rollback(v.manifest, installed, allow_downgrade=allow_downgrade)
            _require_delta_space(parent, v, installed)

        inputs = TrustInputs(trust, policy, read_detached(bundle, signature_files, limits))
        with open_bundle(bundle) as f:
            opened = _open_checked(f, inputs, _now(now), limits, progress, before_payload)
            verified = opened.verified
            d = verified.descriptor
            progress.start("checking DEST against its manifest")
            base = _check_base_tree(dest, d, limits)
            progress.finish()
            if before_write is not None:
                before_write(verified.manifest)
            reused = _build_and_install(f, opened, dest, base, limits, progress, sync)
        return dataclasses.replace(verified, reused=reused)


def _require_delta_space(parent: Path, v: VerifiedDelta, base: Manifest) -> None:
    """The free-space preflight of a delta: only what applying it allocates.

    That is the carried files, copies of the reused files whose mode changes (never
    hardlinked), the state files, and an inode for every file and folder (a reflink or a
    hardlink needs no data blocks). ``base`` is DEST's stored manifest, already shown to be
    the signed base. If a filesystem refuses both reflinks and hardlinks, the copies may
    still run out of room: that fails with nothing changed, like any failed write.

    Raises:
        InsufficientSpaceError: naming the bytes (or inodes) needed and free.
    """
    try:
        block = free_space(parent).block_size
    except OSError as e:
        raise BundleError(f"cannot ask {parent} for its free space: {e.strerror}") from e
    carried = {e.path for e in v.carried}
    require(
        parent,
        delta_need(v.manifest, carried, base, len(v.manifest_bytes), block),
        doing=f"apply the delta {v.manifest.name} {v.descriptor.base.version} -> "
        f"{v.manifest.version}",
        remedy="free space there; the old DEST is kept until the new tree is complete, and "
        "files the delta does not carry are linked from it, so only the carried files (and "
        "copies of files whose mode changed) need room",
    )


def _build_and_install(
    f: BinaryIO,
    opened: _Opened,
    dest: Path,
    base: Manifest,
    limits: Limits,
    progress: Progress,
    sync: bool,
) -> dict[str, int]:
    verified = opened.verified
    carried = {e.path for e in verified.carried}
    by_content = {(e.sha256, e.size): e for e in base.files}
    reused = [e for e in verified.manifest.files if e.path not in carried]
    counts: dict[str, int] = {}
    with staging(dest, sync=sync) as stage:
        progress.start("applying delta", verified.manifest.payload.unpacked_size)
        for entry in reused:
            source = by_content.get((entry.sha256, entry.size))
            if source is None:
                raise DeltaError(
                    "neither carried by the delta nor held by the base", member=entry.path
                )
            stage.mkdirs(entry.path.rpartition("/")[0])
            how = _reuse(dest / source.path, f"{stage.root}/{entry.path}", entry, source.mode)
            counts[how] = counts.get(how, 0) + 1
        # The carried files go through unpack's own write loop and writer pool: admitted
        # here in order, created, written and hashed by the pool; the earliest failure wins.
        stage.write_members(_members(f, opened, limits), progress)
        # Every reused file is read again where it now is: the stage is what gets installed.
        for entry in reused:
            _check_staged(stage.root, entry)
            progress.advance(entry.size)
        progress.finish()
        stage.write_state(verified)
        stage.install(dest)
    return counts
