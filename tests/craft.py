"""Craft bundles byte by byte, including hostile ones: any tar header, payload, manifest, signature.

Nothing here uses ``tarfile`` or the project's writer for the parts under test, so a crafted
bundle can hold what our writer never emits (links, devices, pax and GNU records, sparse
members, special mode bits, bad checksums) and still be signed consistently where a test needs
the deeper check to fire.

The layers, bottom up:
  ``header`` / ``member`` / ``pax`` / ``gnu_long`` / ``tar``   raw tar bytes
  ``zstd``                                                    compression (any window size)
  ``manifest_dict`` / ``dumps``                               the manifest as JSON
  ``outer``                                                   the outer, uncompressed tar
  ``craft``                                                   all of it, with a hook per layer
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BLOCK = 512
USTAR = b"ustar\x0000"  # POSIX ustar magic + version, what our writer emits
GNU = b"ustar  \x00"  # GNU tar's old magic
V7 = b"\x00" * 8  # pre-POSIX tar: no magic at all
CREATED = 1_700_000_000
DEFAULT_TARGET = {
    "python": "3.11",
    "implementation": "cp",
    "abi": "cp311",
    "platforms": ["manylinux_2_17_x86_64"],
}


@dataclass(frozen=True)
class F:
    """A regular payload file: its path, its bytes and its mode."""

    path: str
    data: bytes
    mode: int = 0o644

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


DEFAULT_FILES: tuple[F, ...] = (
    F("app/score.py", b"def init():\n    pass\n\n\ndef run(raw_data):\n    return raw_data\n"),
    F("model/model.bin", b"\x00\x01\x02 a tiny model \xff" * 3),
    F("runtime/start.sh", b"#!/bin/sh\nexec python -m airgap_runtime\n", 0o755),
    F("site-packages/tiny/__init__.py", b"VALUE = 42\n"),
)


def _raw(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def padding(size: int) -> bytes:
    return b"\x00" * (-size % BLOCK)


# ---- tar --------------------------------------------------------------------------------


def split_name(raw: bytes) -> tuple[bytes, bytes]:
    """Split a long name into ustar (prefix, name) at the last '/' that makes both fit."""
    for i in range(min(len(raw) - 1, 155), 0, -1):
        if raw[i : i + 1] == b"/" and len(raw) - i - 1 <= 100:
            return raw[:i], raw[i + 1 :]
    raise ValueError(f"{raw[:40]!r}... cannot be split into ustar prefix and name")


def header(
    name: str | bytes,
    size: int = 0,
    *,
    mode: int = 0o644,
    typeflag: bytes = b"0",
    linkname: str | bytes = b"",
    magic: bytes = USTAR,
    prefix: str | bytes = b"",
    uid: int = 0,
    gid: int = 0,
    mtime: int = CREATED,
    devmajor: int = 0,
    devminor: int = 0,
    size_field: bytes | None = None,
    checksum_delta: int = 0,
) -> bytes:
    """One 512-byte tar header with every field under the caller's control.

    ``size_field`` replaces the 12-byte size field verbatim (base-256, garbage);
    ``checksum_delta`` is added to the correct checksum to make it wrong. A name over 100
    bytes is split into the prefix field, as ustar writers do.
    """
    raw_name, raw_prefix, raw_link = _raw(name), _raw(prefix), _raw(linkname)
    if len(raw_name) > 100 and not raw_prefix:
        raw_prefix, raw_name = split_name(raw_name)
    if len(raw_name) > 100 or len(raw_prefix) > 155 or len(raw_link) > 100:
        raise ValueError("field too long for a ustar header; use prefix or gnu_long")
    block = bytearray(BLOCK)
    block[0:100] = raw_name.ljust(100, b"\x00")
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(uid, 8)
    block[116:124] = _octal(gid, 8)
    block[124:136] = _octal(size, 12) if size_field is None else size_field.ljust(12, b"\x00")
    block[136:148] = _octal(mtime, 12)
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157:257] = raw_link.ljust(100, b"\x00")
    block[257:265] = magic
    if magic != V7:
        block[329:337] = _octal(devmajor, 8)
        block[337:345] = _octal(devminor, 8)
        block[345:500] = raw_prefix.ljust(155, b"\x00")
    block[148:156] = b"%06o\x00 " % (sum(block) + checksum_delta)
    return bytes(block)


def member(
    name: str | bytes, data: bytes = b"", *, size: int | None = None, **fields: Any
) -> bytes:
    """A header, ``data`` and its padding; ``size`` lets the header lie about the length."""
    declared = len(data) if size is None else size
    return header(name, declared, **fields) + data + padding(len(data))


def members_of(files: Sequence[F], *, mtime: int = CREATED) -> list[bytes]:
    """One well-formed member per file, in the given order."""
    return [member(f.path, f.data, mode=f.mode, mtime=mtime) for f in files]


def pax(records: dict[str, str], *, typeflag: bytes = b"x", name: str = "././@PaxHeader") -> bytes:
    """A pax extended (``x``) or global (``g``) header member holding ``records``."""
    body = b""
    for key, value in records.items():
        text = f" {key}={value}\n".encode()
        length = len(text)
        # The length prefix counts itself, so grow it until it is stable.
        while len(str(length).encode()) + len(text) != length:
            length = len(str(length).encode()) + len(text)
        body += str(length).encode() + text
    return member(name, body, typeflag=typeflag)


def gnu_long(value: str, *, typeflag: bytes = b"L") -> bytes:
    """A GNU long-name (``L``) or long-link (``K``) record, as GNU tar writes it."""
    return member("././@LongLink", value.encode() + b"\x00", typeflag=typeflag, magic=GNU)


def tar(members: Sequence[bytes], *, end: bool = True) -> bytes:
    """Concatenate members and, unless ``end`` is false, the two-zero-block end marker."""
    return b"".join(members) + (b"\x00" * 2 * BLOCK if end else b"")


# ---- zstd -------------------------------------------------------------------------------


def zstd(data: bytes, *, level: int = 3, window_log: int | None = None) -> bytes:
    """One zstd frame of ``data``, streamed so no content size shrinks the declared window."""
    if window_log is None:
        params = zstandard.ZstdCompressionParameters.from_level(level, write_checksum=True)
    else:
        params = zstandard.ZstdCompressionParameters(
            compression_level=level, window_log=window_log, write_content_size=False
        )
    out = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(
        out, closefd=False
    ) as writer:
        writer.write(data)
    return out.getvalue()


# ---- manifest ---------------------------------------------------------------------------


def key_id(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()


def file_entry(f: F) -> dict[str, Any]:
    return {"path": f.path, "size": len(f.data), "mode": f.mode, "sha256": f.sha256}


def manifest_dict(
    files: Sequence[F],
    payload: bytes,
    *,
    signer: str,
    name: str = "demo",
    version: str = "1.0",
    created: int = CREATED,
    expires: int | None = None,
    entry_script: str = "app/score.py",
) -> dict[str, Any]:
    """A manifest that matches ``files`` and the compressed ``payload`` exactly."""
    return {
        "format": "airgap-bundle/1",
        "name": name,
        "version": version,
        "created": created,
        "expires": expires,
        "signer": signer,
        "target": dict(DEFAULT_TARGET, platforms=list(DEFAULT_TARGET["platforms"])),
        "entry_script": entry_script,
        "mode": "mounted",
        "env": {},
        "base_image": None,
        "packages": [],
        "payload": {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
            "unpacked_size": sum(len(f.data) for f in files),
            "file_count": len(files),
        },
        "files": [file_entry(f) for f in files],
    }


def dumps(obj: Any) -> bytes:
    """The canonical form our writer uses (any bytes verify, as long as they are signed)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"


