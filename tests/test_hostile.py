"""One test per hostile input: refused with the right check and member, nothing written.

The CPython pattern: every bundle is unpacked into ``outer/dest`` with canary files in
``outer/`` (and, in the ``existing`` variant, a DEST holding an earlier good unpack). After the
refusal the tree under ``outer/`` must be exactly as it was, byte for byte: no stage left,
nothing written outside DEST, DEST untouched. ``verify`` must refuse the same way.

Each case also proves it reached the check it targets: cases refused while reading the payload
pass ``open_verified`` (signature, manifest and payload hash all good), and cases refused by a
manifest rule carry a signature that verifies with a trusted key. Where the manifest had to be
re-crafted, the attacker re-signs it and the victim trusts the attacker's key for that test.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import craft
import pytest
from conftest import NOW, GoodUnpack, KeyPair, Victim
from craft import DEFAULT_FILES, F

from bundler.cli import main
from bundler.errors import (
    EXIT_REJECTED,
    BundleRejected,
    ExpiredError,
    IntegrityError,
    ManifestError,
    ResourceLimitError,
    RollbackError,
    SignatureError,
    TrustError,
    UnsafeMemberError,
)
from bundler.formats.archive import read_outer
from bundler.formats.limits import DEFAULT_LIMITS, Limits
from bundler.formats.signing import load_trusted_keys, verify_signature
from bundler.verify.unpack import open_verified, unpack, verify

# Where the refusal happens; decides what else the test asserts about the case.
OUTER = "outer"  # the outer tar's structure, before anything is trusted
TRUST = "trust"  # loading the trusted keys
SIGNATURE = "signature"  # the signature over the manifest bytes
SIGNED = "signed"  # the signature verified; the manifest, policy or payload hash refused
PAYLOAD = "payload"  # everything verified; refused while reading the decompressed payload


@dataclass(frozen=True)
class Built:
    bundle: Path
    trust: list[Path]
    member: str | None = None  # when the member is only known once built (a file path)


@dataclass
class Ctx:
    """What a case builder may use: the two keys, a scratch folder, and the victim."""

    publisher: KeyPair
    attacker: KeyPair
    scratch: Path
    victim: Victim
    count: int = 0

    def write(self, data: bytes) -> Path:
        self.count += 1
        path = self.scratch / f"hostile-{self.count}.airgap"
        path.write_bytes(data)
        return path

    def signed(self, **options: Any) -> Built:
        """Crafted and signed by the publisher, whom the victim trusts."""
        parts = craft.craft(self.publisher.private, **options)
        return Built(self.write(parts.bundle), [self.publisher.pub])

    def resigned(self, **options: Any) -> Built:
        """Crafted and re-signed by the attacker, whom the victim trusts for this test."""
        parts = craft.craft(self.attacker.private, **options)
        return Built(self.write(parts.bundle), [self.publisher.pub, self.attacker.pub])

    def parts(self, key: KeyPair | None = None, **options: Any) -> craft.Parts:
        return craft.craft((key or self.publisher).private, **options)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Ctx], Built]
    error: type[BundleRejected]
    member: str | None
    text: str
    stage: str
    limits: Limits = DEFAULT_LIMITS
    existing_only: bool = False  # a rule about DEST (rollback): `verify` accepts the bundle


CASES: list[Case] = []


def case(
    id: str,
    error: type[BundleRejected],
    member: str | None,
    text: str,
    stage: str,
    **extra: Any,
) -> Callable[[Callable[[Ctx], Built]], Callable[[Ctx], Built]]:
    def register(build: Callable[[Ctx], Built]) -> Callable[[Ctx], Built]:
        CASES.append(Case(id, build, error, member, text, stage, **extra))
        return build

    return register


def add(id: str, build: Callable[[Ctx], Built], *args: Any, **extra: Any) -> None:
    case(id, *args, **extra)(build)


SCORE = DEFAULT_FILES[0]  # app/score.py, the entry script
LAST = DEFAULT_FILES[-1]


def with_members(*extra: bytes, first: bool = False) -> dict[str, Any]:
    """Payload = the listed files' members plus ``extra`` (after them unless ``first``)."""
    listed = craft.members_of(DEFAULT_FILES)
    return {"payload_members": [*extra, *listed] if first else [*listed, *extra]}


def replacing_score(hostile: bytes) -> dict[str, Any]:
    """Payload where app/score.py's member is replaced by ``hostile``."""
    return {"payload_members": [hostile, *craft.members_of(DEFAULT_FILES[1:])]}


# ==== trust: the keys the victim loads ===================================================


def _small_order(name: str) -> Callable[[Ctx], Built]:
    def build(ctx: Ctx) -> Built:
        good = ctx.signed()
        bad = ctx.scratch / f"small-order-{name}.pub"
        bad.write_bytes(craft.raw_public_pem(bytes.fromhex(craft.SMALL_ORDER_POINTS[name])))
        return Built(good.bundle, [bad], member=str(bad))

    return build


for _name in craft.SMALL_ORDER_POINTS:
    add(
        f"trust-small-order-{_name}",
        _small_order(_name),
        TrustError,
        None,
        "public key is a small-order point",
        TRUST,
    )


@case("trust-small-order-beside-good-key", TrustError, None, "small-order point", TRUST)
def _(ctx: Ctx) -> Built:
    # A folder with the real key and a planted small-order key: the whole set is refused.
    folder = ctx.scratch / "trusted"
    folder.mkdir()
    (folder / "publisher.pub").write_bytes(ctx.publisher.pub.read_bytes())
    planted = folder / "zz-planted.pub"
    planted.write_bytes(craft.raw_public_pem(bytes.fromhex(craft.SMALL_ORDER_POINTS["identity"])))
    return Built(ctx.signed().bundle, [folder], member=str(planted))


@case("trust-not-ed25519", TrustError, None, "not an Ed25519 public key", TRUST)
def _(ctx: Ctx) -> Built:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = ctx.scratch / "p256.pub"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return Built(ctx.signed().bundle, [path], member=str(path))


@case("trust-not-pem", TrustError, None, "not a PEM public key", TRUST)
def _(ctx: Ctx) -> Built:
    path = ctx.scratch / "garbage.pub"
    path.write_bytes(b"ssh-ed25519 AAAA not a pem key\n")
    return Built(ctx.signed().bundle, [path], member=str(path))


