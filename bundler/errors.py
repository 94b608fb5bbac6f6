"""The one exception hierarchy: every failure a user can see, with its exit code and remedy."""

from __future__ import annotations

# Exit codes, documented in the README. Click's own usage errors exit with 2.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_SMOKE = 4  # the server runs, but its answer to the smoke test is wrong (or missing)
EXIT_FINDINGS = 5  # `airgap audit`: a carried package matches a known advisory
EXIT_DATABASE = 6  # `airgap audit`: the advisory snapshot is invalid (or stale, --fail-stale)


def escape(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every non-printable character escaped, so it prints as one plain line.

    Untrusted text (member names, a manifest's name and version, key ids, paths from DEST)
    goes through here before it enters a message: a CR, LF or BEL in a crafted name must not
    end the line, fake an "OK" on a terminal or start an escape sequence. Non-printable is
    ``str.isprintable``'s rule: C0 and C1 controls, DEL, line and paragraph separators
    (U+2028/2029), format characters such as the bidi overrides (U+202A-202E, U+2066-2069),
    other separators than the ASCII space, surrogates (undecodable file names) and unassigned
    code points. Each becomes ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``. Backslashes are kept
    as they are, so escaping is idempotent and the funnel can apply it again to a whole line.
    ``keep_newlines`` keeps LF (a server log quoted after the message), nothing else.
    """
    if text.isprintable():
        return text  # the common case: nothing to do
    out = []
    for ch in text:
        if ch.isprintable() or (keep_newlines and ch == "\n"):
            out.append(ch)
            continue
        code = ord(ch)
        if code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


class BundleError(Exception):
    """Base class of every expected failure; the CLI prints it as one line, no traceback.

    ``remedy`` says what the user can do about it; ``exit_code`` is the documented status.
    """

    exit_code = EXIT_ERROR
    prefix = "error"
    multiline = False  # True: the message may quote a log, one line per line

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def diagnostics(self) -> str:
        """The one line the CLI prints: what failed, then what to do.

        Escaped as a whole (``escape``): whatever untrusted text a message quotes, the line
        stays one line with no raw control character.
        """
        text = f"{self.prefix}: {self.message}"
        if self.remedy:
            text += f"; {self.remedy}"
        return escape(text, keep_newlines=self.multiline)


class UsageError(BundleError):
    """A bad option or argument that click could not catch by itself."""

    exit_code = EXIT_USAGE


# --- the online side -------------------------------------------------------------------


class ProjectError(BundleError):
    """bundle.toml is missing, malformed, or names files that do not exist."""


class LockError(BundleError):
    """The requirements lock is not fully pinned and hashed (every offender is listed)."""


class ResolveError(BundleError):
    """pip-tools could not resolve the requirements."""


class DownloadError(BundleError):
    """A locked wheel could not be downloaded for the target, or its hash did not match."""


class SiteTreeError(BundleError):
    """A wheel could not be installed into the site-packages tree."""


class TreeCacheError(BundleError):
    """The cache of built site-packages trees cannot be used (its folder, its lock)."""


class CachedTreeMismatch(BundleError):
    """A cached tree's bytes differ from the cache's own record of them.

    Raised while packing, before anything is signed; ``pack`` catches it, warns and rebuilds
    the entry, so a user only sees the ``warning:`` line.
    """

    def __init__(self, message: str, *, keys: frozenset[str]) -> None:
        super().__init__(message, remedy="the entry is rebuilt from the wheels")
        self.keys = keys


class KeyFileError(BundleError):
    """A key file cannot be read, decrypted or written."""


class KitError(BundleError):
    """The bootstrap kit cannot be made: no checkout to build, or an unreproducible wheel."""


# --- the isolated side: a bundle is rejected (exit 3) ----------------------------------


class BundleRejected(BundleError):
    """The bundle failed a check; nothing was written. ``check`` and ``member`` name it.

    ``member`` usually comes from the bundle itself, so it is kept escaped (``escape``).
    """

    exit_code = EXIT_REJECTED
    prefix = "bundle rejected"
    check = "bundle"

    def __init__(
        self, message: str, *, member: str | None = None, remedy: str | None = None
    ) -> None:
        self.member = None if member is None else escape(member)
        where = f"{self.check}: {self.member}: " if member else f"{self.check}: "
        super().__init__(where + message, remedy=remedy)


class SignatureError(BundleRejected):
    """Unknown signer, wrong key or bad signature."""

    check = "signature"


class TrustError(BundleRejected):
    """A trusted-key file is unusable (unreadable, not Ed25519, or a small-order point)."""

    check = "trust"


class ManifestError(BundleRejected):
    """The manifest is not strict JSON, has an unknown format version or misses fields."""

    check = "manifest"


class IntegrityError(BundleRejected):
    """Payload or member bytes differ from the signed manifest (hash, size, mode, set)."""

    check = "integrity"


class UnsafeMemberError(BundleRejected):
    """A member is not a plain file with a safe relative name."""

    check = "unsafe member"


class ResourceLimitError(BundleRejected):
    """A declared or actual size, count or zstd window is beyond a fixed limit."""

    check = "limit"


class RollbackError(BundleRejected):
    """The bundle is older than the one already unpacked at the destination."""

    check = "rollback"


class ExpiredError(BundleRejected):
    """The bundle is past the expiry date its manifest carries."""

    check = "expiry"


class PartError(BundleRejected):
    """A part of a split bundle is missing, foreign, reordered, truncated, damaged, duplicated
    or extra (docs/format.md section 12); the member is the part's file name, ``status``
    the kind of failure and ``detail`` the rest."""

    check = "part"

    def __init__(self, status: str, detail: str, *, member: str, remedy: str | None = None) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {detail}", member=member, remedy=remedy)


class PartsIndexError(BundleRejected):
    """A split bundle's part index is malformed, or names another bundle than its parts hold."""

    check = "parts index"


class DeltaError(BundleRejected):
    """A delta bundle does not apply here: DEST is not its base, or the delta is inconsistent."""

    check = "delta"


class TreeModifiedError(BundleRejected):
    """An unpacked tree no longer matches the signed manifest it was unpacked from."""

    check = "tree"


# --- running ---------------------------------------------------------------------------


class EngineUnavailableError(BundleError):
    """No Docker engine answers."""


class ImageBuildError(BundleError):
    """The image could not be built or loaded."""


class RegistryError(BundleError):
    """An in-network registry refused a push, or holds something other than what was built."""


class OrchestratorError(BundleError):
    """Docker Swarm (or another orchestrator) refused or failed a deployment."""


class ContainerError(BundleError):
    """The container did not become healthy, or could not be started or stopped."""


class LocalRunnerError(BundleError):
    """The local runner could not create its environment or start the server."""

    multiline = True  # a failed start quotes the server's log (init()'s traceback)


class PolicyError(UsageError):
    """A trust policy file (--policy) cannot be used: unreadable, malformed, naming a key file
    that cannot be loaded, or asking for more signatures than it has keys (exit 2: the
    user's own input is wrong, not the bundle)."""

    prefix = "trust policy"


class AuthKeyFileError(UsageError):
    """The scoring server's key file (--auth-key-file) cannot be used: missing, readable by
    others, or holding no acceptable key. The message never contains a key."""


class HostMismatchError(BundleError):
    """The host, interpreter or base image does not fit the bundle's target platform/Python.

    Not a rejected bundle (exit 1, not 3): the bundle is intact, it is for another machine.
    """

    prefix = "host check"


class InsufficientSpaceError(BundleError):
    """A filesystem lacks the free bytes or inodes a job needs; refused before any write.

    An error (exit 1), not a rejection: the bundle is fine, the host needs room.
    """

    prefix = "preflight"


class SmokeTestError(BundleError):
    """The bundle's smoke test got a wrong answer, or none (exit 4; see the README)."""

    exit_code = EXIT_SMOKE
    prefix = "smoke test failed"


class AdvisoryDatabaseError(BundleError):
    """The advisory snapshot given to `airgap audit` cannot be used: unreadable, not a zip
    of OSV JSON records, beyond a size or count limit, or (with --fail-stale) too old.
    Exit 6, so automation can tell a bad database from findings (5)."""

    exit_code = EXIT_DATABASE
    prefix = "advisory database"


class SbomError(BundleRejected):
    """The bundle's signed SBOM (sbom/bom.cdx.json) is not a CycloneDX JSON document."""

    check = "sbom"
