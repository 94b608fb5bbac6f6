"""The delta bundle format (`airgap-delta/1`): the descriptor model, its strict parsing and
canonical bytes, the pure binding rules, and the five-member outer layout. No trust decisions.

A delta carries the full new manifest and signature exactly as the full bundle has them, a
payload of only the files the base lacks, and a signed descriptor binding the three
(docs/format.md §13).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

import zstandard

from ..errors import BundleRejected, DeltaError, IntegrityError, ResourceLimitError
from ..layout import (
    OUTER_DELTA,
    OUTER_DELTA_SIGNATURE,
    OUTER_MANIFEST_ZST,
    OUTER_PAYLOAD,
    OUTER_SIGNATURE,
)
from . import strictjson
from .archive import BLOCK, CHUNK, parse_header, read_cosignatures, ustar_header, write_cosignatures
from .limits import DEFAULT_LIMITS, Limits
from .manifest import FileEntry, Manifest, PayloadInfo
from .source import is_parts_index, open_bundle

DELTA_FORMAT: Final = "airgap-delta/1"
# The outer members of a delta, in this order. The descriptor comes first so that a reader
# knows from the first 512 bytes that this is a delta, and a full-bundle reader, which wants
# payload.tar.zst first, refuses it at its first header (fails closed).
DELTA_MEMBERS: Final = (
    OUTER_DELTA,
    OUTER_DELTA_SIGNATURE,
    OUTER_PAYLOAD,
    OUTER_MANIFEST_ZST,
    OUTER_SIGNATURE,
)
# The manifest's compression: fixed, so the same manifest always gives the same bytes.
_MANIFEST_LEVEL: Final = 19
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class BaseRef:
    """The bundle a delta applies to: DEST must hold exactly the manifest with this sha256."""

    name: str
    version: str
    manifest_sha256: str


@dataclass(frozen=True)
class DeltaDescriptor:
    """What `delta.json` binds: the new manifest, the base, and the carried payload."""

    name: str
    version: str
    created: int
    signer: str
    manifest_sha256: str
    base: BaseRef
    payload: PayloadInfo  # of the delta's own payload.tar.zst (the carried files only)
    carried: tuple[str, ...]  # payload paths, in manifest (UTF-8 byte) order
    format: str = DELTA_FORMAT

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "signer": self.signer,
            "manifest_sha256": self.manifest_sha256,
            "base": {
                "name": self.base.name,
                "version": self.base.version,
                "manifest_sha256": self.base.manifest_sha256,
            },
            "payload": {
                "sha256": self.payload.sha256,
                "size": self.payload.size,
                "unpacked_size": self.payload.unpacked_size,
                "file_count": self.payload.file_count,
            },
            "carried": list(self.carried),
        }

    def to_bytes(self) -> bytes:
        """Canonical bytes, as for the manifest: sorted keys, compact, UTF-8, one newline."""
        text = json.dumps(
            self.to_json_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return text.encode("utf-8") + b"\n"


# ---- strict parsing ---------------------------------------------------------------------


def _bad(message: str) -> DeltaError:
    return DeltaError(message, member=OUTER_DELTA)


def _object(value: Any, where: str, keys: Iterable[str]) -> dict[str, Any]:
    # Every field is required and no other is allowed: a reader must never apply a delta it
    # only partly understands.
    if not isinstance(value, dict):
        raise _bad(f"{where} must be a JSON object")
    wanted = set(keys)
    missing = sorted(wanted - set(value))
    if missing:
        raise _bad(f"missing field {where + '.' if where != 'descriptor' else ''}{missing[0]}")
    extra = sorted(set(value) - wanted)
    if extra:
        raise _bad(f"unknown field {extra[0]!r} in {where}")
    return value


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or not value:
        raise _bad(f"field {key!r} must be a non-empty string")
    return value


def _count(obj: dict[str, Any], key: str) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"field {key!r} must be a non-negative integer")
    return value


def _digest(obj: dict[str, Any], key: str) -> str:
    value = _text(obj, key)
    if not _SHA256_RE.fullmatch(value):
        raise _bad(f"field {key!r} must be 64 lowercase hex digits")
    return value


def parse_descriptor(data: bytes, limits: Limits = DEFAULT_LIMITS) -> DeltaDescriptor:
    """Parse `delta.json` strictly. Call only after its signature verified.

    Raises:
        DeltaError: not strict JSON, another format, a missing, extra or ill-typed field.
        ResourceLimitError: larger than the manifest limit.
    """
    if len(data) > limits.max_manifest_bytes:
        raise ResourceLimitError(
            f"{len(data)} bytes, over the limit of {limits.max_manifest_bytes}", member=OUTER_DELTA
        )
    try:
        raw = strictjson.loads(data)
    except strictjson.StrictJSONError as e:
        raise _bad(str(e)) from e
    if isinstance(raw, dict) and raw.get("format") != DELTA_FORMAT:
        raise _bad(
            f"unknown delta format {raw.get('format')!r} (this airgap reads {DELTA_FORMAT!r})"
        )
    top = _object(
        raw,
        "descriptor",
        ("format", "name", "version", "created", "signer", "manifest_sha256", "base", "payload",
         "carried"),
    )  # fmt: skip
    base = _object(top["base"], "base", ("name", "version", "manifest_sha256"))
    pay = _object(top["payload"], "payload", ("sha256", "size", "unpacked_size", "file_count"))
    carried = top["carried"]
    if not isinstance(carried, list) or not all(isinstance(p, str) and p for p in carried):
        raise _bad("field 'carried' must be a list of payload paths")
    if len(carried) > limits.max_members:
        raise ResourceLimitError(
            f"{len(carried)} carried files, over the limit of {limits.max_members}",
            member=OUTER_DELTA,
        )
    signer = _digest(top, "signer")
    return DeltaDescriptor(
        name=_text(top, "name"),
        version=_text(top, "version"),
        created=_count(top, "created"),
        signer=signer,
        manifest_sha256=_digest(top, "manifest_sha256"),
        base=BaseRef(
            name=_text(base, "name"),
            version=_text(base, "version"),
            manifest_sha256=_digest(base, "manifest_sha256"),
        ),
        payload=PayloadInfo(
            sha256=_digest(pay, "sha256"),
            size=_count(pay, "size"),
            unpacked_size=_count(pay, "unpacked_size"),
            file_count=_count(pay, "file_count"),
        ),
        carried=tuple(carried),
    )


# ---- pure rules -------------------------------------------------------------------------


def manifest_digest(manifest_bytes: bytes) -> str:
    """The sha256 by which a delta names a manifest (of its exact bytes)."""
    return hashlib.sha256(manifest_bytes).hexdigest()


def plan_carried(base: Manifest, new: Manifest) -> tuple[FileEntry, ...]:
    """The new files whose content the base does not hold (by sha256 and size), in order.

    A file that only moved or changed mode is rebuilt from the base's copy, so it is not
    carried.
    """
    held = {(f.sha256, f.size) for f in base.files}
    return tuple(f for f in new.files if (f.sha256, f.size) not in held)


def check_binding(
    descriptor: DeltaDescriptor, manifest_bytes: bytes, manifest: Manifest
) -> tuple[FileEntry, ...]:
    """The carried files' manifest entries, once the descriptor is shown to describe exactly
    this manifest.

    Raises:
        DeltaError: another manifest, name, version, signer or base name; a carried path the
            manifest does not list, out of order or repeated; payload totals that disagree.
    """
    if descriptor.manifest_sha256 != manifest_digest(manifest_bytes):
        raise DeltaError(
            "is not the manifest this delta was made for (its sha256 differs from delta.json's)",
            member=OUTER_MANIFEST_ZST,
        )
    for what, ours, theirs in (
        ("name", descriptor.name, manifest.name),
        ("version", descriptor.version, manifest.version),
        ("signer", descriptor.signer, manifest.signer),
        ("base name", descriptor.base.name, manifest.name),
    ):
        if ours != theirs:
            raise _bad(f"{what} {ours!r} differs from the manifest's {theirs!r}")
    if descriptor.created != manifest.created:
        raise _bad("created differs from the manifest's")
    files = manifest.file_map()
    entries: list[FileEntry] = []
    previous = b""
    for path in descriptor.carried:
        entry = files.get(path)
        if entry is None:
            raise DeltaError("carried but not listed in the new manifest", member=path)
        key = path.encode("utf-8")
        if entries and key <= previous:
            raise DeltaError("carried list is not in manifest order, or repeats", member=path)
        previous = key
        entries.append(entry)
    pay = descriptor.payload
    if pay.file_count != len(entries) or pay.unpacked_size != sum(e.size for e in entries):
        raise _bad("payload.file_count / payload.unpacked_size disagree with the carried list")
    return tuple(entries)


# ---- the outer archive ------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaOuter:
    """The five outer members: the small ones in memory, the payload by its position.

    ``cosignatures`` are the co-signature members after the five (§13.1, as in a full
    bundle: ``(key id, signature)`` pairs in increasing key id order, untrusted until
    verified); ``signed_end`` is the offset where they begin.
    """

    descriptor: bytes
    descriptor_signature: bytes
    manifest: bytes  # decompressed from manifest.json.zst
    signature: bytes
    payload_offset: int
    payload_size: int
    cosignatures: tuple[tuple[str, bytes], ...] = ()
    signed_end: int = 0


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise IntegrityError(f"delta is truncated (wanted {n} bytes)", member="bundle")
    return data


def first_member(f: BinaryIO) -> str | None:
    """The name in the first tar header, or None when there is no valid one (not a delta)."""
    f.seek(0)
    block = f.read(BLOCK)
    f.seek(0)
    if len(block) != BLOCK or block == b"\x00" * BLOCK:
        return None
    try:
        return parse_header(block, 0).name
    except BundleRejected:  # a bad first header is the full reader's to explain
        return None


def is_delta(bundle: Path) -> bool:
    """True when ``bundle`` starts like a delta (its first member is `delta.json`).

    Only a dispatch hint: the delta reader then checks everything.

    Raises:
        BundleError: the file cannot be read or is not a regular file.
    """
    if is_parts_index(bundle):
        return False  # a split bundle's index: open_bundle would want its keys
    with open_bundle(bundle) as f:
        return first_member(f) == OUTER_DELTA


def read_delta_outer(f: BinaryIO, limits: Limits = DEFAULT_LIMITS) -> DeltaOuter:
    """Read the five members' structure and the small ones, then any co-signature members;
    seek over the payload.

    Raises:
        IntegrityError, UnsafeMemberError, ResourceLimitError: not exactly the five members
            (and co-signatures by the rules of a full bundle's).
    """
    bounds = {
        OUTER_DELTA: limits.max_manifest_bytes,
        OUTER_DELTA_SIGNATURE: limits.max_signature_bytes,
        OUTER_MANIFEST_ZST: limits.max_manifest_bytes,
        OUTER_SIGNATURE: limits.max_signature_bytes,
    }
    small: dict[str, bytes] = {}
    f.seek(0, io.SEEK_END)
    total = f.tell()
    f.seek(0)
    offset = 0
    payload = (0, 0)
    for want in DELTA_MEMBERS:
        block = _read_exact(f, BLOCK)
        if block == b"\x00" * BLOCK:
            raise IntegrityError(f"member {want!r} is missing", member=want)
        header = parse_header(block, offset)
        if header.name != want:
            raise IntegrityError(
                f"unexpected outer member (a delta holds {', '.join(DELTA_MEMBERS)}, in order)",
                member=header.name,
            )
        data_offset = offset + BLOCK
        if data_offset + header.size > total:
            raise IntegrityError("delta is truncated inside this member", member=want)
        if want in bounds:
            if header.size > bounds[want]:
                raise ResourceLimitError(
                    f"{header.size} bytes, over the limit of {bounds[want]}", member=want
                )
            small[want] = _read_exact(f, header.size)
        else:
            payload = (data_offset, header.size)
        offset = data_offset + header.size + (-header.size % BLOCK)
        f.seek(offset)
    signed_end = offset
    # Co-signatures (§13.1): the members and rules of a full bundle's (§2, §6.1). Their
    # header mtimes are not kept: a delta's readers never checked its outer mtimes.
    cosignatures, offset = read_cosignatures(f, offset, total, limits, [])
    if total - offset < 2 * BLOCK:
        raise IntegrityError("end-of-archive marker missing", member="bundle")
    while chunk := f.read(CHUNK):
        if chunk.count(0) != len(chunk):
            raise IntegrityError("extra data after the last member", member="bundle")
    return DeltaOuter(
        descriptor=small[OUTER_DELTA],
        descriptor_signature=small[OUTER_DELTA_SIGNATURE],
        manifest=decompress_manifest(small[OUTER_MANIFEST_ZST], limits),
        signature=small[OUTER_SIGNATURE],
        payload_offset=payload[0],
        payload_size=payload[1],
        cosignatures=cosignatures,
        signed_end=signed_end,
    )


def compress_manifest(manifest: bytes) -> bytes:
    """The manifest bytes as one zstd frame (level 19, content size and checksum written)."""
    params = zstandard.ZstdCompressionParameters.from_level(
        _MANIFEST_LEVEL, source_size=len(manifest), write_checksum=True, write_content_size=True
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(manifest)


def decompress_manifest(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The manifest bytes from `manifest.json.zst`, never more than the manifest limit; the
    signature is then checked over exactly these bytes.

    Raises:
        ResourceLimitError: more than ``limits.max_manifest_bytes`` or too large a window.
        IntegrityError: not a valid zstd stream.
    """
    dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_window_bytes)
    try:
        with dctx.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            out = reader.read(limits.max_manifest_bytes + 1)
            while len(out) <= limits.max_manifest_bytes and (more := reader.read(CHUNK)):
                out += more
    except zstandard.ZstdError as e:
        raise IntegrityError(f"not a valid zstd stream ({e})", member=OUTER_MANIFEST_ZST) from e
    if len(out) > limits.max_manifest_bytes:
        raise ResourceLimitError(
            f"decompresses to more than the manifest limit of {limits.max_manifest_bytes} bytes",
            member=OUTER_MANIFEST_ZST,
        )
    return out