# ---- the outer tar and the whole bundle -------------------------------------------------

Outer = list[tuple[str, bytes]]


def outer(members: Outer, *, end: bool = True, mtime: int = CREATED) -> bytes:
    """The outer, uncompressed tar of (name, data) members, in the given order."""
    return tar([member(name, data, mtime=mtime) for name, data in members], end=end)


@dataclass(frozen=True)
class Parts:
    """Every layer of a crafted bundle, for tests that want to look inside."""

    payload_tar: bytes
    payload: bytes
    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes
    bundle: bytes


def craft(
    key: Ed25519PrivateKey,
    *,
    files: Sequence[F] = DEFAULT_FILES,
    payload_members: Sequence[bytes] | None = None,
    end: bool = True,
    payload_tar: bytes | None = None,
    compress: Callable[[bytes], bytes] = zstd,
    edit_manifest: Callable[[dict[str, Any]], None] | None = None,
    edit_manifest_bytes: Callable[[bytes], bytes] | None = None,
    sign_key: Ed25519PrivateKey | None = None,
    edit_signature: Callable[[bytes], bytes] | None = None,
    edit_payload: Callable[[bytes], bytes] | None = None,
    edit_outer: Callable[[Outer], Outer] | None = None,
    outer_end: bool = True,
    edit_bundle: Callable[[bytes], bytes] | None = None,
    **manifest_fields: Any,
) -> Parts:
    """Build a bundle, layer by layer, with a hook to tamper at each layer.

    The manifest lists ``files`` and is signed (by ``sign_key``, default ``key``) over the
    payload as built, so hooks that run *before* signing (``payload_members``, ``payload_tar``,
    ``compress``, ``edit_manifest``, ``edit_manifest_bytes``) give a consistently signed bundle
    whose deeper checks must catch the tampering. Hooks that run *after* signing
    (``edit_signature``, ``edit_payload``, ``edit_outer``, ``edit_bundle``) model tampering in
    transit. ``manifest_fields`` go to ``manifest_dict`` (name, version, expires, ...).
    """
    # Every header's mtime is the manifest's created time (§2), as a writer must make it.
    created = manifest_fields.get("created", CREATED)
    if payload_tar is None:
        chosen = members_of(files, mtime=created) if payload_members is None else payload_members
        payload_tar = tar(chosen, end=end)
    payload = compress(payload_tar)
    manifest = manifest_dict(files, payload, signer=key_id(key), **manifest_fields)
    if edit_manifest is not None:
        edit_manifest(manifest)
    manifest_bytes = dumps(manifest)
    if edit_manifest_bytes is not None:
        manifest_bytes = edit_manifest_bytes(manifest_bytes)
    signature = (sign_key or key).sign(manifest_bytes)
    if edit_signature is not None:
        signature = edit_signature(signature)
    shipped = payload if edit_payload is None else edit_payload(payload)
    members: Outer = [
        ("payload.tar.zst", shipped),
        ("manifest.json", manifest_bytes),
        ("manifest.json.sig", signature),
    ]
    if edit_outer is not None:
        members = edit_outer(members)
    bundle = outer(members, end=outer_end, mtime=created)
    if edit_bundle is not None:
        bundle = edit_bundle(bundle)
    return Parts(payload_tar, payload, manifest, manifest_bytes, signature, bundle)


