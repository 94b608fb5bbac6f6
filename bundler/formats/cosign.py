"""Co-signatures (revision 1.4): the detached signature file's format, strict parsing and
canonical bytes. No I/O; the outer members themselves are read by ``archive.read_outer``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import ResourceLimitError, SignatureError
from . import strictjson
from .limits import DEFAULT_LIMITS, Limits

SIGNATURE_FILE_FORMAT: Final = "airgap-signatures/1"
_KEY_ID_RE: Final = re.compile(r"[0-9a-f]{64}")
_BASE64_RE: Final = re.compile(r"[A-Za-z0-9+/]{86}==")  # exactly 64 bytes, padded


@dataclass(frozen=True)
class Cosignature:
    """One signature over the manifest bytes that claims to be by ``key_id``.

    Untrusted until verified with the reader's own key of that id. ``source`` names where
    it came from for messages: an outer member name, or ``FILE#N`` for a detached entry.
    """

    key_id: str
    signature: bytes
    source: str


def _bad(source: str, message: str) -> SignatureError:
    return SignatureError(
        message,
        member=source,
        remedy="get the signature file again from its signer, or leave it out",
    )


def render_signature_file(manifest: bytes, signatures: Iterable[tuple[str, bytes]]) -> bytes:
    """The canonical detached file: sorted by key id, one entry per key, one trailing newline.

    ``manifest_sha256`` binds the file to one manifest, so a file beside the wrong bundle is
    named as such instead of as a pile of bad signatures.
    """
    by_key = dict(signatures)
    doc = {
        "format": SIGNATURE_FILE_FORMAT,
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "signatures": [
            {"key_id": kid, "signature": base64.b64encode(by_key[kid]).decode("ascii")}
            for kid in sorted(by_key)
        ],
    }
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def parse_signature_file(
    data: bytes, manifest: bytes, source: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[Cosignature, ...]:
    """Strictly parse an untrusted detached signature file made for ``manifest``.

    Exactly the keys ``format``, ``manifest_sha256`` and ``signatures``; each entry exactly
    ``key_id`` (64 lowercase hex) and ``signature`` (base64 of 64 bytes); no key id twice;
    at most ``limits.max_cosignatures`` entries. The signatures are not verified here.

    Raises:
        ResourceLimitError: the file or its list is over a limit.
        SignatureError: anything else (check ``signature``, naming ``source``).
    """
    if len(data) > limits.max_signature_file_bytes:
        raise ResourceLimitError(
            f"{len(data)} bytes, over the limit of {limits.max_signature_file_bytes}",
            member=source,
        )
    try:
        doc = strictjson.loads(data)
    except strictjson.StrictJSONError as e:
        raise _bad(source, f"not a signature file (strict JSON): {e}") from e
    if not isinstance(doc, dict) or set(doc) != {"format", "manifest_sha256", "signatures"}:
        raise _bad(source, "not a signature file: expected format, manifest_sha256, signatures")
    if doc["format"] != SIGNATURE_FILE_FORMAT:
        raise _bad(source, f"format is not {SIGNATURE_FILE_FORMAT!r}")
    digest = hashlib.sha256(manifest).hexdigest()
    if doc["manifest_sha256"] != digest:
        shown = doc["manifest_sha256"]
        shown = shown[:16] if isinstance(shown, str) and _KEY_ID_RE.fullmatch(shown) else "?"
        raise SignatureError(
            f"made for another manifest (sha256 {shown}..., this bundle's is {digest[:16]}...)",
            member=source,
            remedy="pass the signature file made for this bundle",
        )
    entries = doc["signatures"]
    if not isinstance(entries, list):
        raise _bad(source, "signatures is not a list")
    if len(entries) > limits.max_cosignatures:
        raise ResourceLimitError(
            f"{len(entries)} signatures, over the limit of {limits.max_cosignatures}",
            member=source,
        )
    out: list[Cosignature] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}#{i}"
        if not isinstance(entry, dict) or set(entry) != {"key_id", "signature"}:
            raise _bad(where, "an entry must be exactly {key_id, signature}")
        kid, sig = entry["key_id"], entry["signature"]
        if not isinstance(kid, str) or not _KEY_ID_RE.fullmatch(kid):
            raise _bad(where, "key_id is not 64 lowercase hex digits")
        if kid in seen:
            raise _bad(where, f"key id {kid[:16]}... appears twice")
        seen.add(kid)
        if not isinstance(sig, str) or not _BASE64_RE.fullmatch(sig):
            raise _bad(where, "signature is not the base64 of 64 bytes")
        try:
            raw = base64.b64decode(sig, validate=True)
        except binascii.Error as e:
            raise _bad(where, "signature is not base64") from e
        out.append(Cosignature(key_id=kid, signature=raw, source=where))
    return tuple(out)