# ==== signature ===========================================================================


@case("unknown-signer", SignatureError, "manifest.json.sig", "which is not trusted here", SIGNATURE)
def _(ctx: Ctx) -> Built:
    return Built(ctx.write(ctx.parts(ctx.attacker).bundle), [ctx.publisher.pub])


@case(
    "wrong-key",
    SignatureError,
    "manifest.json.sig",
    "does not verify with any trusted key",
    SIGNATURE,
)
def _(ctx: Ctx) -> Built:
    # The manifest claims the publisher's key id, but the attacker's key signed it.
    return ctx.signed(sign_key=ctx.attacker.private)


@case(
    "missing-signer-untrusted-key",
    SignatureError,
    "manifest.json.sig",
    "does not verify with any trusted key",
    SIGNATURE,
)
def _(ctx: Ctx) -> Built:
    parts = ctx.parts(ctx.attacker, edit_manifest=lambda m: m.pop("signer"))
    return Built(ctx.write(parts.bundle), [ctx.publisher.pub])


add(
    "bad-signature-bit-flip",
    lambda ctx: ctx.signed(edit_signature=craft.flip),
    SignatureError,
    "manifest.json.sig",
    "does not verify with any trusted key",
    SIGNATURE,
)
add(
    "bad-signature-zeros",
    lambda ctx: ctx.signed(edit_signature=lambda s: bytes(64)),
    SignatureError,
    "manifest.json.sig",
    "does not verify with any trusted key",
    SIGNATURE,
)
add(
    "bad-signature-other-manifest",
    lambda ctx: ctx.signed(edit_signature=lambda s: ctx.publisher.private.sign(b"{}\n")),
    SignatureError,
    "manifest.json.sig",
    "does not verify with any trusted key",
    SIGNATURE,
)
add(
    "signature-short",
    lambda ctx: ctx.signed(edit_signature=lambda s: s[:63]),
    SignatureError,
    "manifest.json.sig",
    "signature is 63 bytes, not 64",
    SIGNATURE,
)
add(
    "signature-empty",
    lambda ctx: ctx.signed(edit_signature=lambda s: b""),
    SignatureError,
    "manifest.json.sig",
    "signature is 0 bytes, not 64",
    SIGNATURE,
)
add(
    "signature-oversized",
    lambda ctx: ctx.signed(edit_signature=lambda s: s + s),
    ResourceLimitError,
    "manifest.json.sig",
    "128 bytes, over the limit of 64",
    OUTER,
)
add(
    "signature-member-missing",
    lambda ctx: ctx.signed(edit_outer=lambda m: m[:2]),
    IntegrityError,
    "manifest.json.sig",
    "member 'manifest.json.sig' is missing",
    OUTER,
)


def _edit_manifest_in_transit(edit: Callable[[bytes], bytes]) -> Callable[[Ctx], Built]:
    def build(ctx: Ctx) -> Built:
        def swap(members: craft.Outer) -> craft.Outer:
            (p, payload), (m, manifest), sig = members
            return [(p, payload), (m, edit(manifest)), sig]

        return ctx.signed(edit_outer=swap)

    return build


add(
    "edited-manifest-version",
    _edit_manifest_in_transit(lambda m: m.replace(b'"version":"1.0"', b'"version":"9.9"')),
    SignatureError,
    "manifest.json.sig",
    "does not verify with any trusted key",
    SIGNATURE,
)
add(
    "edited-manifest-file-hash",
    _edit_manifest_in_transit(lambda m: m.replace(SCORE.sha256.encode(), b"0" * 64)),
    SignatureError,
    "manifest.json.sig",
    "does not verify with any trusted key",
    SIGNATURE,
)
add(
    "edited-manifest-whitespace",
    _edit_manifest_in_transit(lambda m: m + b" "),
    SignatureError,
    "manifest.json.sig",
    "does not verify with any trusted key",
    SIGNATURE,
)


@case(
    "signer-field-names-other-key", SignatureError, "manifest.json", "manifest names signer", SIGNED
)
def _(ctx: Ctx) -> Built:
    # Signed by the trusted publisher, but the manifest claims the attacker's key id.
    return ctx.signed(edit_manifest=lambda m: m.update(signer=ctx.attacker.key_id))


# ==== outer tar structure =================================================================


def _cut(n: int) -> Callable[[Ctx], Built]:
    return lambda ctx: ctx.signed(edit_bundle=lambda b: b[:n])


add(
    "bundle-empty",
    _cut(0),
    IntegrityError,
    "bundle",
    "bundle is truncated (wanted 512 bytes, got 0)",
    OUTER,
)
add(
    "bundle-truncated-in-first-header",
    _cut(100),
    IntegrityError,
    "bundle",
    "bundle is truncated (wanted 512 bytes, got 100)",
    OUTER,
)
add(
    "bundle-truncated-in-payload",
    _cut(700),
    IntegrityError,
    "payload.tar.zst",
    "bundle is truncated inside this member",
    OUTER,
)


@case(
    "bundle-truncated-in-manifest",
    IntegrityError,
    "manifest.json",
    "bundle is truncated inside this member",
    OUTER,
)
def _(ctx: Ctx) -> Built:
    parts = ctx.parts()
    manifest_at = 512 + len(parts.payload) + len(craft.padding(len(parts.payload))) + 512
    return ctx.signed(edit_bundle=lambda b: b[: manifest_at + 10])