def flip(data: bytes, at: int | None = None) -> bytes:
    """``data`` with one bit flipped (in the middle unless ``at`` is given)."""
    i = len(data) // 2 if at is None else at
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


# ---- keys -------------------------------------------------------------------------------

# Every Ed25519 point of order 1, 2, 4 or 8, in its canonical encoding (the list libsodium
# blocks), plus two non-canonical encodings of small-order points.
SMALL_ORDER_POINTS: dict[str, str] = {
    "identity": "01" + "00" * 31,
    "order-2": "ec" + "ff" * 30 + "7f",
    "order-4-a": "00" * 32,
    "order-4-b": "00" * 31 + "80",
    "order-8-a": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "order-8-b": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "order-8-c": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "order-8-d": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "noncanonical-identity": "01" + "00" * 30 + "80",
    "noncanonical-y-is-p": "ed" + "ff" * 30 + "7f",
}


def raw_public_pem(raw: bytes) -> bytes:
    """PEM SubjectPublicKeyInfo for any 32 raw bytes, valid point or not (RFC 8410 DER)."""

    der = bytes.fromhex("302a300506032b6570032100") + raw
    b64 = base64.encodebytes(der).replace(b"\n", b"")
    return b"-----BEGIN PUBLIC KEY-----\n" + b64 + b"\n-----END PUBLIC KEY-----\n"


# ---- header surgery -----------------------------------------------------------------------


def patched(data: bytes, at: int, value: bytes, *, checksum: str = "unsigned") -> bytes:
    """``data`` (a member: its header first) with ``value`` written at header offset ``at``.

    The checksum is then recomputed as POSIX says (``"unsigned"``), as old tars did with
    signed bytes (``"signed"``), or left as it was (``"keep"``).
    """
    block = bytearray(data)
    block[at : at + len(value)] = value
    if checksum != "keep":
        block[148:156] = b" " * 8
        total = sum(block[:BLOCK])
        if checksum == "signed":
            total -= 256 * sum(1 for b in block[:BLOCK] if b >= 0x80)
        block[148:156] = b"%06o\x00 " % total
    return bytes(block)
