"""Key authentication: ``Authorization: Bearer <key>``, as Azure ML endpoint clients send it.

The keys live in a file (AIRGAP_AUTH_KEY_FILE), one per line, at most two so a key can be
rotated; the key itself is never in an environment variable, a flag, a log line or an error
message. A worker re-reads the file when it changes (checked at most once a second): a file
that no longer passes the checks keeps the keys in force and is logged (without its content).

Standard library only: the runtime imports this module in every worker.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("airgap_runtime")

MIN_KEY_LENGTH = 32  # characters; Azure ML's endpoint keys are 32 characters
MAX_KEYS = 2  # the key in force and its successor (or predecessor) during a rotation
MAX_FILE_BYTES = 64 * 1024
RELOAD_INTERVAL_S = 1.0
# Always open: probes (Docker HEALTHCHECK, Kubernetes, load balancers) carry no key.
OPEN_ROUTES = {("GET", "/"), ("HEAD", "/")}

REFUSED_BODY = (
    b'{"message": "Unauthorized: send the endpoint key as \\"Authorization: Bearer <key>\\"."}'
)


class KeyFileError(Exception):
    """The key file is missing, unreadable, too open or holds no acceptable key."""


@dataclass(frozen=True)
class _Signature:
    """What changes when the file is rewritten (in place or by a rename) or its mode changed."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    mode: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Signature:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _digest(key: bytes) -> bytes:
    # Keys are compared as SHA-256 digests: compare_digest over equal-length values takes the
    # same time whatever the presented key's length.
    return hashlib.sha256(key).digest()


def parse_keys(text: str, source: str) -> tuple[str, ...]:
    """The keys in a key file's text: one per line; blank lines and ``#`` comments ignored.

    Raises:
        KeyFileError: no key, more than MAX_KEYS, a key too short or with characters that
            cannot travel in an HTTP header. The message never includes a key.
    """
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if not all("!" <= c <= "~" for c in key):
            raise KeyFileError(
                f"{source}: line {number}: a key must be printable ASCII without spaces"
            )
        if len(key) < MIN_KEY_LENGTH:
            raise KeyFileError(
                f"{source}: line {number}: the key has {len(key)} characters, fewer than the "
                f"minimum of {MIN_KEY_LENGTH}; make one with: "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        keys.append(key)
    if not keys:
        raise KeyFileError(f"{source}: no key in the file (one key per line)")
    if len(keys) > MAX_KEYS:
        raise KeyFileError(
            f"{source}: {len(keys)} keys; at most {MAX_KEYS} (the current one and, during a "
            "rotation, the next)"
        )
    return tuple(keys)


def check_mode(mode: int, source: str) -> None:
    """Refuse a key file that is not a regular file or that its group or others may read
    or write (as ssh does with private keys)."""
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"{source}: not a regular file")
    if mode & 0o077:
        raise KeyFileError(
            f"{source}: mode {stat.S_IMODE(mode):04o} lets its group or others read or change "
            f"it; restrict it to its owner: chmod 600 {source}"
        )


def read_key_file(path: str) -> tuple[tuple[str, ...], _Signature]:
    """Read and check the key file at ``path``.

    Raises:
        KeyFileError: see check_mode and parse_keys; or the file cannot be read.
    """
    try:
        # Symlinks followed: Kubernetes secrets are links. O_NONBLOCK: a FIFO given as the key
        # file must not block the open; check_mode then refuses it (not a regular file).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise KeyFileError(f"{path}: cannot open the key file: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        check_mode(st.st_mode, path)
        if st.st_size > MAX_FILE_BYTES:
            raise KeyFileError(f"{path}: {st.st_size} bytes is not a key file")
        data = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: a key must be printable ASCII without spaces") from None
    return parse_keys(text, path), _Signature.of(st)


class KeyAuth:
    """Checks a request's ``Authorization`` header against the keys in force."""

    def __init__(self, path: str, *, clock: Any = time.monotonic) -> None:
        self.path = path
        keys, self._signature = read_key_file(path)
        self._digests = tuple(_digest(k.encode("ascii")) for k in keys)
        self._clock = clock
        self._next_check = clock() + RELOAD_INTERVAL_S
        self._bad: _Signature | None = None  # a changed file already logged as unusable

    @property
    def key_count(self) -> int:
        return len(self._digests)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + RELOAD_INTERVAL_S
        try:
            st = os.stat(self.path)
        except OSError as e:
            self._report(None, f"{self.path}: cannot read the key file: {e.strerror}")
            return
        current = _Signature.of(st)
        if current == self._signature:
            return
        try:
            keys, signature = read_key_file(self.path)
        except KeyFileError as e:
            self._report(current, str(e))
            return
        self._digests = tuple(_digest(k.encode("ascii")) for k in keys)
        self._signature = signature
        self._bad = None
        log.info("auth: key file %s re-read: %d key(s) in force", self.path, len(keys))

    def _report(self, signature: _Signature | None, message: str) -> None:
        if signature is None or signature != self._bad:
            log.error("auth: %s; the keys read before stay in force", message)
        self._bad = signature

    def allows(self, header: str | None) -> bool:
        """True if ``header`` (the Authorization value) is ``Bearer <a key in force>``.

        Every key is compared, in constant time, whatever the outcome of the others.
        """
        self._maybe_reload()
        if not header:
            return False
        scheme, _, token = header.strip().partition(" ")
        presented = _digest(token.strip().encode("utf-8", "surrogateescape"))
        matched = 0
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return bool(matched) and scheme.lower() == "bearer"


def is_open(method: str, path: str) -> bool:
    """Requests that pass without a key: the health route and every OPTIONS (a browser's CORS
    preflight never carries credentials)."""
    return method == "OPTIONS" or (method, path) in OPEN_ROUTES


def challenge(header: str | None) -> str:
    """The WWW-Authenticate value of a 401 (RFC 6750): ``invalid_token`` when a key was sent."""
    if header and header.strip().lower().startswith("bearer "):
        return 'Bearer realm="airgap", error="invalid_token"'
    return 'Bearer realm="airgap"'
