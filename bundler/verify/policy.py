"""Pure trust decisions: signature, manifest, expiry, rollback and per-member rules. No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from packaging.version import InvalidVersion, Version

from ..errors import (
    BundleError,
    ExpiredError,
    IntegrityError,
    RollbackError,
    SignatureError,
    UnsafeMemberError,
    escape,
)
from ..formats.archive import Header
from ..formats.cosign import Cosignature
from ..formats.limits import DEFAULT_LIMITS, Limits
from ..formats.manifest import FileEntry, Manifest, check_member_name, fold_name, parse_manifest
from ..formats.manifest import peek_signer as _peek_signer
from ..formats.signing import TrustedKey, verify_signature
from .trustpolicy import (
    SignatureCheck,
    TrustDecision,
    TrustPolicy,
    check_signatures,
    decide,
    from_trusted_keys,
    no_valid_signature,
)


@dataclass(frozen=True)
class Verified:
    """A manifest whose signature verified with ``key``, and which passed every policy.

    ``key`` is the key of the primary signature when it verified, else of the first
    co-signature that counted. Since revision 1.4 ``cosignatures`` holds every co-signature
    presented (bundle members, then detached files), ``signatures`` what each one turned out
    to be, and ``decision`` and ``policy`` how the trust policy was met.
    """

    manifest: Manifest
    key: TrustedKey
    manifest_bytes: bytes
    signature: bytes
    cosignatures: tuple[Cosignature, ...] = ()
    signatures: tuple[SignatureCheck, ...] = ()
    decision: TrustDecision | None = None
    policy: TrustPolicy | None = None


def _claimed_signer(manifest_bytes: bytes, limits: Limits) -> str | None:
    # Only for the error message: which key the untrusted manifest says signed it.
    try:
        return _peek_signer(manifest_bytes, limits)
    except BundleError:
        return None


def verify_manifest(
    manifest_bytes: bytes,
    signature: bytes,
    trusted: Iterable[TrustedKey],
    *,
    now: int,
    limits: Limits = DEFAULT_LIMITS,
    cosignatures: Sequence[Cosignature] = (),
    policy: TrustPolicy | None = None,
) -> Verified:
    """Check the signatures first, then parse, then the trust policy; refuse a bundle past
    its expiry.

    Every signature is checked over the raw bytes before any field is trusted, with keys
    from ``policy`` (or, without one, ``trusted`` as a 1-of-M policy) only; at least one must
    verify before the manifest is parsed. The policy's rule for the manifest's name then
    needs its threshold of distinct keys.

    Raises:
        SignatureError, TrustError, ManifestError, UnsafeMemberError, ResourceLimitError,
        ExpiredError.
    """
    if policy is None:
        policy = from_trusted_keys(list(trusted))

    def claimed() -> str | None:
        return _claimed_signer(manifest_bytes, limits)

    checks = check_signatures(manifest_bytes, signature, cosignatures, policy, claimed)
    valid = [c for c in checks if c.status == "valid"]
    if not valid:
        if policy.from_trust:
            # --trust alone: exactly the rejection (and message) from before revision 1.4.
            verify_signature(
                manifest_bytes, signature, policy.keys.values(), claimed_signer=claimed
            )
        raise no_valid_signature(policy, checks)
    manifest = parse_manifest(manifest_bytes, limits)
    primary = checks[0]
    if primary.status == "valid" and manifest.signer != primary.key_id:
        raise SignatureError(
            f"manifest names signer {manifest.signer[:16]}... but was signed by "
            f"{str(primary.key_id)[:16]}...",
            member="manifest.json",
        )
    decision = decide(policy, manifest.name, checks)
    if manifest.expires is not None and now > manifest.expires:
        raise ExpiredError(
            f"expired at {manifest.expires} (now {now}, epoch seconds)",
            member="manifest.json",
            remedy="ask the publisher for a fresh bundle",
        )
    first = primary.key_id if primary.status == "valid" else decision.counted[0]
    assert first is not None
    return Verified(
        manifest=manifest,
        key=policy.keys[first],
        manifest_bytes=manifest_bytes,
        signature=signature,
        cosignatures=tuple(cosignatures),
        signatures=checks,
        decision=decision,
        policy=policy,
    )


def _version_key(version: str) -> Version | None:
    try:
        return Version(version)
    except InvalidVersion:
        return None


def check_rollback(new: Manifest, installed: Manifest | None, *, allow_downgrade: bool) -> None:
    """Refuse to replace an installed bundle of the same name with an older one.

    Versions compare as PEP 440 versions; when either is not one, creation times decide.

    Raises:
        RollbackError: ``new`` is older and ``allow_downgrade`` is false.
    """
    if installed is None or allow_downgrade:
        return
    new_v, old_v = _version_key(new.version), _version_key(installed.version)
    if new_v is not None and old_v is not None:
        older = new_v < old_v
    else:
        older = new.version != installed.version and new.created < installed.created
    if older:
        raise RollbackError(
            f"bundle {escape(new.name)} {escape(new.version)} is older than "
            f"{escape(installed.name)} {escape(installed.version)} already unpacked here",
            member="manifest.json",
            remedy="pass --allow-downgrade if the older version is intended",
        )


@dataclass
class MemberTracker:
    """Matches payload members against the signed file list, one header at a time.

    Members must come in the manifest's order (§4): each admitted member is the next listed
    one, so a member the payload skipped is named as missing the moment a later one arrives.
    """

    expected: Mapping[str, FileEntry]
    created: int  # every header's mtime must be this (§2)
    limits: Limits = DEFAULT_LIMITS
    seen: set[str] = field(default_factory=set)
    _order: list[str] = field(default_factory=list, init=False, repr=False)
    _next: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._order = list(self.expected)  # a dict keeps the manifest's order

    def admit(self, header: Header) -> FileEntry:
        """The manifest entry for this member, if the member may be written at all.

        Raises:
            UnsafeMemberError: unsafe name, duplicate or case-fold collision.
            IntegrityError: a member the manifest does not list, or whose size or mode differ.
        """
        name = header.name
        entry = self.expected.get(name)
        if entry is None:
            # Never written: say why as precisely as possible (unsafe, collision, extra).
            check_member_name(name, self.limits)
            folded = {fold_name(n): n for n in self.seen}
            if fold_name(name) in folded:
                raise UnsafeMemberError(
                    f"collides with {folded[fold_name(name)]!r} when case-folded", member=name
                )
            raise IntegrityError("extra member not listed in the manifest", member=name)
        # Listed names were checked when the manifest was parsed, and no two of them
        # collide when case-folded; so a listed name can only be a repeat.
        if name in self.seen:
            raise UnsafeMemberError("duplicate member", member=name)
        want = self._order[self._next]  # exists: a listed, unseen name remains
        if name != want:
            # A skipped or moved file: in a conforming payload the next member is the next
            # listed file, so the stream never has to be searched or buffered.
            raise IntegrityError(
                f"out of order: the manifest lists {want!r} next (payload members come in the "
                "manifest's order)",
                member=name,
            )
        self._next += 1
        self.seen.add(name)
        if header.mtime != self.created:
            raise UnsafeMemberError(
                f"mtime {header.mtime} is not the manifest's created time {self.created}",
                member=name,
            )
        if header.size != entry.size:
            raise IntegrityError(
                f"size {header.size} differs from the manifest's {entry.size}",
                member=header.name,
            )
        if header.mode != entry.mode:
            raise IntegrityError(
                f"mode {header.mode:o} differs from the manifest's {entry.mode:o}",
                member=header.name,
            )
        return entry

    @staticmethod
    def check_content(entry: FileEntry, sha256: str) -> None:
        """Raises IntegrityError when the member's bytes differ from the manifest."""
        if sha256 != entry.sha256:
            raise IntegrityError("content differs from the manifest's sha256", member=entry.path)

    def finish(self) -> None:
        """Raises IntegrityError naming the first listed file that never appeared."""
        missing = sorted(set(self.expected) - self.seen)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise IntegrityError(f"listed in the manifest but missing{more}", member=missing[0])