add(
    "bundle-end-marker-missing",
    lambda ctx: ctx.signed(outer_end=False),
    IntegrityError,
    "bundle",
    "end-of-archive marker missing",
    OUTER,
)
add(
    "bundle-trailing-garbage",
    lambda ctx: ctx.signed(edit_bundle=lambda b: b + b"#!/bin/sh\n"),
    IntegrityError,
    "bundle",
    "extra data after the last member",
    OUTER,
)
add(
    "outer-extra-member-last",
    lambda ctx: ctx.signed(edit_outer=lambda m: [*m, ("evil.sh", b"rm -rf /\n")]),
    IntegrityError,
    "bundle",
    "extra data after the last member",
    OUTER,
)
add(
    "outer-extra-member-first",
    lambda ctx: ctx.signed(edit_outer=lambda m: [("evil.sh", b"rm -rf /\n"), *m]),
    IntegrityError,
    "evil.sh",
    "unexpected member in the outer archive",
    OUTER,
)
add(
    "outer-out-of-order",
    lambda ctx: ctx.signed(edit_outer=lambda m: [m[1], m[0], m[2]]),
    IntegrityError,
    "manifest.json",
    "outer members out of order: expected 'payload.tar.zst'",
    OUTER,
)
add(
    "outer-payload-missing",
    lambda ctx: ctx.signed(edit_outer=lambda m: m[1:]),
    IntegrityError,
    "manifest.json",
    "expected 'payload.tar.zst'",
    OUTER,
)
add(
    "outer-manifest-missing",
    lambda ctx: ctx.signed(edit_outer=lambda m: [m[0], m[2]]),
    IntegrityError,
    "manifest.json.sig",
    "expected 'manifest.json'",
    OUTER,
)
add(
    "outer-manifest-twice",
    lambda ctx: ctx.signed(edit_outer=lambda m: [m[0], m[1], *m[1:]]),
    IntegrityError,
    "manifest.json",
    "expected 'manifest.json.sig'",
    OUTER,
)
add(
    "not-a-tar-zip-file",
    lambda ctx: Built(ctx.write(b"PK\x03\x04" + bytes(2048)), [ctx.publisher.pub]),
    IntegrityError,
    "PK\\x03\\x04",  # shown escaped: raw control bytes never reach a message
    "tar header checksum mismatch at offset 0",
    OUTER,
)


def _outer_first_header(**fields: Any) -> Callable[[Ctx], Built]:
    """The payload's outer header rewritten with ``fields`` (type, magic, checksum, ...)."""

    def build(ctx: Ctx) -> Built:
        parts = ctx.parts()
        data = craft.tar(
            [
                craft.member("payload.tar.zst", parts.payload, **fields),
                craft.member("manifest.json", parts.manifest_bytes),
                craft.member("manifest.json.sig", parts.signature),
            ]
        )
        return Built(ctx.write(data), [ctx.publisher.pub])

    return build


add(
    "outer-header-checksum",
    _outer_first_header(checksum_delta=1),
    IntegrityError,
    "payload.tar.zst",
    "tar header checksum mismatch at offset 0",
    OUTER,
)
add(
    "outer-payload-symlink",
    _outer_first_header(typeflag=b"2", linkname="/etc/passwd"),
    UnsafeMemberError,
    "payload.tar.zst",
    "symbolic link is not allowed",
    OUTER,
)
add(
    "outer-payload-gnu-magic",
    _outer_first_header(magic=craft.GNU),
    UnsafeMemberError,
    "payload.tar.zst",
    "not a POSIX ustar header",
    OUTER,
)
add(
    "outer-payload-setuid",
    _outer_first_header(mode=0o4755),
    UnsafeMemberError,
    "payload.tar.zst",
    "mode 4755 has setuid, setgid or sticky bits",
    OUTER,
)


@case("outer-pax-header", UnsafeMemberError, "././@PaxHeader", "pax header", OUTER)
def _(ctx: Ctx) -> Built:
    parts = ctx.parts()
    data = craft.tar(
        [
            craft.pax({"path": "payload.tar.zst", "size": "0"}),
            craft.member("payload.tar.zst", parts.payload),
            craft.member("manifest.json", parts.manifest_bytes),
            craft.member("manifest.json.sig", parts.signature),
        ]
    )
    return Built(ctx.write(data), [ctx.publisher.pub])


# ==== payload hash (signature verified, payload bytes differ) ============================

add(
    "payload-edited",
    lambda ctx: ctx.signed(edit_payload=craft.flip),
    IntegrityError,
    "payload.tar.zst",
    "sha256 differs from the signed manifest",
    SIGNED,
)
add(
    "payload-edited-first-byte",
    lambda ctx: ctx.signed(edit_payload=lambda p: craft.flip(p, 0)),
    IntegrityError,
    "payload.tar.zst",
    "sha256 differs from the signed manifest",
    SIGNED,
)
add(
    "payload-truncated",
    lambda ctx: ctx.signed(edit_payload=lambda p: p[:-7]),
    IntegrityError,
    "payload.tar.zst",
    "(truncated or extended)",
    SIGNED,
)
add(
    "payload-extended",
    lambda ctx: ctx.signed(edit_payload=lambda p: p + craft.zstd(b"x")),
    IntegrityError,
    "payload.tar.zst",
    "(truncated or extended)",
    SIGNED,
)


# ==== manifest: strict JSON, format, fields (signature verifies) =========================


def _manifest_bytes(edit: Callable[[bytes], bytes]) -> Callable[[Ctx], Built]:
    return lambda ctx: ctx.resigned(edit_manifest_bytes=edit)


def _manifest(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Ctx], Built]:
    return lambda ctx: ctx.resigned(edit_manifest=edit)


add(
    "manifest-duplicate-key",
    _manifest_bytes(lambda m: m.replace(b'{"base_image"', b'{"name":"evil","base_image"', 1)),
    ManifestError,
    "manifest.json",
    "duplicate key 'name': not strict JSON",
    SIGNED,
)
add(
    "manifest-duplicate-key-nested",
    _manifest_bytes(
        lambda m: m.replace(b'"payload":{', b'"payload":{"sha256":"' + b"0" * 64 + b'",', 1)
    ),
    ManifestError,
    "manifest.json",
    "duplicate key 'sha256'",
    SIGNED,
)
add(
    "manifest-duplicate-key-in-file",
    _manifest_bytes(lambda m: m.replace(b'"files":[{', b'"files":[{"path":"app/evil.py",', 1)),
    ManifestError,
    "manifest.json",
    "duplicate key 'path'",
    SIGNED,
)
for _const in ("NaN", "Infinity", "-Infinity"):
    add(
        f"manifest-{_const.lower().replace('-', 'negative-')}",
        _manifest_bytes(
            lambda m, c=_const: m.replace(b'"created":1700000000', b'"created":' + c.encode())
        ),
        ManifestError,
        "manifest.json",
        f"{_const} is not allowed: not strict JSON",
        SIGNED,
    )
