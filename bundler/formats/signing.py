"""Ed25519 keys and signatures over manifest bytes: key ids, PEM files, trusted key sets."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import KeyFileError, SignatureError, TrustError, escape
from .files import read_regular

PRIVATE_KEY_NAME: Final = "airgap.key"
PUBLIC_KEY_NAME: Final = "airgap.pub"
SIGNATURE_BYTES: Final = 64
_MAX_KEY_FILE: Final = 64 * 1024

# ---- small-order points ---------------------------------------------------------------
# A public key of small order (the identity, or a point whose order divides 8) makes some
# signatures verify for *every* message under lax verifiers. We refuse such keys when they
# are loaded, by decoding the point and checking whether 8*P is the identity.
_P: Final = 2**255 - 19
_D: Final = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1: Final = pow(2, (_P - 1) // 4, _P)


def _decode_point(raw: bytes) -> tuple[int, int] | None:
    """RFC 8032 5.1.3 point decoding; None when the bytes are not a curve point."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    if (v * x * x - u) % _P != 0:
        x = (x * _SQRT_M1) % _P
        if (v * x * x - u) % _P != 0:
            return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _add(p1: tuple[int, int], p2: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = p1, p2
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P
    return x3, y3


def is_small_order(raw: bytes) -> bool:
    """True when the 32-byte encoding is a point of order 1, 2, 4 or 8 (or not a point)."""
    point = _decode_point(raw)
    if point is None:
        return True
    for _ in range(3):
        point = _add(point, point)
    return point == (0, 1)


# ---- keys -------------------------------------------------------------------------------


def key_id(public: Ed25519PublicKey) -> str:
    """sha256 of the raw 32-byte public key, as 64 hex digits."""
    return hashlib.sha256(_raw(public)).hexdigest()


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class TrustedKey:
    """A public key the user trusts, and the file it came from (for messages)."""

    key_id: str
    public: Ed25519PublicKey
    source: Path


def generate_keypair(out_dir: Path, passphrase: bytes | None, *, force: bool = False) -> str:
    """Write ``airgap.key`` (PKCS#8 PEM, mode 0600) and ``airgap.pub``; return the key id.

    Raises:
        KeyFileError: a key already exists there (without ``force``) or cannot be written.
    """
    private_path = out_dir / PRIVATE_KEY_NAME
    public_path = out_dir / PUBLIC_KEY_NAME
    if not force and (private_path.exists() or public_path.exists()):
        raise KeyFileError(
            f"{private_path} or {public_path} already exists",
            remedy="choose another --out folder, or pass --force to replace the key pair",
        )
    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # O_EXCL unless forced, and 0600 from the first byte: the key is never world-readable.
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        fd = os.open(private_path, flags, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(pem)
        public_path.write_bytes(public_pem)
    except OSError as e:
        raise KeyFileError(f"cannot write the key pair to {out_dir}: {e.strerror}") from e
    return key_id(private.public_key())


def load_private_key(path: Path, passphrase: bytes | None) -> Ed25519PrivateKey:
    """Load a PKCS#8 PEM Ed25519 private key.

    Raises:
        KeyFileError: unreadable, not Ed25519, encrypted without a passphrase, or wrong one.
    """
    shown = escape(str(path))
    try:
        data = read_regular(
            path, lambda reason: KeyFileError(f"signing key {shown} {reason}"), _MAX_KEY_FILE
        )
    except OSError as e:
        raise KeyFileError(f"cannot read signing key {shown}: {e.strerror}") from e
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as e:
        if passphrase is None:
            raise KeyFileError(
                f"signing key {path} is encrypted",
                remedy="give its passphrase with --passphrase-env VAR or at the prompt",
            ) from e
        raise KeyFileError(f"signing key {path} is not encrypted; drop the passphrase") from e
    except ValueError as e:
        raise KeyFileError(
            f"cannot load signing key {path}: wrong passphrase or not a PEM private key",
            remedy="check the passphrase; make a key with `airgap keygen --out DIR`",
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"signing key {path} is not an Ed25519 key")
    return key


def private_key_is_encrypted(path: Path) -> bool:
    """True when the PEM file is an encrypted PKCS#8 key (so the CLI should ask for it)."""
    try:
        data = read_regular(path, lambda reason: KeyFileError(reason), _MAX_KEY_FILE)
    except (OSError, KeyFileError):
        return False  # load_private_key then says what is wrong with the file
    return b"ENCRYPTED PRIVATE KEY" in data


def load_public_key_bytes(data: bytes, source: Path) -> TrustedKey:
    """Parse one trusted public key (PEM SubjectPublicKeyInfo), refusing small-order points.

    Raises:
        TrustError: not an Ed25519 public key, or a small-order point.
    """
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise TrustError("not a PEM public key", member=str(source)) from e
    if not isinstance(public, Ed25519PublicKey):
        raise TrustError("not an Ed25519 public key", member=str(source))
    if is_small_order(_raw(public)):
        raise TrustError(
            "public key is a small-order point, which would let forged signatures verify",
            member=str(source),
            remedy="replace this file with the signer's real public key",
        )
    return TrustedKey(key_id=key_id(public), public=public, source=source)


def load_trusted_keys(paths: Sequence[Path]) -> list[TrustedKey]:
    """Load the keys in each path: a key file, or a folder of ``*.pub`` / ``*.pem`` files.

    Raises:
        TrustError: no key found, or any key file is unusable.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.iterdir() if p.suffix in (".pub", ".pem") and p.is_file())
            )
        else:
            files.append(path)
    if not files:
        raise TrustError(
            "no trusted public key given",
            remedy="pass --trust with the signer's public key file (airgap.pub) or a folder",
        )
    keys = []
    for f in files:
        # A FIFO or a device given as --trust (or planted in a trusted folder) is refused at
        # once: it must never block the reader or feed it without end.
        def refuse(reason: str, f: Path = f) -> TrustError:
            if reason.startswith("is larger"):
                return TrustError("key file too large", member=str(f))
            return TrustError(f"the key file {reason}", member=str(f))

        try:
            data = read_regular(f, refuse, _MAX_KEY_FILE)
        except OSError as e:
            raise TrustError(f"cannot read: {e.strerror}", member=str(f)) from e
        keys.append(load_public_key_bytes(data, f))
    return keys


def public_key_pem(public: Ed25519PublicKey) -> bytes:
    """The PEM SubjectPublicKeyInfo encoding, as `airgap keygen` writes it."""
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ---- sign and verify --------------------------------------------------------------------


def sign(private: Ed25519PrivateKey, message: bytes) -> bytes:
    """Raw Ed25519 signature (64 bytes) over the manifest bytes, as openssl -rawin checks."""
    return private.sign(message)


def verify_signature(
    message: bytes,
    signature: bytes,
    trusted: Iterable[TrustedKey],
    claimed_signer: str | Callable[[], str | None] | None,
    *,
    member: str = "manifest.json.sig",
) -> TrustedKey:
    """Return the trusted key whose signature over ``message`` verifies.

    The key comes only from ``trusted``, never from the bundle; ``claimed_signer`` (read from
    the untrusted manifest, or a function that reads it, called only on failure) is used for
    the error message alone. ``member`` names the signature file in errors.

    Raises:
        SignatureError: wrong length, no trusted key verifies, or the key id does not match.
    """
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(
            f"signature is {len(signature)} bytes, not {SIGNATURE_BYTES}",
            member=member,
        )
    keys = list(trusted)
    for key in keys:
        try:
            key.public.verify(signature, message)
        except InvalidSignature:
            continue
        return key
    known = {k.key_id for k in keys}
    if callable(claimed_signer):
        claimed_signer = claimed_signer()
    if claimed_signer and claimed_signer not in known:
        raise SignatureError(
            f"signed by key {escape(claimed_signer[:16])}..., which is not trusted here",
            member=member,
            remedy="pass --trust with the signer's public key",
        )
    raise SignatureError(
        "the signature does not verify with any trusted key (edited manifest or wrong key)",
        member=member,
        remedy="get the bundle again from its publisher; do not use this copy",
    )
