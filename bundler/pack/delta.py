"""Make a signed delta from two full bundles: the new manifest as it is, the files the old
bundle lacks, and a descriptor binding them to the old manifest (docs/format.md §13)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import BundleError, DeltaError, IntegrityError, KeyFileError, SignatureError
from ..formats.archive import (
    BundleWriter,
    OuterBundle,
    PayloadReader,
    decompressed_limit,
    hash_region,
    read_outer,
)
from ..formats.delta import (
    BaseRef,
    DeltaDescriptor,
    first_member,
    manifest_digest,
    plan_carried,
    write_delta_outer,
)
from ..formats.manifest import FileEntry, Manifest, PayloadInfo, parse_manifest
from ..formats.signing import TrustedKey, key_id, load_private_key, sign, verify_signature
from ..formats.source import open_bundle
from ..layout import OUTER_DELTA
from ..progress import NullProgress, Progress
from ..verify.policy import MemberTracker
from .assemble import _atomic_output


@dataclass(frozen=True)
class DeltaMade:
    """What :func:`make_delta` wrote."""

    descriptor: DeltaDescriptor
    manifest: Manifest
    carried: tuple[FileEntry, ...]
    size: int  # of the delta file


def _read_full(f: BinaryIO, bundle: Path, role: str) -> OuterBundle:
    if first_member(f) == OUTER_DELTA:
        raise DeltaError(
            f"{role} {bundle} is itself a delta",
            member=OUTER_DELTA,
            remedy="pass the full bundles of both versions (a delta is made from full ones)",
        )
    return read_outer(f)


def make_delta(
    old: Path,
    new: Path,
    out: Path,
    key: Path,
    *,
    passphrase: bytes | None = None,
    level: int = 3,
    threads: int = 0,
    progress: Progress | None = None,
) -> DeltaMade:
    """Write the delta that turns an unpacked ``old`` into ``new`` to ``out``.

    ``new`` must be signed by the private key in ``key`` (the delta re-uses its manifest and
    signature unchanged and signs the descriptor with the same key); ``old`` is only read for its
    manifest. Every carried file is re-hashed against ``new``'s manifest while it is copied.
    Same inputs give the same bytes.

    Raises:
        DeltaError: either bundle is a delta, or they are not two versions of one bundle.
        KeyFileError: the key cannot be loaded, or did not sign ``new``.
        IntegrityError and other BundleRejected: ``new`` is damaged.
        BundleError: a file cannot be read or ``out`` written.
    """
    progress = progress or NullProgress()
    private_key = load_private_key(key, passphrase)
    public = private_key.public_key()
    signer = TrustedKey(key_id=key_id(public), public=public, source=Path("--key"))
    with open_bundle(old) as f:
        old_outer = _read_full(f, old, "OLD")
    base = parse_manifest(old_outer.manifest)
    with open_bundle(new) as f:
        outer = _read_full(f, new, "NEW")
        try:
            verify_signature(outer.manifest, outer.signature, [signer], claimed_signer=None)
        except SignatureError as e:
            # The delta re-uses NEW's signature, so only NEW's own key may sign the delta.
            raise KeyFileError(
                f"NEW {new} is not signed by --key {key} ({signer.key_id[:16]}...)",
                remedy="pass the key that signed NEW (`airgap inspect NEW` shows its signer)",
            ) from e
        manifest = parse_manifest(outer.manifest)
        if manifest.signer != signer.key_id:
            raise IntegrityError("names another signer than the key that signs it", member="NEW")
        if manifest.name != base.name:
            raise DeltaError(
                f"OLD is {base.name} {base.version} and NEW is {manifest.name} "
                f"{manifest.version}: a delta joins two versions of one bundle",
                member="manifest.json",
            )
        carried = plan_carried(base, manifest)
        if outer.payload_size != manifest.payload.size or (
            hash_region(f, outer.payload_offset, outer.payload_size) != manifest.payload.sha256
        ):
            raise IntegrityError("NEW's payload differs from its signed manifest", member="NEW")
        return _write(
            out,
            f,
            outer,
            (manifest, base, old_outer.manifest),
            carried,
            private_key,
            level=level,
            threads=threads or (os.cpu_count() or 1),
            progress=progress,
        )


def _write(
    out: Path,
    f: BinaryIO,
    outer: OuterBundle,
    manifests: tuple[Manifest, Manifest, bytes],
    carried: tuple[FileEntry, ...],
    private_key: Ed25519PrivateKey,
    *,
    level: int,
    threads: int,
    progress: Progress,
) -> DeltaMade:
    manifest, base, base_bytes = manifests  # NEW's, OLD's, and OLD's exact bytes
    wanted = {e.path for e in carried}
    out = Path(os.path.abspath(out))
    with _spool(out) as spool:
        # The carried files are compressed into a spool first: the descriptor, which binds
        # the payload's digest, comes before the payload in the delta.
        writer = BundleWriter(spool, mtime=manifest.created, level=level, threads=threads)
        tracker = MemberTracker(expected=manifest.file_map(), created=manifest.created)
        limit = decompressed_limit(manifest.payload.unpacked_size, manifest.payload.file_count)
        reader = PayloadReader(f, outer.payload_offset, outer.payload_size, limit)
        progress.start("making delta", manifest.payload.unpacked_size)
        for header, chunks in reader.members():
            entry = tracker.admit(header)
            if entry.path in wanted:
                digest = writer.tar.add(
                    entry.path, entry.mode, entry.size, cast("BinaryIO", _Chunks(chunks))
                )
            else:
                h = hashlib.sha256()
                for chunk in chunks:
                    h.update(chunk)
                digest = h.hexdigest()
            MemberTracker.check_content(entry, digest)
            progress.advance(entry.size)
        tracker.finish()
        reader.finish(manifest.payload.sha256)
        stats = writer.finish_payload()
        progress.finish()
        descriptor = DeltaDescriptor(
            name=manifest.name,
            version=manifest.version,
            created=manifest.created,
            signer=manifest.signer,
            manifest_sha256=manifest_digest(outer.manifest),
            base=BaseRef(
                name=base.name, version=base.version, manifest_sha256=manifest_digest(base_bytes)
            ),
            payload=PayloadInfo(
                sha256=stats.sha256,
                size=stats.size,
                unpacked_size=sum(e.size for e in carried),
                file_count=len(carried),
            ),
            carried=tuple(e.path for e in carried),
        )
        data = descriptor.to_bytes()
        with _atomic_output(out) as fh:
            write_delta_outer(
                fh,
                mtime=manifest.created,
                descriptor=data,
                descriptor_signature=sign(private_key, data),
                payload_member=spool,
                manifest=outer.manifest,
                signature=outer.signature,
                # NEW's co-signatures are over the same manifest bytes: they hold for the
                # delta as they are (§13.1), so a co-signed NEW gives a co-signed delta.
                cosignatures=outer.cosignatures,
            )
    return DeltaMade(descriptor, manifest, carried, out.stat().st_size)


@contextlib.contextmanager
def _spool(out: Path) -> Iterator[BinaryIO]:
    """An anonymous temporary file beside ``out`` (same filesystem), gone when closed."""
    try:
        fd, name = tempfile.mkstemp(prefix=".airgap-delta-", dir=out.parent)
    except OSError as e:
        raise BundleError(f"cannot write beside {out}: {e.strerror}") from e
    os.unlink(name)  # anonymous from here on: nothing is left behind, even after a kill
    with os.fdopen(fd, "w+b") as f:
        yield f


class _Chunks:
    """A read()-able view of a member's chunk iterator, for TarWriter.add."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if n < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data