add(
    "manifest-number-too-long",
    _manifest_bytes(lambda m: m.replace(b'"created":1700000000', b'"created":' + b"1" * 5000)),
    ManifestError,
    "manifest.json",
    "not valid JSON: a number is too long",
    SIGNED,
)
add(
    # Nobody trusted signed it: only the message of the signature error reads it.
    "untrusted-manifest-number-too-long",
    _edit_manifest_in_transit(
        lambda m: m.replace(b'"created":1700000000', b'"created":' + b"1" * 5000)
    ),
    SignatureError,
    "manifest.json.sig",
    "does not verify with any trusted key",
    SIGNATURE,
)
add(
    "manifest-not-utf8",
    _manifest_bytes(lambda m: m.replace(b'"demo"', b'"demo\xff"')),
    ManifestError,
    "manifest.json",
    "not valid UTF-8",
    SIGNED,
)
add(
    "manifest-trailing-garbage",
    _manifest_bytes(lambda m: m + b"}"),
    ManifestError,
    "manifest.json",
    "not valid JSON: Extra data",
    SIGNED,
)
add(
    "manifest-json-array",
    _manifest_bytes(lambda m: b"[]\n"),
    ManifestError,
    "manifest.json",
    "manifest must be a JSON object",
    SIGNED,
)
add(
    "manifest-nested-too-deeply",
    _manifest_bytes(lambda m: b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ManifestError,
    "manifest.json",
    "nested too deeply",
    SIGNED,
)
add(
    "manifest-unknown-format",
    _manifest(lambda m: m.update(format="airgap-bundle/2")),
    ManifestError,
    "manifest.json",
    "unknown format version 'airgap-bundle/2'",
    SIGNED,
)

_REQUIRED = [
    "format",
    "name",
    "version",
    "created",
    "signer",
    "target",
    "entry_script",
    "mode",
    "env",
    "base_image",
    "packages",
    "payload",
    "files",
]
_NESTED = {
    "target": ["python", "implementation", "abi", "platforms"],
    "payload": ["sha256", "size", "unpacked_size", "file_count"],
}
for _key in _REQUIRED:
    add(
        f"manifest-missing-{_key}",
        _manifest(lambda m, k=_key: m.pop(k)),
        ManifestError,
        "manifest.json",
        f"missing field {_key!r}",
        SIGNED,
    )
for _outer_key, _keys in _NESTED.items():
    for _key in _keys:
        add(
            f"manifest-missing-{_outer_key}.{_key}",
            _manifest(lambda m, o=_outer_key, k=_key: m[o].pop(k)),
            ManifestError,
            "manifest.json",
            f"missing field '{_outer_key}.{_key}'",
            SIGNED,
        )
for _key in ("path", "size", "mode", "sha256"):
    add(
        f"manifest-missing-files[2].{_key}",
        _manifest(lambda m, k=_key: m["files"][2].pop(k)),
        ManifestError,
        "manifest.json",
        f"missing field 'files[2].{_key}'",
        SIGNED,
    )


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        obj: Any = m
        for p in parents:
            obj = obj[int(p)] if p.isdigit() else obj[p]
        obj[int(last) if last.isdigit() else last] = value

    return edit


for _id, _path, _value, _text in [
    ("created-string", "created", "yesterday", "field 'created' must be a non-negative integer"),
    ("created-bool", "created", True, "field 'created' must be a non-negative integer"),
    ("created-negative", "created", -1, "field 'created' must be a non-negative integer"),
    ("created-float", "created", 1.5, "field 'created' must be a non-negative integer"),
    ("size-negative", "files.1.size", -5, "field 'files[1].size' must be a non-negative"),
    ("name-empty", "name", "", "field 'name' must be a non-empty string"),
    ("name-number", "name", 7, "field 'name' must be a non-empty string"),
    ("mode-unknown", "mode", "stub", "field 'mode' must be one of"),
    ("env-not-strings", "env", {"PORT": 5001}, "field 'env' must be an object of strings"),
    ("files-not-list", "files", {}, "field 'files' must be a list"),
    ("target-not-object", "target", "cp311", "target must be a JSON object"),
    ("platforms-not-strings", "target.platforms", [1], "'target.platforms' must be a list of"),
    ("sha256-uppercase", "files.0.sha256", SCORE.sha256.upper(), "must be 64 lowercase hex"),
    ("payload-sha256-short", "payload.sha256", "abc", "'payload.sha256' must be 64 lowercase"),
    ("signer-not-key-id", "signer", "publisher", "field 'signer' must be a key id"),
    (
        "base-image-bad-digest",
        "base_image",
        {"ref": "x", "digest": "md5:1", "included": False},
        "'base_image.digest' must be 'sha256:'",
    ),
    (
        "base-image-included-not-bool",
        "base_image",
        {"ref": "x", "digest": None, "included": 1},
        "'base_image.included' must be true or false",
    ),
    ("file-count-wrong", "payload.file_count", 5, "disagree with the file list"),
    ("unpacked-size-wrong", "payload.unpacked_size", 1, "disagree with the file list"),
    (
        "entry-script-not-listed",
        "entry_script",
        "app/other.py",
        "entry_script 'app/other.py' is not a payload file",
    ),
]:
    add(
        f"manifest-{_id}",
        _manifest(_set(_path, _value)),
        ManifestError,
        "manifest.json",
        _text,
        SIGNED,
    )


# ==== manifest: unsafe names and modes in the signed file list ===========================


def _listed(*files: F) -> Callable[[Ctx], Built]:
    """The manifest (and payload) list ``files`` besides the defaults."""
    return lambda ctx: ctx.resigned(files=[*DEFAULT_FILES, *files])


add(
    "listed-absolute",
    _listed(F("/etc/cron.d/evil", b"x")),
    UnsafeMemberError,
    "/etc/cron.d/evil",
    "absolute path",
    SIGNED,
)
add(
    "listed-dotdot",
    _listed(F("app/../../evil", b"x")),
    UnsafeMemberError,
    "app/../../evil",
    "'..' in path",
    SIGNED,
)
add(
    "listed-state-folder",
    _listed(F(".airgap/signer.pub", b"x")),
    UnsafeMemberError,
    ".airgap/signer.pub",
    "top-level folder '.airgap' is not one of",
    SIGNED,
)
add(
    "listed-setuid",
    _listed(F("app/su", b"x", 0o4755)),
    UnsafeMemberError,
    "app/su",
    "mode 4755 is not one of 644, 755",
    SIGNED,
)
add(
    "listed-world-writable",
    _listed(F("app/w", b"x", 0o777)),
    UnsafeMemberError,
    "app/w",
    "mode 777 is not one of 644, 755",
    SIGNED,
)
add(
    "listed-duplicate",
    _listed(SCORE),
    UnsafeMemberError,
    "app/score.py",
    "duplicate member",
    SIGNED,
)
add(
    "listed-case-fold",
    _listed(F("app/Score.py", b"x")),
    UnsafeMemberError,
    "app/Score.py",
    "collides with 'app/score.py' when case-folded",
    SIGNED,
)
add(
    "listed-file-and-folder",
    _listed(F("app/score.py/x", b"x")),
    UnsafeMemberError,
    "app/score.py/x",
    "'app/score.py' is a file, not a folder",
    SIGNED,
)

# ==== resource limits ====================================================================


@case(
    "manifest-oversized",
    ResourceLimitError,
    "manifest.json",
    f"{64 * 2**20 + 1} bytes, over the limit of {64 * 2**20}",
    OUTER,
)
def _(ctx: Ctx) -> Built:
    # A 64 MiB + 1 manifest, as a sparse file: the limit is checked before a byte is read.
    parts = ctx.parts()
    size = DEFAULT_LIMITS.max_manifest_bytes + 1
    head = craft.member("payload.tar.zst", parts.payload) + craft.header("manifest.json", size)
    path = ctx.write(head)
    with path.open("r+b") as f:
        f.truncate(len(head) + size + 3 * 512 + 1024)
    return Built(path, [ctx.publisher.pub])


@case(
    "manifest-too-many-members",
    ResourceLimitError,
    "manifest.json",
    "5 files listed, over the limit of 4",
    SIGNED,
    limits=Limits(max_members=4),
)
def _(ctx: Ctx) -> Built:
    # The limit is lowered for this test (a million entries would first trip the 64 MiB
    # manifest limit); the good DEST of the existing variant holds 4 files, within it.
    return ctx.resigned(files=[*DEFAULT_FILES, F("app/fifth.py", b"5")])


@case(
    "manifest-declares-too-much",
    ResourceLimitError,
    "manifest.json",
    "unpacked bytes, over the limit of",
    SIGNED,
)
def _(ctx: Ctx) -> Built:
    huge = 300 * 2**30  # 300 GiB, over the 256 GiB default

    def edit(m: dict[str, Any]) -> None:
        m["files"][1]["size"] = huge
        m["payload"]["unpacked_size"] = sum(f["size"] for f in m["files"])

    return ctx.resigned(edit_manifest=edit)


for _window_log in (28, 30):
    add(
        f"zstd-window-2**{_window_log}",
        lambda ctx, w=_window_log: ctx.resigned(compress=lambda t: craft.zstd(t, window_log=w)),
        ResourceLimitError,
        "payload.tar.zst",
        "zstd frame needs a window beyond the limit",
        PAYLOAD,
    )


@case(
    "zip-bomb-after-end-marker",
    ResourceLimitError,
    "payload.tar.zst",
    "decompressed output exceeds the manifest's declared total",
    PAYLOAD,
)
def _(ctx: Ctx) -> Built:
    # 32 MiB of zeros after the tar's end marker compress to almost nothing. With a one-byte
    # file the declared framing has no slack, so the first byte past the end is over the limit.
    files = [F("app/score.py", b"x")]
    bomb = craft.tar(craft.members_of(files)) + bytes(32 * 2**20)
    return ctx.resigned(files=files, payload_tar=bomb, compress=lambda t: craft.zstd(t, level=1))


# ==== payload: members against the signed file list ======================================


@case(
    "member-missing", IntegrityError, "app/extra.py", "listed in the manifest but missing", PAYLOAD
)
def _(ctx: Ctx) -> Built:
    return ctx.resigned(
        files=[*DEFAULT_FILES, F("app/extra.py", b"x")],
        payload_members=craft.members_of(DEFAULT_FILES),
    )


add(
    "member-extra",
    lambda ctx: ctx.resigned(**with_members(craft.member("app/evil.py", b"x"))),
    IntegrityError,
    "app/evil.py",
    "extra member not listed in the manifest",
    PAYLOAD,
)
add(
    "member-size-differs",
    lambda ctx: ctx.resigned(**replacing_score(craft.member(SCORE.path, SCORE.data + b"#"))),
    IntegrityError,
    "app/score.py",
    f"size {len(SCORE.data) + 1} differs from the manifest's {len(SCORE.data)}",
    PAYLOAD,
)
add(
    "member-size-base256-huge",
    lambda ctx: ctx.resigned(
        **replacing_score(
            craft.member(SCORE.path, SCORE.data, size_field=b"\x80" + (2**80).to_bytes(11, "big"))
        )
    ),
    IntegrityError,
    "app/score.py",
    f"size {2**80} differs from the manifest's",
    PAYLOAD,
)
add(
    "member-mode-differs",
    lambda ctx: ctx.resigned(**replacing_score(craft.member(SCORE.path, SCORE.data, mode=0o755))),
    IntegrityError,
    "app/score.py",
    "mode 755 differs from the manifest's 644",
    PAYLOAD,
)
add(
    # A header mode other than 0644/0755 breaks §2 by itself, before the manifest is consulted.
    "member-mode-world-writable",
    lambda ctx: ctx.resigned(**replacing_score(craft.member(SCORE.path, SCORE.data, mode=0o666))),
    UnsafeMemberError,
    "app/score.py",
    "mode 666 is not 644 or 755",
    PAYLOAD,
)
add(
    "member-hash-differs",
    lambda ctx: ctx.resigned(
        **replacing_score(craft.member(SCORE.path, SCORE.data.replace(b"pass", b"exit")))
    ),
    IntegrityError,
    "app/score.py",
    "content differs from the manifest's sha256",
    PAYLOAD,
)
add(
    "member-hash-differs-last-member",
    lambda ctx: ctx.resigned(
        payload_members=[
            *craft.members_of(DEFAULT_FILES[:-1]),
            craft.member(LAST.path, craft.flip(LAST.data)),
        ]
    ),
    IntegrityError,
    LAST.path,
    "content differs from the manifest's sha256",
    PAYLOAD,
)
add(
    "member-truncated-at-end",
    lambda ctx: ctx.resigned(
        end=False,
        payload_members=[
            *craft.members_of(DEFAULT_FILES[:-1]),
            craft.header(LAST.path, len(LAST.data)) + LAST.data[:5],
        ],
    ),
    IntegrityError,
    LAST.path,
    "payload tar ends inside this member",
    PAYLOAD,
)

# ==== payload: framing of the decompressed tar and the zstd stream =======================

add(
    "payload-not-zstd",
    lambda ctx: ctx.resigned(compress=lambda t: t),
    IntegrityError,
    "payload.tar.zst",
    "zstd stream is corrupt",
    PAYLOAD,
)
add(
    "payload-zstd-bit-flip",
    lambda ctx: ctx.resigned(compress=lambda t: craft.flip(craft.zstd(t), len(craft.zstd(t)) - 2)),
    IntegrityError,
    "payload.tar.zst",
    "zstd stream is corrupt",
    PAYLOAD,
)
add(
    "payload-zstd-frame-cut",
    lambda ctx: ctx.resigned(compress=lambda t: craft.zstd(t)[: len(craft.zstd(t)) // 2]),
    IntegrityError,
    "payload",
    "payload tar ends inside a member",
    PAYLOAD,
)
add(
    "tar-end-marker-missing",
    lambda ctx: ctx.resigned(end=False),
    IntegrityError,
    "payload",
    "payload tar ends inside a member",
    PAYLOAD,
)
add(
    "tar-end-marker-malformed",
    lambda ctx: ctx.resigned(
        payload_tar=b"".join(craft.members_of(DEFAULT_FILES))
        + bytes(512)
        + craft.member("app/evil.py", b"x")
    ),
    IntegrityError,
    "payload",
    "malformed end-of-archive marker",
    PAYLOAD,
)
add(
    "tar-data-after-end",
    lambda ctx: ctx.resigned(
        payload_tar=craft.tar(craft.members_of(DEFAULT_FILES)) + craft.member("app/evil.py", b"x")
    ),
    IntegrityError,
    "payload",
    "extra data after the end of the payload tar",
    PAYLOAD,
)
add(
    "tar-nonzero-padding",
    lambda ctx: ctx.resigned(
        **replacing_score(
            craft.header(SCORE.path, len(SCORE.data))
            + SCORE.data
            + b"#"
            + craft.padding(len(SCORE.data) + 1)
        )
    ),
    IntegrityError,
    "app/score.py",
    "non-zero padding after member data",
    PAYLOAD,
)
add(
    "tar-header-checksum",
    lambda ctx: ctx.resigned(
        **replacing_score(craft.member(SCORE.path, SCORE.data, checksum_delta=-1))
    ),
    IntegrityError,
    "app/score.py",
    "tar header checksum mismatch",
    PAYLOAD,
)
add(
    "tar-size-field-malformed",
    lambda ctx: ctx.resigned(
        **replacing_score(craft.member(SCORE.path, SCORE.data, size_field=b"00000000x62\x00"))
    ),
    IntegrityError,
    "app/score.py",
    "malformed size field in tar header",
    PAYLOAD,
)

# ==== payload: unsafe members (the manifest is clean; the payload smuggles them) ========


def _smuggle(name: str | bytes, data: bytes = b"pwned\n", **fields: Any) -> Callable[[Ctx], Built]:
    return lambda ctx: ctx.resigned(**with_members(craft.member(name, data, **fields)))


@case("absolute-name", UnsafeMemberError, None, "absolute path", PAYLOAD)
def _(ctx: Ctx) -> Built:
    # An absolute name pointing into outer/: if it were written, the snapshot would show it.
    target = str(ctx.victim.outer / "pwned")
    built = ctx.resigned(**with_members(craft.member(target, b"pwned\n")))
    return Built(built.bundle, built.trust, member=target)


@case("absolute-name-via-ustar-prefix", UnsafeMemberError, None, "absolute path", PAYLOAD)
def _(ctx: Ctx) -> Built:
    prefix = str(ctx.victim.outer)
    built = ctx.resigned(**with_members(craft.member("pwned", b"pwned\n", prefix=prefix)))
    return Built(built.bundle, built.trust, member=f"{prefix}/pwned")


for _id, _name, _text in [
    ("absolute-drive-letter", "C:/pwned", "absolute path"),
    ("dotdot-leading", "../evil", "'..' in path"),
    ("dotdot-inside", "app/../../pwned", "'..' in path"),
    ("dotdot-alone", "..", "'..' in path"),
    ("dotdot-sibling-dest", "../dest2/pwned", "'..' in path"),
    ("dot-leading", "./app/pwned", "empty or '.' path component"),
    ("dot-inside", "app/./pwned", "empty or '.' path component"),
    ("double-slash", "app//pwned", "empty or '.' path component"),
    ("trailing-slash", "app/pwned/", "empty or '.' path component"),
    ("backslash", "app\\..\\..\\pwned", "backslash in name"),
    ("state-folder", ".airgap/manifest.json", "top-level folder '.airgap' is not one of"),
    ("unknown-top-level", "pwned", "top-level folder 'pwned' is not one of"),
    ("too-deep", "app/" + "d/" * 64 + "pwned", "deeper than 64 levels"),
    ("duplicate", "app/score.py", "duplicate member"),
    ("case-fold", "app/SCORE.py", "collides with 'app/score.py' when case-folded"),
    ("case-fold-upper", "model/MODEL.BIN", "collides with 'model/model.bin' when case-folded"),
]:
    add(f"name-{_id}", _smuggle(_name), UnsafeMemberError, _name, _text, PAYLOAD)

add("name-empty", _smuggle(""), UnsafeMemberError, "''", "empty member name", PAYLOAD)
add(
    "name-newline",
    _smuggle("app/a\nb"),
    UnsafeMemberError,
    "app/a\\x0ab",  # shown escaped, so the message stays one line
    "control character in name",
    PAYLOAD,
)
add(
    "name-escape-sequence",
    _smuggle("app/\x1b[2Jx"),
    UnsafeMemberError,
    "app/\\x1b[2Jx",  # shown escaped: no terminal sequence reaches the screen
    "control character in name",
    PAYLOAD,
)
add(
    "name-not-utf8",
    _smuggle(b"app/\xff\xfe"),
    UnsafeMemberError,
    "app/\ufffd\ufffd",
    "name is not valid UTF-8",
    PAYLOAD,
)


@case("name-too-long", UnsafeMemberError, None, "name longer than 255 bytes", PAYLOAD)
def _(ctx: Ctx) -> Built:
    prefix = "app/" + "p" * 151  # 155 bytes, the whole prefix field
    name = "n" * 100  # the whole name field: 256 bytes with the joining '/'
    built = ctx.resigned(**with_members(craft.member(name, b"x", prefix=prefix)))
    return Built(built.bundle, built.trust, member=f"{prefix}/{name}"[:200] + "...")


_CAFE = unicodedata.normalize("NFC", "app/caf\u00e9.txt")
_CAFE_NFD = unicodedata.normalize("NFD", _CAFE)
_STRASSE = "model/stra\u00dfe.bin"


@case(
    "name-unicode-normalisation-collision",
    UnsafeMemberError,
    _CAFE_NFD,
    f"collides with {_CAFE!r} when case-folded",
    PAYLOAD,
)
def _(ctx: Ctx) -> Built:
    cafe = F(_CAFE, b"nfc")
    files = [*DEFAULT_FILES, cafe]
    return ctx.resigned(
        files=files, payload_members=[*craft.members_of(files), craft.member(_CAFE_NFD, b"nfd")]
    )


@case(
    "name-case-fold-sharp-s",
    UnsafeMemberError,
    "model/strasse.bin",
    f"collides with {_STRASSE!r} when case-folded",
    PAYLOAD,
)
def _(ctx: Ctx) -> Built:
    files = [*DEFAULT_FILES, F(_STRASSE, b"sharp s")]
    return ctx.resigned(
        files=files,
        payload_members=[*craft.members_of(files), craft.member("model/strasse.bin", b"ss")],
    )


_TYPES = {
    b"1": ("hard-link", "hard link"),
    b"2": ("symlink", "symbolic link"),
    b"3": ("char-device", "character device"),
    b"4": ("block-device", "block device"),
    b"5": ("directory", "directory entry"),
    b"6": ("fifo", "FIFO"),
    b"7": ("contiguous", "contiguous file"),
    b"S": ("gnu-sparse", "sparse member"),
    b"D": ("gnu-dumpdir", "GNU directory dump"),
    b"M": ("gnu-multivolume", "GNU multi-volume member"),
    b"V": ("volume-label", "volume label"),
    b"Z": ("unknown-type", "unknown member type b'Z'"),
}
for _flag, (_id, _what) in _TYPES.items():
    add(
        f"type-{_id}",
        _smuggle(
            "app/special", b"", typeflag=_flag, linkname="../../etc/passwd", devmajor=1, devminor=3
        ),
        UnsafeMemberError,
        "app/special",
        f"{_what} is not allowed; only regular files are",
        PAYLOAD,
    )

add(
    "type-symlink-then-write-through",
    lambda ctx: ctx.resigned(
        **with_members(
            craft.member("app/link", typeflag=b"2", linkname=str(ctx.victim.outer)),
            craft.member("app/link/pwned", b"pwned\n"),
            first=True,
        )
    ),
    UnsafeMemberError,
    "app/link",
    "symbolic link is not allowed",
    PAYLOAD,
)
add(
    "type-hard-link-to-listed-file",
    _smuggle("app/alias.py", typeflag=b"1", linkname="app/score.py"),
    UnsafeMemberError,
    "app/alias.py",
    "hard link is not allowed",
    PAYLOAD,
)
add(
    "pax-rename",
    lambda ctx: ctx.resigned(
        **replacing_score(craft.pax({"path": "../pwned"}) + craft.member(SCORE.path, SCORE.data))
    ),
    UnsafeMemberError,
    "././@PaxHeader",
    "pax header (can rename or resize members)",
    PAYLOAD,
)
add(
    "pax-resize",
    lambda ctx: ctx.resigned(
        **replacing_score(craft.pax({"size": "0"}) + craft.member(SCORE.path, SCORE.data))
    ),
    UnsafeMemberError,
    "././@PaxHeader",
    "pax header (can rename or resize members)",
    PAYLOAD,
)
add(
    "pax-gnu-sparse",
    lambda ctx: ctx.resigned(
        **replacing_score(
            craft.pax(
                {
                    "GNU.sparse.major": "1",
                    "GNU.sparse.minor": "0",
                    "GNU.sparse.name": SCORE.path,
                    "GNU.sparse.realsize": "4096",
                }
            )
            + craft.member(SCORE.path, SCORE.data)
        )
    ),
    UnsafeMemberError,
    "././@PaxHeader",
    "pax header",
    PAYLOAD,
)
add(
    "pax-global",
    lambda ctx: ctx.resigned(
        **with_members(
            craft.pax({"path": "../pwned"}, typeflag=b"g", name="pax_global_header"), first=True
        )
    ),
    UnsafeMemberError,
    "pax_global_header",
    "pax global header",
    PAYLOAD,
)
add(
    "gnu-long-name",
    lambda ctx: ctx.resigned(
        **with_members(
            craft.gnu_long("app/" + "x" * 200), craft.member("app/short", b"x", magic=craft.GNU)
        )
    ),
    UnsafeMemberError,
    "././@LongLink",
    "GNU long-name record (can rename members)",
    PAYLOAD,
)
add(
    "gnu-long-link",
    lambda ctx: ctx.resigned(
        **with_members(
            craft.gnu_long("../" * 40 + "etc/passwd", typeflag=b"K"),
            craft.member("app/l", typeflag=b"2", magic=craft.GNU),
        )
    ),
    UnsafeMemberError,
    "././@LongLink",
    "GNU long-link record",
    PAYLOAD,
)

for _mode, _bits in (
    (0o4644, "setuid"),
    (0o2644, "setgid"),
    (0o1644, "sticky"),
    (0o6755, "setuid-setgid"),
):
    add(
        f"mode-{_bits}",
        lambda ctx, m=_mode: ctx.resigned(
            **replacing_score(craft.member(SCORE.path, SCORE.data, mode=m))
        ),
        UnsafeMemberError,
        "app/score.py",
        f"mode {_mode:o} has setuid, setgid or sticky bits",
        PAYLOAD,
    )
add(
    "format-gnu-magic",
    lambda ctx: ctx.resigned(
        **replacing_score(craft.member(SCORE.path, SCORE.data, magic=craft.GNU))
    ),
    UnsafeMemberError,
    "app/score.py",
    "not a POSIX ustar header",
    PAYLOAD,
)
add(
    "format-v7-no-magic",
    lambda ctx: ctx.resigned(
        **replacing_score(craft.member(SCORE.path, SCORE.data, magic=craft.V7))
    ),
    UnsafeMemberError,
    "app/score.py",
    "not a POSIX ustar header",
    PAYLOAD,
)

# ==== policy ==============================================================================

add(
    "expired",
    lambda ctx: ctx.signed(expires=NOW - 1),
    ExpiredError,
    "manifest.json",
    f"expired at {NOW - 1} (now ",
    SIGNED,
)
add(
    "rollback-older-version",
    lambda ctx: ctx.signed(version="0.9"),
    RollbackError,
    "manifest.json",
    "bundle demo 0.9 is older than demo 1.0 already unpacked here",
    SIGNED,
    existing_only=True,
)
add(
    "rollback-non-pep440-older-created",
    lambda ctx: ctx.signed(version="nightly", created=craft.CREATED - 1),
    RollbackError,
    "manifest.json",
    "is older than demo 1.0",
    SIGNED,
    existing_only=True,
)


# ==== the test ============================================================================


def _params() -> Iterator[Any]:
    for c in CASES:
        for existing in (False, True):
            if c.existing_only and not existing:
                continue
            label = "existing-dest" if existing else "fresh-dest"
            yield pytest.param(c, existing, id=f"{c.id}-{label}")


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def _check(exc: BundleRejected, c: Case, member: str | None) -> None:
    assert type(exc) is c.error, f"{type(exc).__name__}: {exc}"
    assert exc.exit_code == EXIT_REJECTED
    assert exc.member == member
    assert str(exc).startswith(f"{c.error.check}: {member}: "), str(exc)
    assert c.text in str(exc)
    line = exc.diagnostics()
    assert line.startswith("bundle rejected: ")
    assert "\n" not in line and "\r" not in line


@pytest.mark.parametrize(("c", "existing"), list(_params()))
def test_hostile(
    c: Case,
    existing: bool,
    victim: Victim,
    publisher: KeyPair,
    attacker: KeyPair,
    good_unpack: GoodUnpack,
    tmp_path: Path,
) -> None:
    if existing:
        good_unpack.copy_to(victim.dest)
    before = victim.snapshot()
    built = c.build(Ctx(publisher, attacker, tmp_path, victim))
    member = built.member if built.member is not None else c.member

    with pytest.raises(BundleRejected) as unpacked:
        unpack(built.bundle, victim.dest, built.trust, now=NOW, limits=c.limits)
    _check(unpacked.value, c, member)
    assert victim.snapshot() == before

    if c.existing_only:
        assert verify(built.bundle, built.trust, now=NOW, limits=c.limits).manifest.name == "demo"
        return
    with pytest.raises(BundleRejected) as verified:
        verify(built.bundle, built.trust, now=NOW, limits=c.limits)
    _check(verified.value, c, member)
    assert str(verified.value) == str(unpacked.value)
    assert victim.snapshot() == before

    # Prove the case reached the check it targets, not an earlier one.
    if c.stage == PAYLOAD:
        opened = open_verified(built.bundle, built.trust, now=NOW, limits=c.limits)
        assert opened.manifest.name == "demo"
    elif c.stage == SIGNED:
        with built.bundle.open("rb") as f:
            outer = read_outer(f, c.limits)
        verify_signature(outer.manifest, outer.signature, load_trusted_keys(built.trust), None)
    elif c.stage == SIGNATURE:
        load_trusted_keys(built.trust)  # the keys are fine; the signature is not
        with built.bundle.open("rb") as f:
            read_outer(f, c.limits)


# ==== through the real CLI: exit status 3 and one line naming the check and the member ====

_CLI_CASES = [
    "unknown-signer",
    "trust-small-order-identity",
    "outer-extra-member-first",
    "payload-edited",
    "manifest-nan",
    "untrusted-manifest-number-too-long",
    "manifest-missing-files",
    "member-hash-differs",
    "name-dotdot-leading",
    "type-symlink",
    "pax-rename",
    "zip-bomb-after-end-marker",
    "zstd-window-2**30",
    "expired",
    "rollback-older-version",
]


@pytest.mark.parametrize("case_id", _CLI_CASES)
def test_hostile_through_the_cli(
    case_id: str,
    victim: Victim,
    publisher: KeyPair,
    attacker: KeyPair,
    good_unpack: GoodUnpack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = next(c for c in CASES if c.id == case_id)
    assert c.limits == DEFAULT_LIMITS  # the CLI uses the default limits
    good_unpack.copy_to(victim.dest)
    before = victim.snapshot()
    built = c.build(Ctx(publisher, attacker, tmp_path, victim))
    member = built.member if built.member is not None else c.member
    trust = [arg for key in built.trust for arg in ("--trust", str(key))]
    capsys.readouterr()

    code = main(["unpack", str(built.bundle), str(victim.dest), *trust, "-q"])
    out, err = capsys.readouterr()
    assert code == EXIT_REJECTED
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"bundle rejected: {c.error.check}: {member}: ")
    assert c.text in err
    assert victim.snapshot() == before

    code = main(["verify", str(built.bundle), *trust, "--json"])
    out, err = capsys.readouterr()
    if c.existing_only:
        assert code == 0 and json.loads(out)["ok"] is True
    else:
        assert code == EXIT_REJECTED
        result = json.loads(out)
        assert result["ok"] is False and result["exit_code"] == EXIT_REJECTED
        assert result["error"] == err.strip()
        assert result["error"].startswith(f"bundle rejected: {c.error.check}: {member}: ")
