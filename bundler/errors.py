"""The one exception hierarchy: every failure a user can see, with its exit code and remedy."""

from __future__ import annotations

# Exit codes, documented in the README. Click's own usage errors exit with 2.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_SMOKE = 4  # the server runs, but its answer to the smoke test is wrong (or missing)


class BundleError(Exception):
    """Base class of every expected failure; the CLI prints it as one line, no traceback.

    ``remedy`` says what the user can do about it; ``exit_code`` is the documented status.
    """

    exit_code = EXIT_ERROR
    prefix = "error"

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def diagnostics(self) -> str:
        """The one line the CLI prints: what failed, then what to do."""
        text = f"{self.prefix}: {self.message}"
        if self.remedy:
            text += f"; {self.remedy}"
        return text


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


class KeyFileError(BundleError):
    """A key file cannot be read, decrypted or written."""


# --- the isolated side: a bundle is rejected (exit 3) ----------------------------------


class BundleRejected(BundleError):
    """The bundle failed a check; nothing was written. ``check`` and ``member`` name it."""

    exit_code = EXIT_REJECTED
    prefix = "bundle rejected"
    check = "bundle"

    def __init__(
        self, message: str, *, member: str | None = None, remedy: str | None = None
    ) -> None:
        self.member = member
        where = f"{self.check}: {member}: " if member else f"{self.check}: "
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


class ContainerError(BundleError):
    """The container did not become healthy, or could not be started or stopped."""


class LocalRunnerError(BundleError):
    """The local runner could not create its environment or start the server."""


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
