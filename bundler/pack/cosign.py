"""Co-signing an existing bundle (revision 1.4): one more signature over the same manifest
bytes, as an outer member or in a detached file, without repacking anything."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import BundleError, IntegrityError, ResourceLimitError, UsageError
from ..formats.archive import hash_region, read_outer, write_cosignatures
from ..formats.cosign import parse_signature_file, render_signature_file
from ..formats.delta import check_binding, first_member, parse_descriptor, read_delta_outer
from ..formats.limits import DEFAULT_LIMITS, Limits
from ..formats.manifest import Manifest, PayloadInfo, parse_manifest
from ..formats.signing import key_id, load_private_key, sign
from ..formats.source import open_bundle
from ..layout import DETACHED_SUFFIX, OUTER_DELTA, OUTER_PAYLOAD
from ..progress import NullProgress, Progress


@dataclass(frozen=True)
class SignResult:
    """What `airgap sign` did: which file it wrote (or left alone) for which key."""

    bundle: Path
    written: Path  # the bundle itself, or the detached signature file
    key_id: str
    changed: bool  # False: that key's signature was already there, byte for byte
    detached: bool
    cosignatures: int  # co-signatures in ``written`` now (the primary one not counted)
    manifest: Manifest

    def to_json_dict(self) -> dict[str, object]:
        return {
            "ok": True,
            "bundle": str(self.bundle),
            "written": str(self.written),
            "key_id": self.key_id,
            "changed": self.changed,
            "detached": self.detached,
            "cosignatures": self.cosignatures,
            "name": self.manifest.name,
            "version": self.manifest.version,
        }


def cosign(
    bundle: Path,
    key: Path,
    passphrase: bytes | None = None,
    *,
    detached: bool = False,
    out: Path | None = None,
    limits: Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> SignResult:
    """Add ``key``'s signature over the bundle's manifest bytes.

    The bundle is checked first (outer structure, strict manifest, payload size and sha256),
    so nobody co-signs a broken bundle; whether its first signer is trusted is for
    ``airgap verify`` to say. In the bundle, the payload, manifest and signature members keep
    their bytes and the co-signature members after them are rewritten sorted by key id,
    into a temporary file that replaces the bundle in one rename. With ``detached``, the
    signature goes into ``out`` (default ``BUNDLE.sig``) instead, merged with what it holds.
    Signing again with the same key changes nothing (Ed25519 is deterministic).

    Raises:
        KeyFileError: the key cannot be loaded.
        BundleRejected subclasses: the bundle (or the detached file) is malformed.
        ResourceLimitError: the bundle already holds the most co-signatures allowed.
        BundleError: a file cannot be written.
        UsageError: ``out`` is the bundle itself.
    """
    progress = progress or NullProgress()
    private = load_private_key(key, passphrase)
    # The real file: a link to the bundle stays a link, and the bundle it names is signed.
    bundle = Path(os.path.realpath(bundle))
    target = None
    if detached:
        target = Path(os.path.realpath(out or bundle.with_name(bundle.name + DETACHED_SUFFIX)))
        if target == bundle:
            raise UsageError(
                f"--out {out} is the bundle itself",
                remedy="name a new .sig file, or leave out --out",
            )
    with _locked((target or bundle).parent):
        return _cosign(bundle, private, target, limits, progress)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the folder, so two signers at once never lose a signature (each
    reads, adds and renames over; the second waits for the first's rename)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise BundleError(f"cannot open {folder}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _cosign(
    bundle: Path,
    private: Ed25519PrivateKey,
    target: Path | None,
    limits: Limits,
    progress: Progress,
) -> SignResult:
    kid = key_id(private.public_key())
    with open_bundle(bundle) as f:
        outer = _read_signed(f, limits, progress)
        manifest = outer.parsed
        signature = sign(private, outer.manifest)
        if target is not None:
            return _sign_detached(bundle, target, manifest, outer.manifest, kid, signature, limits)
        if kid == manifest.signer and signature == outer.signature:
            # The first signature is this key's already (Ed25519 is deterministic, so the
            # same bytes): a co-signature would count nothing. A damaged one gets one.
            return SignResult(bundle, bundle, kid, False, False, len(outer.cosignatures), manifest)
        existing = dict(outer.cosignatures)
        if existing.get(kid) == signature:
            return SignResult(bundle, bundle, kid, False, False, len(existing), manifest)
        # A different one under this key id is not its signature: replace it.
        existing[kid] = signature
        if len(existing) > limits.max_cosignatures:
            raise ResourceLimitError(
                f"the bundle already holds {limits.max_cosignatures} co-signatures",
                member=str(bundle),
                remedy="add further signatures with --detached",
            )

        def write(tmp: BinaryIO) -> None:
            progress.start("copying bundle", outer.signed_end)
            _copy_prefix(f, tmp, outer.signed_end, progress)
            write_cosignatures(tmp, manifest.created, sorted(existing.items()))
            progress.finish()

        _replace_atomically(bundle, write)
        return SignResult(bundle, bundle, kid, True, False, len(existing), manifest)


@dataclass(frozen=True)
class _Signed:
    """What co-signing needs of a full bundle or a delta (docs/format.md §6.1, §13.1)."""

    manifest: bytes
    parsed: Manifest
    signature: bytes
    cosignatures: tuple[tuple[str, bytes], ...]
    signed_end: int  # where the co-signature members begin


def _read_signed(f: BinaryIO, limits: Limits, progress: Progress) -> _Signed:
    """The outer structure, the strict manifest and the payload's size and sha256 (for a
    delta: the descriptor, its binding to the manifest, and its payload), before signing.

    Raises:
        BundleRejected subclasses: the bundle or delta is malformed or damaged.
    """
    if first_member(f) == OUTER_DELTA:
        delta = read_delta_outer(f, limits)
        manifest = parse_manifest(delta.manifest, limits)
        descriptor = parse_descriptor(delta.descriptor, limits)
        check_binding(descriptor, delta.manifest, manifest)
        _check_payload(f, delta.payload_offset, delta.payload_size, descriptor.payload, progress)
        return _Signed(
            delta.manifest, manifest, delta.signature, delta.cosignatures, delta.signed_end
        )
    outer = read_outer(f, limits)
    manifest = parse_manifest(outer.manifest, limits)
    _check_payload(f, outer.payload_offset, outer.payload_size, manifest.payload, progress)
    return _Signed(outer.manifest, manifest, outer.signature, outer.cosignatures, outer.signed_end)


def _check_payload(
    f: BinaryIO, offset: int, size: int, payload: PayloadInfo, progress: Progress
) -> None:
    if size != payload.size:
        raise IntegrityError(
            f"payload is {size} bytes, the manifest says {payload.size}",
            member=OUTER_PAYLOAD,
        )
    progress.start("hashing payload", size)
    if hash_region(f, offset, size) != payload.sha256:
        raise IntegrityError(
            "sha256 differs from the manifest; this bundle is damaged, do not sign it",
            member=OUTER_PAYLOAD,
        )
    progress.finish()


def _sign_detached(
    bundle: Path,
    target: Path,
    manifest: Manifest,
    manifest_bytes: bytes,
    kid: str,
    signature: bytes,
    limits: Limits,
) -> SignResult:
    existing: dict[str, bytes] = {}
    if target.exists():
        with open_bundle(target, "signature file") as f:
            data = f.read(limits.max_signature_file_bytes + 1)
        for co in parse_signature_file(data, manifest_bytes, target.name, limits):
            existing[co.key_id] = co.signature
    if existing.get(kid) == signature:
        return SignResult(bundle, target, kid, False, True, len(existing), manifest)
    existing[kid] = signature
    if len(existing) > limits.max_cosignatures:
        raise ResourceLimitError(
            f"the file already holds {limits.max_cosignatures} signatures",
            member=str(target),
            remedy="write another file with --out",
        )
    data = render_signature_file(manifest_bytes, existing.items())
    _replace_atomically(target, lambda tmp: tmp.write(data))
    return SignResult(bundle, target, kid, True, True, len(existing), manifest)


def _copy_prefix(src: BinaryIO, dst: BinaryIO, size: int, progress: Progress) -> None:
    """The first ``size`` bytes of ``src``, verbatim (in-kernel where the OS can)."""
    src.seek(0)
    dst.flush()
    done = 0
    with contextlib.suppress(OSError):
        while done < size:
            n = os.copy_file_range(src.fileno(), dst.fileno(), size - done, done, done)
            if n == 0:
                break
            done += n
            progress.advance(n)
    if done < size:  # no copy_file_range here (or across filesystems): plain copying
        src.seek(done)
        dst.seek(done)
        remaining = size - done
        while remaining:
            chunk = src.read(min(1 << 20, remaining))
            if not chunk:
                raise IntegrityError("bundle is truncated", member="bundle")
            dst.write(chunk)
            remaining -= len(chunk)
            progress.advance(len(chunk))
    dst.seek(size)


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a temporary file beside ``path`` with ``write(file)``, sync it, rename it over.

    Readers see the old file or the complete new one, never a half-written one.

    Raises:
        BundleError: the folder or the file cannot be written.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise BundleError(
            f"cannot write beside {path}: {e.strerror}",
            remedy="sign a copy on writable storage, or use --detached --out FILE",
        ) from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise BundleError(
            f"cannot write {path}: {e.strerror}",
            remedy="sign a copy on writable storage, or use --detached --out FILE",
        ) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
