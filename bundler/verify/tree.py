"""Re-check an unpacked tree against the signed manifest it was unpacked from."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from collections.abc import Collection, Sequence
from pathlib import Path

from ..errors import BundleError, TreeModifiedError, escape
from ..formats.cosign import Cosignature, parse_signature_file
from ..formats.limits import DEFAULT_LIMITS, Limits
from ..formats.manifest import FileEntry, Manifest
from ..formats.signing import load_trusted_keys
from ..formats.source import read_regular
from ..layout import STATE_COSIGNATURES, STATE_DIR, STATE_MANIFEST, STATE_SIGNATURE, STATE_SIGNER
from .policy import Verified, verify_manifest
from .trustpolicy import load_policy


def open_regular(path: Path, rel: str) -> io.BufferedReader:
    """Open a file of an unpacked tree for reading, only if it is a regular file itself.

    O_NOFOLLOW refuses a link, O_NONBLOCK keeps a FIFO swapped in from blocking the open,
    and fstat on the open descriptor decides: no window between the check and the read.

    Raises:
        TreeModifiedError: missing, a link, or not a regular file.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise TreeModifiedError(
                "no longer a regular file (a symbolic link)",
                member=rel,
                remedy="unpack the bundle again",
            ) from e
        raise TreeModifiedError(
            f"cannot read it ({e.strerror})", member=rel, remedy="unpack the bundle again"
        ) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TreeModifiedError(
            "no longer a regular file", member=rel, remedy="unpack the bundle again"
        )
    return os.fdopen(fd, "rb")


def check_unpacked(
    dest: Path,
    *,
    trust: Sequence[Path] | None = None,
    roots: Collection[str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    policy: Path | None = None,
) -> Manifest:
    """Verify DEST's stored manifest, then every file under ``roots`` against it.

    With ``policy`` (a trust policy file, which replaces ``trust``) the stored signature and
    the co-signatures kept at unpack (``.airgap/cosignatures.json``) must meet it again.

    With ``trust``, the stored manifest must verify with those keys; without it, with the key
    that verified it at unpack time (``.airgap/signer.pub``), which catches accidental and
    partial edits but not an attacker who can rewrite all of DEST. Expiry is not re-checked:
    a bundle that was valid when unpacked keeps running. Extra files are refused too, since
    an added ``.pth`` or ``__pycache__`` file would run code.

    Raises:
        TreeModifiedError: a file is changed, missing or extra, or is not a regular file.
        BundleError: DEST was not made by `airgap unpack`.
        SignatureError and other BundleRejected: the stored manifest does not verify.
    """
    if (dest / STATE_DIR).is_symlink():
        # The state (and the local runner's venv) would then live wherever the link points.
        raise TreeModifiedError(
            "symbolic link added", member=STATE_DIR, remedy="unpack the bundle again"
        )
    manifest = stored_verified(dest, trust=trust, policy=policy, limits=limits).manifest
    wanted = {
        f.path: f for f in manifest.files if roots is None or f.path.split("/", 1)[0] in roots
    }
    tops = set(roots) if roots is not None else {f.path.split("/", 1)[0] for f in manifest.files}
    seen: set[str] = set()
    for top in sorted(tops):
        if (dest / top).is_symlink():
            # os.walk follows a link given as its top: a linked-in copy would pass unseen.
            raise TreeModifiedError("symbolic link added", member=top)
        for dirpath, dirnames, filenames in os.walk(dest / top):
            rel_dir = Path(dirpath).relative_to(dest).as_posix()
            if rel_dir == STATE_DIR:
                continue
            dirnames.sort()
            for name in [*dirnames]:
                if (Path(dirpath) / name).is_symlink():
                    raise TreeModifiedError("symbolic link added", member=f"{rel_dir}/{name}")
            for name in sorted(filenames):
                rel = f"{rel_dir}/{name}"
                _check_file(dest, rel, wanted.get(rel))
                seen.add(rel)
    missing = sorted(set(wanted) - seen)
    if missing:
        raise TreeModifiedError(
            "file missing since unpack", member=missing[0], remedy="unpack the bundle again"
        )
    return manifest


def _check_file(dest: Path, rel: str, entry: FileEntry | None) -> None:
    path = dest / rel
    if entry is None:
        raise TreeModifiedError(
            "file added since unpack", member=rel, remedy="remove it, or unpack the bundle again"
        )
    with open_regular(path, rel) as f:
        st = os.fstat(f.fileno())
        if stat.S_IMODE(st.st_mode) != entry.mode:
            raise TreeModifiedError(
                f"mode {stat.S_IMODE(st.st_mode):o} differs from the manifest's {entry.mode:o}",
                member=rel,
                remedy="unpack the bundle again",
            )
        if st.st_size != entry.size or hashlib.file_digest(f, "sha256").hexdigest() != entry.sha256:
            raise TreeModifiedError(
                "file changed since unpack", member=rel, remedy="unpack the bundle again"
            )


def stored_verified(
    dest: Path,
    *,
    trust: Sequence[Path] | None = None,
    policy: Path | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Verified:
    """DEST's stored manifest verified again: with ``policy``, or ``trust``, or else the key
    recorded at unpack; with the stored co-signatures. Checks no payload file.

    Raises:
        BundleError: DEST was not made by `airgap unpack`.
        SignatureError, TrustError and other BundleRejected: it does not verify (any more).
        PolicyError: the policy file cannot be used (exit 2).
    """
    shown = escape(str(dest))

    def refuse(reason: str) -> BundleError:
        # A FIFO or device planted as a state file: refused at once, never read.
        return BundleError(
            f"{shown} holds a state file that {reason}", remedy="unpack the bundle again"
        )

    try:
        manifest_bytes = read_regular(dest / STATE_MANIFEST, refuse, limits.max_manifest_bytes)
        signature = read_regular(dest / STATE_SIGNATURE, refuse, limits.max_signature_bytes)
    except OSError as e:
        raise BundleError(
            f"{shown} has no unpacked bundle ({e.strerror}: {escape(str(e.filename))})",
            remedy="unpack one there first: airgap unpack BUNDLE DEST --trust KEY",
        ) from e
    cosignatures: tuple[Cosignature, ...] = ()
    stored = dest / STATE_COSIGNATURES
    if stored.exists() or stored.is_symlink():
        with open_regular(stored, STATE_COSIGNATURES) as f:
            data = f.read(limits.max_signature_file_bytes + 1)
        cosignatures = parse_signature_file(data, manifest_bytes, STATE_COSIGNATURES, limits)
    loaded = load_policy(policy) if policy is not None else None
    keys = [] if loaded else load_trusted_keys(list(trust) if trust else [dest / STATE_SIGNER])
    # now=0: expiry is a property of the bundle at unpack time, not of every later start.
    return verify_manifest(
        manifest_bytes,
        signature,
        keys,
        now=0,
        limits=limits,
        cosignatures=cosignatures,
        policy=loaded,
    )