def _small_member(name: str, data: bytes, mtime: int) -> bytes:
    return ustar_header(name, len(data), 0o644, mtime) + data + b"\x00" * (-len(data) % BLOCK)


def write_delta_outer(
    out: BinaryIO,
    *,
    mtime: int,
    descriptor: bytes,
    descriptor_signature: bytes,
    payload_member: BinaryIO,
    manifest: bytes,
    signature: bytes,
    cosignatures: Sequence[tuple[str, bytes]] = (),
) -> None:
    """Write the five members (``manifest`` is compressed here), then ``cosignatures`` as
    ``(key id, signature)`` members sorted by key id (§13.1), then the end marker.

    ``payload_member`` holds the payload's whole outer member (header, data, padding), as
    ``BundleWriter`` leaves it. Without co-signatures the bytes are those of a delta before
    co-signatures existed."""
    out.write(_small_member(OUTER_DELTA, descriptor, mtime))
    out.write(_small_member(OUTER_DELTA_SIGNATURE, descriptor_signature, mtime))
    payload_member.seek(0)
    while chunk := payload_member.read(CHUNK):
        out.write(chunk)
    out.write(_small_member(OUTER_MANIFEST_ZST, compress_manifest(manifest), mtime))
    out.write(_small_member(OUTER_SIGNATURE, signature, mtime))
    write_cosignatures(out, mtime, cosignatures)
    out.flush()
